"""Drives deployment rollouts from the store: validates new jobs, starts one wave of robots at a time, fails
robots that pass their deadline, stops a rollout that breaches its failure threshold, and ends jobs.

Everything it knows is in the job and robot deployment rows, so a restarted control plane picks a
rollout up where it was; every step is a conditional update of those rows, so nothing starts twice.

It is woken by every robot that ends its deployment (so the next wave starts at once, not on the next
interval) and wakes the agents of the robots it starts. A pass that has nothing to change only reads, with
prepared statements and no session (`Database.reader()`): the active jobs, a count of each one's robots by
status, and robot deadlines at most once a second. A wave start is two conditional UPDATEs (its robot
deployments and their robots), no ORM rows; preparing a job reads flat (name, architecture) pairs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from openrobomaker.controllers.base import Controller
from openrobomaker.services import deployment_jobs as rules
from openrobomaker.store import deployment_jobs as store
from openrobomaker.store import robots as robot_store
from openrobomaker.store.deployment_jobs import DEPLOYING, WAITING

log = logging.getLogger("openrobomaker.controllers.deployment_jobs")

# signal the agent channel listens to: called with the robots whose deployment just started, whose agents
# should stop long-polling and fetch it
AGENT_SIGNAL = "deployment_agents"
# robotDeploymentTimeoutInSeconds is at least 60 s: checking deadlines once a second is plenty
DEADLINE_CHECK_SECONDS = 1.0


class DeploymentJobController(Controller):
    signal_name = "deployment_jobs"
    interval = 1.0

    def __init__(self, platform: Any):
        super().__init__(platform)
        self._deadlines_checked = float("-inf")
        # deploymentConfig of the active jobs: a job's definition never changes once created, so a pass
        # reads (and decodes) it once per job, not once per pass
        self._configs: dict[str, dict[str, Any]] = {}

    def reconcile(self) -> None:
        with self.platform.db.reader() as reader:
            job_ids = store.active_ids(reader)
            self._configs = {job_id: self._configs[job_id] for job_id in job_ids if job_id in self._configs}
            if time.monotonic() - self._deadlines_checked >= DEADLINE_CHECK_SECONDS:
                self._deadlines_checked = time.monotonic()
                self._expire_robot_deadlines(reader)
            changing = [job_id for job_id in job_ids if self._may_change(reader, job_id)]
        started: list[str] = []
        for job_id in changing:
            started += self._advance(job_id)
        if started:
            wake = self.platform.signals.get(AGENT_SIGNAL)
            if wake is not None:
                wake(started)

    def _config(self, reader: Any, job_id: str) -> dict[str, Any] | None:
        config = self._configs.get(job_id)
        if config is None:
            _, definition = store.status_and_definition(reader, job_id)
            if definition is None:
                return None  # the job is gone
            config = self._configs[job_id] = definition["deploymentConfig"]
        return config

    # --- per-robot deadlines ----------------------------------------------------------------------------

    def _expire_robot_deadlines(self, reader: Any) -> None:
        now = time.time()
        deploying = store.deploying_starts_of(reader)
        if not deploying:
            return
        timeouts = {}
        for job_id in {job_id for job_id, _, _ in deploying}:
            config = self._config(reader, job_id)
            if config is not None:
                timeouts[job_id] = config["robotDeploymentTimeoutInSeconds"]
        expired = [
            (job_id, arn)
            for job_id, arn, start in deploying
            if start is not None and job_id in timeouts and now - start > timeouts[job_id]
        ]
        if not expired:
            return
        with self.platform.db.transaction() as session:
            for job_id, arn in expired:
                row = store.robot_deployment(session, job_id, arn)
                if row is None or row.status != DEPLOYING:
                    continue  # it ended meanwhile
                self._time_out(session, store.get_job(session, job_id), row, timeouts[job_id], now)

    @staticmethod
    def _time_out(session, job, row, timeout: int, now: float) -> None:
        # Never picked up: the agent was not reachable. Picked up and then silent or too slow: the robot
        # stopped responding mid-deployment (off, network gone, agent killed).
        if row.last_report_at is None:
            code = "RobotAgentConnectionTimeout"
            why = f"the robot's agent did not pick the deployment up within {timeout} s"
        else:
            code = "RobotDeploymentNoResponse"
            why = f"the robot did not finish the deployment within {timeout} s"
        rules.end_robot_deployment(row, "NoResponse", code, why, now)
        robot = robot_store.robot_by_arn(session, row.robot_arn)
        if robot is not None and robot.last_deployment_job == job.arn:
            robot.status = "NoResponse"

    # --- one job ----------------------------------------------------------------------------------------

    def _advance(self, job_id: str) -> list[str]:
        """One step of the job's rollout (one `_may_change` said it may change); returns the robots whose
        deployment it started."""
        with self.platform.db.transaction() as session:
            job = store.get_job(session, job_id, for_update=True)
            if job is None or job.status not in store.ACTIVE_STATUSES:
                return []
            if job.status == "Pending":
                self._prepare(session, job)
            if job.status != "Preparing" and job.status != "InProgress":
                return []
            return self._roll(session, job)

    def _may_change(self, reader: Any, job_id: str) -> bool:
        """False when a read shows the step would change nothing: robots still deploying, threshold not
        breached. Most passes (every report that is not the last of a wave) end here, without a write,
        after two prepared reads (no session)."""
        status, counts = store.job_progress_of(reader, job_id)
        if status not in ("Preparing", "InProgress"):
            return status in store.ACTIVE_STATUSES
        config = self._config(reader, job_id)
        if config is None:
            return False
        total = sum(counts.values())
        failed = sum(
            n
            for (state, code), n in counts.items()
            if state in ("Failed", "NoResponse") and code != rules.ABORTED
        )
        breached = total and failed * 100 >= config["failureThresholdPercentage"] * total
        deploying = sum(n for (state, _), n in counts.items() if state == DEPLOYING)
        return bool(breached) or deploying == 0

    @staticmethod
    def _prepare(session, job: store.DeploymentJobRow) -> None:
        """Pending -> Preparing, or Failed when the application has no bundle for some robot."""
        architectures = {s["architecture"] for s in job.definition["_app"]["sources"]}
        missing = sorted(
            f"{name} ({arch})"
            for name, arch in store.robot_architectures(session, job.job_id)
            if arch not in architectures
        )
        if missing:
            rules.finish_job(
                session,
                job,
                "Failed",
                "MissingRobotApplicationArchitecture",
                f"{job.definition['_app']['arn']} version {job.definition['_app']['version']} has no source "
                f"for the architecture of: {', '.join(missing)}",
            )
            return
        job.status = "Preparing"
        job.updated_at = time.time()

    def _roll(self, session, job: store.DeploymentJobRow) -> list[str]:
        """Threshold, wave end and job end from the robots counted by status; only the next wave's rows
        are loaded (not every robot of the job, at each wave)."""
        _, counts = store.job_progress(session, job.job_id)
        config = job.definition["deploymentConfig"]
        total = sum(counts.values())
        failed = sum(
            n
            for (state, code), n in counts.items()
            if state in ("Failed", "NoResponse") and code != rules.ABORTED
        )
        if total and failed * 100 >= config["failureThresholdPercentage"] * total:
            rules.finish_job(
                session,
                job,
                "Failed",
                "FailureThresholdBreached",
                f"{failed} of {total} robots failed; the failure threshold is "
                f"{config['failureThresholdPercentage']}%",
            )
            return []
        if any(n for (state, _), n in counts.items() if state == DEPLOYING):
            return []
        if not any(n for (state, _), n in counts.items() if state == WAITING):
            # Every robot ended within the failure threshold: the rollout is complete.
            rules.finish_job(session, job, "Succeeded", None, None)
            return []
        wave, arns = store.next_wave_arns(session, job.job_id)
        return self._start_wave(session, job, wave, arns) if arns else []

    @staticmethod
    def _start_wave(session, job: store.DeploymentJobRow, wave: int, arns: list[str]) -> list[str]:
        now = time.time()
        # A robot still busy with an older job's deployment is moved on to this one.
        for older in store.deploying_for_robots(session, arns):
            rules.end_robot_deployment(older, "Failed", rules.ABORTED, f"superseded by {job.arn}", now)
        store.start_wave(session, job.job_id, wave, arns, now)
        if job.status != "InProgress":
            job.status = "InProgress"
        job.updated_at = now
        log.info("%s: wave %d started with %d robot(s)", job.job_id, wave, len(arns))
        return arns


def build(platform: Any) -> DeploymentJobController:
    return DeploymentJobController(platform)
