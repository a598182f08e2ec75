"""Drives simulation jobs: admits Pending jobs within host capacity, starts their runners, notices runners
that died, and delivers cancels to runners that stopped listening."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openrobomaker.controllers.base import Controller
from openrobomaker.services import credentials
from openrobomaker.services import simulation_jobs as jobs
from openrobomaker.services.errors import ApiError
from openrobomaker.store import simulation_jobs as store

log = logging.getLogger("openrobomaker.controllers.simulation_jobs")

STARTING = "starting"
# A runner reports every second; this long without one, and no process, means it died.
SILENT_AFTER_SECONDS = 10.0
CANCEL_TERMINATE_AFTER = 30.0
CANCEL_KILL_AFTER = 90.0


def new_run_id(now: float) -> str:
    """`2020-06-10T10-55-49.817Z_<uuid>`, the run id layout seen in RoboMaker's log stream names."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
    return f"{stamp}Z_{uuid.uuid4()}"


class SimulationJobController(Controller):
    signal_name = "simulation_jobs"

    def __init__(self, platform: Any, executor: Any):
        super().__init__(platform)
        self.executor = executor
        self.jobs_dir = (platform.settings.data_dir / "jobs").resolve()
        self.cache_dir = (platform.settings.data_dir / "cache").resolve()
        self.started_at = time.time()

    # --- one pass ---------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        with self.platform.db.read() as session:
            active = [
                (j.job_id, j.status, j.runner_handle, j.simulation_units)
                for j in store.jobs_needing_attention(session)
            ]
        capacity = self.platform.settings.limits.simulation_units
        in_use = sum(units for _, _, handle, units in active if handle is not None)
        blocked = False
        for job_id, status, handle, units in active:
            if handle is None:
                if status != "Pending" or blocked or units > capacity:
                    continue
                if in_use + units > capacity:
                    blocked = True  # strict first-in first-out: the oldest waiting job keeps its place
                elif self._admit(job_id):
                    in_use += units
            elif handle == STARTING:
                self._recover_start(job_id)
            else:
                self._watch(job_id, handle)

    # --- admission --------------------------------------------------------------------------------------

    def _admit(self, job_id: str) -> bool:
        now = time.time()
        token = secrets.token_urlsafe(32)
        run_id = new_run_id(now)
        with self.platform.db.transaction() as session:
            job = store.get_job(session, job_id, for_update=True)
            if (
                job is None
                or job.status != "Pending"
                or job.runner_handle is not None
                or job.desired != "run"
            ):
                return False
            try:
                applications = jobs.plan_applications(self.platform, job)
            except ApiError as exc:
                jobs.finish_job(job, "Failed", "ResourceNotFound", exc.message, now)
                return False
            key_id, secret = credentials.mint(session, job.account_id, f"job:{job.arn}", "ORMJ")
            work_dir = self.jobs_dir / job.job_id / run_id.replace(":", "-")
            work_dir.mkdir(parents=True, exist_ok=True)
            spec = self._runner_spec(job, run_id, str(work_dir), token, key_id, secret, applications)
            (work_dir / "spec.json").write_text(json.dumps(spec, indent=1))
            job.run_id, job.runner_token_hash, job.work_dir = run_id, jobs.token_hash(token), str(work_dir)
            job.access_key_id, job.runner_handle, job.last_report_seq = key_id, STARTING, -1
            job.status, job.last_updated_at = "Preparing", now
        self._start_runner(job_id, str(work_dir))
        return True

    def _runner_spec(
        self, job, run_id: str, work_dir: str, token: str, key_id: str, secret: str, applications: list[dict]
    ) -> dict[str, Any]:
        settings = self.platform.settings
        definition = job.definition
        return {
            "jobId": job.job_id,
            "jobArn": job.arn,
            "runId": run_id,
            "account": job.account_id,
            "region": job.region,
            "workDir": work_dir,
            "cacheDir": str(self.cache_dir),
            "objectStore": settings.resolved_object_store.to_dict(),
            "controlPlane": {"url": settings.base_url, "token": token},
            "apiEndpoint": {
                "url": settings.base_url,
                "accessKeyId": key_id,
                "secretAccessKey": secret,
                "sessionToken": None,
            },
            "maxJobDurationInSeconds": definition["maxJobDurationInSeconds"],
            "failureBehavior": definition["failureBehavior"],
            "applications": applications,
            "dataSources": definition.get("dataSources", []),
            "outputLocation": definition.get("outputLocation"),
            "recordAllRosTopics": bool((definition.get("loggingConfig") or {}).get("recordAllRosTopics")),
            "isolation": settings.isolation,
            "restartCount": 0,
        }

    def _start_runner(self, job_id: str, work_dir: str) -> None:
        spec_path = str(Path(work_dir) / "spec.json")
        handle = self.executor.find_orphan(spec_path) or self.executor.start(job_id, "", spec_path, work_dir)
        with self.platform.db.transaction() as session:
            job = store.get_job(session, job_id, for_update=True)
            if job is not None and job.runner_handle == STARTING:
                job.runner_handle = handle
                job.runner_started_at = time.time()
        log.info("job %s: runner %s started", job_id, handle)

    def _recover_start(self, job_id: str) -> None:
        """The control plane stopped between recording a start and recording its runner: finish the start."""
        with self.platform.db.read() as session:
            job = store.get_job(session, job_id)
            work_dir = job.work_dir if job else None
        if work_dir:
            self._start_runner(job_id, work_dir)

    # --- watching ---------------------------------------------------------------------------------------

    def _watch(self, job_id: str, handle: str) -> None:
        now = time.time()
        with self.platform.db.read() as session:
            job = store.get_job(session, job_id)
            if job is None:
                return
            last_heard = max(job.last_report_at or 0, job.runner_started_at or 0, self.started_at)
            desired, work_dir = job.desired, job.work_dir
        if desired == "cancel":
            self._deliver_cancel(job_id, handle, work_dir, now - last_heard)
        if now - last_heard > SILENT_AFTER_SECONDS and not self.executor.is_alive(handle):
            self._settle_dead_runner(job_id, handle, work_dir)

    def _deliver_cancel(self, job_id: str, handle: str, work_dir: str | None, silent_for: float) -> None:
        if work_dir:
            Path(work_dir, "cancel").touch(exist_ok=True)
        if silent_for > CANCEL_KILL_AFTER:
            self.executor.kill(handle)
        elif silent_for > CANCEL_TERMINATE_AFTER:
            self.executor.terminate(handle)

    def _settle_dead_runner(self, job_id: str, handle: str, work_dir: str | None) -> None:
        self.executor.kill_leftovers(job_id)
        final = _read_final_report(work_dir)
        now = time.time()
        with self.platform.db.transaction() as session:
            job = store.get_job(session, job_id, for_update=True)
            if job is None or job.runner_handle != handle or job.status not in store.ACTIVE_STATUSES:
                return
            if final is not None and final.get("runId") == job.run_id and final.get("phase") == "Finished":
                jobs.apply_final_report(job, final, now)
            elif job.desired == "cancel":
                jobs.finish_job(
                    job, "Terminated" if job.cancel_code else "Canceled", job.cancel_code, None, now
                )
            else:
                jobs.finish_job(
                    job,
                    "Failed",
                    "InternalServiceError",
                    "The simulation job's runner stopped without reporting an outcome "
                    "(killed, or the host went down).",
                    now,
                )
            credentials.revoke(session, f"job:{job.arn}")
        log.warning("job %s: runner %s is gone; job settled", job_id, handle)
        self.platform.notify("simulation_batches")


def _read_final_report(work_dir: str | None) -> dict | None:
    if not work_dir:
        return None
    try:
        return json.loads(Path(work_dir, "final.json").read_text())
    except (OSError, ValueError):
        return None


def build(platform: Any) -> SimulationJobController:
    return SimulationJobController(platform, platform.signals["executor"])
