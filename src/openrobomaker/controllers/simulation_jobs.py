"""Drives simulation jobs: admits Pending jobs within host capacity, starts their runners, notices runners
that died, and delivers cancels to runners that stopped listening."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass
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
# A runner reports every three seconds; this long without one, and no process, means it died.
SILENT_AFTER_SECONDS = 10.0
CANCEL_TERMINATE_AFTER = 30.0
CANCEL_KILL_AFTER = 90.0


@dataclass(frozen=True)
class ActiveJob:
    """What one pass needs to know of an active job, read in one snapshot."""

    job_id: str
    status: str
    handle: str | None
    units: int
    last_heard: float
    desired: str
    work_dir: str | None


ADMITTED, FAILED, SKIPPED = "admitted", "failed", "skipped"


@dataclass
class PreparedRun:
    """A waiting job's next run, prepared before the admission transaction."""

    job_id: str
    run_id: str | None = None
    token: str | None = None
    key: tuple[str, str] | None = None
    work_dir: Path | None = None
    failure: str | None = None  # why the job fails instead (ResourceNotFound)


def _admissible(job: store.AdmissionJob) -> bool:
    return job.status == "Pending" and job.runner_handle is None and job.desired == "run"


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
        # Settings are fixed once the server runs; resolving the store's path per job cost a path walk.
        self.object_store = platform.settings.resolved_object_store.to_dict()
        self.started_at = time.time()

    def stop(self) -> None:
        super().stop()
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()  # the runner zygote; runners themselves outlive the server by design

    # --- one pass ---------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        now = time.time()
        with self.platform.db.reader() as connection:
            active = [
                ActiveJob(
                    j.job_id,
                    j.status,
                    j.runner_handle,
                    j.simulation_units,
                    max(j.last_report_at or 0, j.runner_started_at or 0, self.started_at),
                    j.desired,
                    j.work_dir,
                )
                for j in store.active_job_states(connection)
            ]
        # Admissions first: under load a pass must not make a waiting job wait behind every running one.
        self._admit_waiting(active)
        for job in active:
            if job.handle == STARTING:
                self._recover_start(job.job_id)
            elif job.handle is not None and (
                job.desired == "cancel" or now - job.last_heard > SILENT_AFTER_SECONDS
            ):
                self._watch(job, now)

    def _admit_waiting(self, active: list[ActiveJob]) -> None:
        """Admit every waiting job that fits, oldest first, in chunks of 1, 2, 4, ... jobs: prepare their runs
        (plans, keys, run directories and specs) outside any transaction, commit a chunk in one, then start
        its runners and record them in one more. Under load a transaction and a fork per job, one after
        another, made the twentieth job of a batch wait seconds for its runner; the run directories, made
        inside the transaction, held SQLite's writer lock (runner reports, member creation) through slow
        filesystem calls; and preparing all twenty runs before starting any held the first back by their
        set-up (~2.5 ms each), where a chunk of one starts it at once."""
        capacity = self.platform.settings.limits.simulation_units
        in_use = sum(job.units for job in active if job.handle is not None)
        waiting = deque(
            job for job in active if job.handle is None and job.status == "Pending" and job.units <= capacity
        )
        resolved: dict = {}  # each application version read once per pass (batch members share them)
        chunk = 1
        while waiting and in_use + waiting[0].units <= capacity:
            runs, in_use = self._prepare_chunk(waiting, chunk, capacity, in_use, resolved)
            self._commit_and_start(runs)
            chunk *= 2

    def _prepare_chunk(
        self, waiting: deque[ActiveJob], size: int, capacity: int, in_use: int, resolved: dict
    ) -> tuple[list[PreparedRun], int]:
        """Runs for up to `size` of the oldest waiting jobs that fit (strict first-in first-out: the oldest
        keeps its place), taken off `waiting`; and the units in use once they run."""
        runs: list[PreparedRun] = []
        with self.platform.db.reader() as connection:
            while waiting and len(runs) < size and in_use + waiting[0].units <= capacity:
                waiter = waiting.popleft()
                job = store.peek_admission_job(connection, waiter.job_id)
                if job is None or not _admissible(job):
                    continue
                run = self._prepare_run(job, resolved)
                runs.append(run)
                if run.failure is None:
                    in_use += waiter.units
        return runs, in_use

    def _commit_and_start(self, runs: list[PreparedRun]) -> None:
        if not runs:
            return
        admitted: list[tuple[str, str]] = []
        ended = False
        with self.platform.db.write() as session:  # prepared statements only (see _admit)
            for run in runs:
                outcome = self._admit(session, run)
                if outcome == ADMITTED:
                    admitted.append((run.job_id, str(run.work_dir)))
                ended |= outcome == FAILED
        for run in runs:
            if run.work_dir is not None and (run.job_id, str(run.work_dir)) not in admitted:
                shutil.rmtree(run.work_dir, ignore_errors=True)  # prepared for a job that stopped waiting
        if ended:
            self.platform.notify("simulation_batches")  # a member that ended frees its batch's slot
        # Fresh run directories: no runner can have been started for them yet, so no orphan to look for.
        self._start_runners(admitted)

    # --- admission --------------------------------------------------------------------------------------

    def _prepare_run(self, job: store.AdmissionJob, resolved: dict) -> PreparedRun:
        """A new run of a waiting job, ready on disk (its spec names a key that is valid once committed);
        or the reason the job cannot run (an application it names is gone)."""
        try:
            applications = jobs.plan_applications(self.platform, job, cache=resolved)
        except ApiError as exc:
            return PreparedRun(job.job_id, failure=exc.message)
        now = time.time()
        run_id, token, key = new_run_id(now), secrets.token_urlsafe(32), credentials.new_key("ORMJ")
        work_dir = _make_run_dir(self.jobs_dir / job.job_id, run_id.replace(":", "-"))
        spec = self._runner_spec(job, run_id, str(work_dir), token, key[0], key[1], applications)
        (work_dir / "spec.json").write_text(json.dumps(spec, indent=1))
        return PreparedRun(job.job_id, run_id=run_id, token=token, key=key, work_dir=work_dir)

    def _admit(self, session, run: PreparedRun) -> str:
        """Commit a prepared run: the job moves from Pending to Preparing (or fails); ADMITTED, FAILED, or
        SKIPPED when the job stopped waiting meanwhile. Two prepared statements and the key's INSERT."""
        job = store.admission_job(session, run.job_id)
        if job is None or not _admissible(job):
            return SKIPPED
        now = time.time()
        if run.failure is not None:
            jobs.finish_job(job, "Failed", "ResourceNotFound", run.failure, now)
            store.save_admission(session, job)
            return FAILED
        credentials.store_key(session, job.account_id, f"job:{job.arn}", run.key)
        job.run_id, job.work_dir = run.run_id, str(run.work_dir)
        job.runner_token_hash = jobs.token_hash(run.token)
        job.access_key_id, job.runner_handle, job.last_report_seq = run.key[0], STARTING, -1
        job.status, job.last_updated_at = "Preparing", now
        store.save_admission(session, job)
        return ADMITTED

    def _start_runners(self, admitted: list[tuple[str, str]]) -> None:
        handles: dict[str, tuple[str, float]] = {}
        for job_id, work_dir in admitted:
            try:
                handle = self.executor.start(job_id, "", str(Path(work_dir) / "spec.json"), work_dir)
            except Exception:  # the job stays `starting`: the next pass finds or starts its runner
                log.exception("job %s: starting its runner failed", job_id)
                continue
            handles[job_id] = (handle, time.time())
        if not handles:
            return
        with self.platform.db.write() as session:  # prepared statements only
            for job_id, (handle, started_at) in handles.items():
                self._record_handle(session, job_id, handle, started_at)
        for job_id, (handle, _) in handles.items():
            log.info("job %s: runner %s started", job_id, handle)

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
            "objectStore": dict(self.object_store),
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
            self._record_handle(session, job_id, handle, time.time())
        log.info("job %s: runner %s started", job_id, handle)

    @staticmethod
    def _record_handle(session, job_id: str, handle: str, started_at: float) -> None:
        store.record_runner_handle(session, job_id, STARTING, handle, started_at)

    def _recover_start(self, job_id: str) -> None:
        """The control plane stopped between recording a start and recording its runner: finish the start."""
        with self.platform.db.read() as session:
            job = store.get_job(session, job_id)
            work_dir = job.work_dir if job else None
        if work_dir:
            self._start_runner(job_id, work_dir)

    # --- watching ---------------------------------------------------------------------------------------

    def _watch(self, job: ActiveJob, now: float) -> None:
        """Only jobs being cancelled or not heard from lately get here (the snapshot says which)."""
        if job.desired == "cancel":
            self._deliver_cancel(job.job_id, job.handle, job.work_dir, now - job.last_heard)
        if now - job.last_heard > SILENT_AFTER_SECONDS and not self.executor.is_alive(job.handle):
            self._settle_dead_runner(job.job_id, job.handle, job.work_dir)

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


def _make_run_dir(job_dir: Path, run_name: str) -> Path:
    """A new run's directory: two mkdirs (`parents=True` first fails on the missing job directory)."""
    try:
        job_dir.mkdir(exist_ok=True)
    except FileNotFoundError:
        job_dir.mkdir(parents=True, exist_ok=True)  # the jobs directory itself, on the first run
    work_dir = job_dir / run_name
    work_dir.mkdir(exist_ok=True)
    return work_dir


def _read_final_report(work_dir: str | None) -> dict | None:
    if not work_dir:
        return None
    try:
        return json.loads(Path(work_dir, "final.json").read_text())
    except (OSError, ValueError):
        return None


def build(platform: Any) -> SimulationJobController:
    return SimulationJobController(platform, platform.signals["executor"])
