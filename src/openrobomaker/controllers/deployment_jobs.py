"""Drives deployment rollouts from the store: validates new jobs, starts one wave of robots at a time, fails
robots that pass their deadline, stops a rollout that breaches its failure threshold, and ends jobs.

Everything it knows is in the job and robot deployment rows, so a restarted control plane picks a
rollout up where it was; every step is a conditional update of those rows, so nothing starts twice.
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

# signal the agent channel listens to: robots whose deployment just started should stop long-polling
AGENT_SIGNAL = "deployment_agents"


class DeploymentJobController(Controller):
    signal_name = "deployment_jobs"
    interval = 1.0

    def reconcile(self) -> None:
        started_any = self._expire_robot_deadlines()
        with self.platform.db.read() as session:
            job_ids = store.active_job_ids(session)
        for job_id in job_ids:
            started_any = self._advance(job_id) or started_any
        if started_any:
            self.platform.notify(AGENT_SIGNAL)

    # --- per-robot deadlines ----------------------------------------------------------------------------

    def _expire_robot_deadlines(self) -> bool:
        now = time.time()
        expired = False
        with self.platform.db.transaction() as session:
            for row in store.deploying_robot_deployments(session):
                job = store.get_job(session, row.job_id)
                timeout = job.definition["deploymentConfig"]["robotDeploymentTimeoutInSeconds"]
                if row.deployment_start_time is None or now - row.deployment_start_time <= timeout:
                    continue
                self._time_out(session, job, row, timeout, now)
                expired = True
        return expired

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

    def _advance(self, job_id: str) -> bool:
        with self.platform.db.transaction() as session:
            job = store.get_job(session, job_id, for_update=True)
            if job is None or job.status not in store.ACTIVE_STATUSES:
                return False
            if job.status == "Pending":
                self._prepare(session, job)
            if job.status != "Preparing" and job.status != "InProgress":
                return False
            return self._roll(session, job)

    @staticmethod
    def _prepare(session, job: store.DeploymentJobRow) -> None:
        """Pending -> Preparing, or Failed when the application has no bundle for some robot."""
        rows = store.robot_deployments(session, job.job_id)
        architectures = {s["architecture"] for s in job.definition["_app"]["sources"]}
        robots = robot_store.robots_by_arns(session, [r.robot_arn for r in rows])
        missing = sorted(
            f"{r.name} ({r.architecture})" for r in robots if r.architecture not in architectures
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

    def _roll(self, session, job: store.DeploymentJobRow) -> bool:
        rows = store.robot_deployments(session, job.job_id)
        config = job.definition["deploymentConfig"]
        failed = [r for r in rows if r.status in ("Failed", "NoResponse") and r.failure_code != rules.ABORTED]
        if rows and len(failed) * 100 >= config["failureThresholdPercentage"] * len(rows):
            rules.finish_job(
                session,
                job,
                "Failed",
                "FailureThresholdBreached",
                f"{len(failed)} of {len(rows)} robots failed; the failure threshold is "
                f"{config['failureThresholdPercentage']}%",
            )
            return False
        if any(r.status == DEPLOYING for r in rows):
            return False
        waiting = [r for r in rows if r.status == WAITING]
        if not waiting:
            # Every robot ended within the failure threshold: the rollout is complete.
            rules.finish_job(session, job, "Succeeded", None, None)
            return False
        wave = min(r.wave for r in waiting)
        self._start_wave(session, job, [r for r in waiting if r.wave == wave])
        return True

    @staticmethod
    def _start_wave(session, job: store.DeploymentJobRow, rows: list[store.RobotDeploymentRow]) -> None:
        now = time.time()
        for row in rows:
            # A robot still busy with an older job's deployment is moved on to this one.
            for older in store.deploying_for_robot(session, row.robot_arn):
                rules.end_robot_deployment(older, "Failed", rules.ABORTED, f"superseded by {job.arn}", now)
            row.status = DEPLOYING
            row.deployment_start_time = now
            row.progress = {}
            robot = robot_store.robot_by_arn(session, row.robot_arn)
            if robot is not None:
                robot.status = DEPLOYING
        if job.status != "InProgress":
            job.status = "InProgress"
        job.updated_at = now
        log.info("%s: wave %d started with %d robot(s)", job.job_id, rows[0].wave, len(rows))


def build(platform: Any) -> DeploymentJobController:
    return DeploymentJobController(platform)
