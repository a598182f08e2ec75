"""Reports the run's phase to the control plane over HTTP and hands back the actions it answers with.

Protocol: `POST {controlPlane.url}/_runner/v1/jobs/{jobId}/report`, `Authorization: Bearer <token>`,
body `{"runId", "seq", "phase", "outcome", "failureCode", "failureReason", "simulationTimeMillis",
"startedAt", "pid"}`; response `{"action": "none" | "cancel" | "restart"}`.

Every phase change is queued and delivered in order (each keeps the seq it was given, so a retried report
can be recognised); between them a heartbeat snapshot goes out every three seconds. When the control plane is
unreachable the runner carries on and retries with a backoff capped at 2 s. The final report is also
written to `workDir/final.json` and retried until acknowledged, for at most ten minutes.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.runner.failures import truncate_reason

log = logging.getLogger(__name__)

# Phase changes go out at once; in between, a heartbeat (liveness, simulation time, and the chance to be
# answered with an action) every few seconds: 50 runners at 1/s meant 50 store writes a second.
HEARTBEAT_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 2.0
FINAL_REPORT_DEADLINE_SECONDS = 600.0
REQUEST_TIMEOUT_SECONDS = 3.0
KNOWN_ACTIONS = ("none", "cancel", "restart")

PHASES = ("Preparing", "Running", "Restarting", "RunningFailed", "Terminating", "Finished")


@dataclass
class RunState:
    """What every report describes; the job loop updates it, the reporter thread reads it."""

    phase: str = "Preparing"
    outcome: str | None = None
    failure_code: str | None = None
    failure_reason: str | None = None
    started_at: float | None = None


class Reporter:
    def __init__(
        self,
        url: str,
        job_id: str,
        run_id: str,
        token: str,
        on_action: Callable[[str], None],
        simulation_time_millis: Callable[[], int],
        final_report_path: Path,
        final_deadline_seconds: float = FINAL_REPORT_DEADLINE_SECONDS,
    ):
        self.endpoint = f"{url.rstrip('/')}/_runner/v1/jobs/{job_id}/report"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.run_id = run_id
        self.on_action = on_action
        self.simulation_time_millis = simulation_time_millis
        self.final_report_path = final_report_path
        self.final_deadline_seconds = final_deadline_seconds
        self.state = RunState()
        # One kept-alive stdlib connection, used by the reporter thread only: a handful of small POSTs per
        # run cost an httpx client several times the CPU (client set-up, per-request layers, idna import).
        self._connection = _Connection(self.endpoint)
        self._lock = threading.Condition()
        self._pending: deque[dict] = deque()
        self._seq = 0
        self._final_acked = threading.Event()
        self._final_queued = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # --- called by the job loop -----------------------------------------------------------------

    def set_phase(
        self, phase: str, *, failure_code: str | None = None, failure_reason: str | None = None
    ) -> None:
        """Record a phase change and queue a report of it ahead of the next heartbeat."""
        with self._lock:
            self.state.phase = phase
            self.state.failure_code = failure_code
            self.state.failure_reason = truncate_reason(failure_reason) if failure_reason else None
            self._pending.append(self._snapshot())
            self._lock.notify_all()

    def set_started_at(self, started_at: float) -> None:
        with self._lock:
            self.state.started_at = started_at

    def finish(self, outcome: str, failure_code: str | None, failure_reason: str | None) -> bool:
        """Write final.json, then block until the control plane acknowledges the final report."""
        with self._lock:
            self.state.phase = "Finished"
            self.state.outcome = outcome
            self.state.failure_code = failure_code
            self.state.failure_reason = truncate_reason(failure_reason) if failure_reason else None
            report = self._snapshot()
            self._write_final_file(report)
            self._pending.append(report)
            self._final_queued = True
            self._lock.notify_all()
        acked = self._final_acked.wait(self.final_deadline_seconds)
        if not acked:
            log.error(
                "control plane never acknowledged the final report; it stays in %s", self.final_report_path
            )
        return acked

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._connection.close()

    # --- reporter thread ------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        self._seq += 1
        return {
            "runId": self.run_id,
            "seq": self._seq,
            "phase": self.state.phase,
            "outcome": self.state.outcome,
            "failureCode": self.state.failure_code,
            "failureReason": self.state.failure_reason,
            "simulationTimeMillis": int(self.simulation_time_millis()),
            "startedAt": self.state.started_at,
            "pid": os.getpid(),
        }

    def _write_final_file(self, report: dict) -> None:
        tmp = self.final_report_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(report, indent=2))
            os.replace(tmp, self.final_report_path)
        except OSError:
            log.exception("cannot write %s", self.final_report_path)

    def _next_report(self) -> dict | None:
        """The head of the queue, or a heartbeat once a second; None means stop."""
        with self._lock:
            deadline = time.monotonic() + HEARTBEAT_SECONDS
            while not self._pending and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._final_queued:  # nothing after the final report
                        deadline = time.monotonic() + HEARTBEAT_SECONDS
                        continue
                    return self._snapshot()
                self._lock.wait(remaining)
            if self._stopped:
                return None
            return self._pending[0]

    def _loop(self) -> None:
        failures = 0
        while True:
            report = self._next_report()
            if report is None:
                return
            action = self._post(report)
            if action is None:
                failures += 1
                self._sleep_unless_stopped(min(MAX_BACKOFF_SECONDS, 0.25 * 2 ** min(failures - 1, 4)))
                continue
            failures = 0
            with self._lock:
                if self._pending and self._pending[0] is report:
                    self._pending.popleft()
            if report["phase"] == "Finished":
                self._final_acked.set()
                continue
            if action != "none":
                self._deliver(action)

    def _sleep_unless_stopped(self, seconds: float) -> None:
        with self._lock:
            if not self._stopped:
                self._lock.wait(seconds)

    def _post(self, report: dict) -> str | None:
        """The action the control plane answered with, or None when the report was not accepted."""
        try:
            status, body = self._connection.post(json.dumps(report).encode(), self._headers)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("report seq=%s not delivered: %s", report["seq"], exc)
            return None
        if status // 100 != 2:
            log.warning("control plane rejected report seq=%s: HTTP %s", report["seq"], status)
            return None
        try:
            action = str((json.loads(body) or {}).get("action") or "none")
        except (ValueError, AttributeError):
            action = "none"
        if action not in KNOWN_ACTIONS:
            log.warning("ignoring unknown action %r from the control plane", action)
            return "none"
        return action

    def _deliver(self, action: str) -> None:
        try:
            self.on_action(action)
        except Exception:
            log.exception("handling action %r failed", action)


class _Connection:
    """POSTs to one URL over a kept-alive connection, reconnecting when needed (no proxies, as before)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.path = parts.path or "/"
        if parts.scheme == "https":
            # Verified TLS as the control plane's certificate demands; plain http builds no TLS context.
            self._make = lambda: http.client.HTTPSConnection(
                parts.hostname or "",
                parts.port,
                timeout=REQUEST_TIMEOUT_SECONDS,
                context=ssl.create_default_context(),
            )
        else:
            self._make = lambda: http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=REQUEST_TIMEOUT_SECONDS
            )
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body). A kept-alive connection the server closed meanwhile is retried once at once on a
        new one; any other failure raises (OSError, HTTPException) and the reporter backs off."""
        reused = self._conn is not None
        try:
            return self._post_once(body, headers)
        except (OSError, http.client.HTTPException):
            self.close()
            if not reused:
                raise
        return self._post_once(body, headers)

    def _post_once(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = self._make()
        self._conn.request("POST", self.path, body, headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
