"""The agent's main loop: long-poll for the robot's deployment, run it, deliver reports in order.

Threads: the main thread polls and deploys; `reports` delivers the outbox (retrying through network loss
and server restarts, in sequence order); the supervisor keeps the application running.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from openrobomaker.agent.client import AgentClient, ChannelError, RobotCredentials
from openrobomaker.agent.deployer import Deployer
from openrobomaker.agent.state import WorkDir
from openrobomaker.agent.supervisor import App, Supervisor, kill_group

log = logging.getLogger("openrobomaker.agent")

POLL_WAIT_SECONDS = 20.0
RETRY_MAX_SECONDS = 5.0


class _Interrupted(BaseException):
    """Raised by the stop signal handler to end a long poll at once instead of after its wait."""


class ReportSender(threading.Thread):
    """Delivers queued reports oldest first; a report leaves the outbox only once the server took it."""

    def __init__(self, work: WorkDir, client: AgentClient, stopping: threading.Event):
        super().__init__(name="reports", daemon=True)
        self.work, self.client, self.stopping = work, client, stopping
        self.wake = threading.Event()
        self.abandoned: set[str] = set()

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
            while pending := self.work.pending_reports():
                if not self._deliver(pending[0]):
                    self.stopping.wait(delay)
                    delay = min(RETRY_MAX_SECONDS, delay * 2)
                    break
                delay = 0.2

    def _deliver(self, path: Path) -> bool:
        import json

        report = json.loads(path.read_text())
        try:
            answer = self.client.report(report)
        except (httpx.HTTPError, OSError):
            return False
        except ChannelError as exc:
            if exc.status >= 500 or exc.status == 429:
                return False
            # The server will never take it (robot deleted, deployment gone): drop it, keep going.
            log.warning("report %s refused: %s", report["seq"], exc)
            self.abandoned.add(report["jobId"])
        else:
            if not answer.get("continue", True):
                self.abandoned.add(report["jobId"])
        path.unlink(missing_ok=True)
        return True


class Agent:
    def __init__(self, endpoint: str, creds: RobotCredentials, work_dir: Path):
        self.work = WorkDir(work_dir)
        self.client = AgentClient(endpoint, creds)
        self.stopping = threading.Event()
        self._polling = False  # the main thread is in a long poll, which a stop signal may interrupt
        self.sender = ReportSender(self.work, self.client, self.stopping)
        self.supervisor = Supervisor(self._app_event, self._app_process)
        self.deployer = Deployer(self.work, self.client, self.supervisor, self.report, self._is_abandoned)

    # --- callbacks -------------------------------------------------------------------------------------

    def report(self, job_id: str, step: str, **fields: Any) -> None:
        report = {"jobId": job_id, "seq": self.work.next_seq(), "step": step, "at": time.time()}
        report.update({k: v for k, v in fields.items() if v is not None})
        self.work.journal(job=job_id, event="report", **{k: v for k, v in report.items() if k != "jobId"})
        self.work.enqueue_report(report)
        self.sender.wake.set()

    def _is_abandoned(self, job_id: str) -> bool:
        return job_id in self.sender.abandoned

    def _app_event(self, event: str, app: App, detail: dict[str, Any]) -> None:
        log.info("application of %s %s %s", app.job_id, event, detail)
        self.work.journal(job=app.job_id, event=f"app-{event}", **detail)

    def _app_process(self, process: tuple[int, str | None] | None) -> None:
        self.work.state["app_process"] = list(process) if process else None
        self.work.save()

    # --- lifecycle -------------------------------------------------------------------------------------

    def _resume_application(self) -> None:
        """After an agent restart: stop what an earlier agent left running, launch the current app again."""
        leftover = self.work.state.get("app_process")
        if leftover:
            kill_group(int(leftover[0]), leftover[1], grace=5.0)
            self._app_process(None)
        current = self.work.state.get("current")
        if current:
            self.supervisor.launch(App(**current["app"]))

    def run(self) -> None:
        self._resume_application()
        self.sender.start()
        self.supervisor.start_thread()
        delay = 0.5
        while not self.stopping.is_set():
            try:
                answer = self._poll()
            except _Interrupted:
                break
            except (httpx.HTTPError, OSError, ValueError) as exc:
                log.info("server not reachable (%s); retrying", type(exc).__name__)
                self.stopping.wait(delay)
                delay = min(RETRY_MAX_SECONDS, delay * 2)
                continue
            except ChannelError as exc:
                log.warning("poll refused: %s", exc)
                self.stopping.wait(RETRY_MAX_SECONDS)
                continue
            delay = 0.5
            deployment = answer.get("deployment")
            if deployment and not self.work.is_handled(deployment["jobId"]):
                log.info("deploying %s", deployment["jobId"])
                self.sender.abandoned.discard(deployment["jobId"])
                self.deployer.run(deployment)
        self.supervisor.shutdown()

    def _poll(self) -> dict[str, Any]:
        try:
            self._polling = True
            if self.stopping.is_set():
                raise _Interrupted
            return self.client.poll(self._current_job(), POLL_WAIT_SECONDS)
        finally:
            self._polling = False

    def _current_job(self) -> str | None:
        handled = self.work.state["handled"]
        return handled[-1] if handled else None

    def stop(self, *_args) -> None:
        """Signal handler (main thread): a deployment in progress runs to its end first; a long poll is
        cut short, so an idle agent exits at once instead of after up to POLL_WAIT_SECONDS."""
        self.stopping.set()
        if self._polling:
            raise _Interrupted


def run_agent(endpoint: str | None, credentials_path: Path, work_dir: Path) -> int:
    creds = RobotCredentials.load(credentials_path)
    endpoint = endpoint or creds.endpoint
    if not endpoint:
        raise ValueError("no endpoint: pass --endpoint or put one in the credentials file")
    agent = Agent(endpoint, creds, work_dir)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    log.info("agent for %s polling %s (work dir %s)", creds.robot_arn, endpoint, agent.work.root)
    agent.run()
    return 0
