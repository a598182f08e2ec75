"""Application logs of a simulation job's current run, read incrementally (for `openrobomaker logs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import ResourceNotFound
from openrobomaker.store import simulation_jobs as store

MAX_CHUNK = 256 * 1024


def _log_files(work_dir: str) -> list[Path]:
    logs = Path(work_dir) / "output" / "ros-logs"
    return sorted(p for p in logs.glob("*.log") if p.is_file())


def read_logs(platform: Any, ctx: RequestContext, job_id: str, offsets: dict[str, int]) -> dict[str, Any]:
    with platform.db.read() as session:
        job = store.get_job(session, job_id)
        if job is None or job.account_id != ctx.account_id or job.region != ctx.region:
            raise ResourceNotFound(f"job: simulation job {job_id} not found")
        status, work_dir, run_id = job.status, job.work_dir, job.run_id
    chunks = []
    for path in _log_files(work_dir) if work_dir else []:
        offset = int(offsets.get(path.name, 0))
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(MAX_CHUNK)
        chunks.append(
            {"file": path.name, "offset": offset + len(data), "data": data.decode("utf-8", "replace")}
        )
    return {"jobId": job_id, "runId": run_id, "status": status, "logs": chunks}
