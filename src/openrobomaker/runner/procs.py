"""Job processes: started in their own process group with captured output, stopped without leftovers.

Every process of a run carries an environment marker (`OPENROBOMAKER_RUN_MARKER`, plus one per app start)
that its descendants inherit. roslaunch puts each node in its own session, so process groups alone do not
reach every node; the marker lets the runner find and kill whatever a launcher left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARKER_VAR = "OPENROBOMAKER_RUN_MARKER"
PROC_MARKER_VAR = "OPENROBOMAKER_PROC_MARKER"
_MAX_LINE_BYTES = 64 * 1024
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")


def iso_timestamp(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class LogSink:
    """One log file shared by successive processes (an app and its restarts), one timestamped line each."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write_line(self, text: str) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.write(f"{iso_timestamp()} {text.rstrip()}\n")

    def note(self, text: str) -> None:
        """A line from the runner itself, told apart from the app's own output."""
        self.write_line(f"[openrobomaker] {text}")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def pdeathsig_prefix() -> list[str]:
    """argv prefix that SIGKILLs the child when the runner dies (setpriv, util-linux)."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


class JobProcess:
    """A process group started for the job, its output pumped line by line into a LogSink."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        sink: LogSink,
        cwd: Path,
        marker: str,
    ):
        self.name = name
        self.marker = marker
        self.sink = sink
        env = dict(env)
        env[PROC_MARKER_VAR] = marker
        self.popen = subprocess.Popen(
            pdeathsig_prefix() + list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.time()
        self._pump = threading.Thread(target=self._pump_output, name=f"log-{name}", daemon=True)
        self._pump.start()
        log.info("started %s (pid %s)", name, self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def _pump_output(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout as stream:
            while True:
                line = stream.readline(_MAX_LINE_BYTES)
                if not line:
                    return
                self.sink.write_line(line.decode("utf-8", "replace"))

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, sigint_timeout: float = 10.0, sigterm_timeout: float = 3.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the group; then kill anything still carrying the marker."""
        if self.poll() is None:
            for sig, timeout in ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout)):
                self.signal_group(sig)
                if self.wait(timeout):
                    break
            else:
                self.signal_group(signal.SIGKILL)
                self.wait(5.0)
        # The group may outlive its leader (nodes that ignore SIGINT), and nodes live in their own sessions.
        self.signal_group(signal.SIGKILL)
        kill_marked_processes(PROC_MARKER_VAR, self.marker)
        self._pump.join(timeout=2.0)
        return self.popen.returncode


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:
        return False


def _all_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def find_marked_processes(var: str, value: str) -> list[int]:
    needle = f"{var}={value}".encode()
    own = os.getpid()
    return [pid for pid in _all_pids() if pid != own and _environ_has(pid, needle)]


def kill_marked_processes(var: str, value: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process whose environment carries var=value, and wait until they are gone."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = find_marked_processes(var, value)
        if not pids or time.monotonic() > deadline:
            if pids:
                log.error("processes %s survived SIGKILL", pids)
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
