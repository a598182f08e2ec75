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
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from openrobomaker.procfs import stat_fields

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
        leader_is_wrapper: bool = False,
        on_exit: Callable[[], None] | None = None,
        scope: Callable[[], Iterable[int] | None] | None = None,
        die_with_runner: bool = True,
    ):
        self.name = name
        self.marker = marker
        # Where this start's processes can be (see NamespaceIsolation.job_pids); None means anywhere.
        self.scope = scope
        # nsenter leads the group when the job is isolated; it does not forward signals and dies on SIGINT
        # at once, which would orphan the real program to the host's init. So it is never signalled itself:
        # it exits with its child's status once the child is gone.
        self.leader_is_wrapper = leader_is_wrapper
        self.sink = sink
        self._stopped = False
        env = dict(env)
        env[PROC_MARKER_VAR] = marker
        # die_with_runner=False when something else already guarantees it (an isolated job's processes
        # die with its pid namespace, whose pid 1 dies with the runner): setpriv's exec costs ~1.5 ms.
        self.popen = subprocess.Popen(
            (pdeathsig_prefix() if die_with_runner else []) + list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._pump_output, name=f"log-{name}", daemon=True)
        self._pump.start()
        if on_exit is not None:
            threading.Thread(
                target=self._watch_exit, args=(on_exit,), name=f"exit-{name}", daemon=True
            ).start()
        log.info("started %s (pid %s)", name, self.popen.pid)

    def _watch_exit(self, on_exit: Callable[[], None]) -> None:
        """Call on_exit once the leader has exited, without reaping it (poll() stays the one that reaps):
        the runner reacts to an app ending at once instead of at its next poll."""
        try:
            fd = os.pidfd_open(self.popen.pid)
        except OSError:
            return  # no pidfd (old kernel) or already reaped: the supervisor's poll still notices
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        on_exit()

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

    def interrupt(self) -> None:
        """SIGINT the way Ctrl-C would: to the program's process group, never to an nsenter leader.

        roslaunch puts nodes in their own sessions and stops them itself; signalling nodes directly as well
        can deadlock rospy (a second SIGINT re-enters its shutdown), so only the group gets SIGINT.
        """
        if not self.leader_is_wrapper:
            self.signal_group(signal.SIGINT)
            return
        for pid in process_group_members(self.popen.pid, self._candidates()):
            if pid != self.popen.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGINT)

    def signal_all(self, sig: int) -> None:
        """Signal every process of this start, nodes in their own sessions included (not the nsenter leader)."""
        for pid in find_marked_processes(PROC_MARKER_VAR, self.marker, self._candidates()):
            if pid == self.popen.pid and self.leader_is_wrapper:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if not self.leader_is_wrapper:
            self.signal_group(sig)

    def _gone(self) -> bool:
        """The leader exited and no process carrying this start's marker is left (nodes included)."""
        return self.poll() is not None and not find_marked_processes(
            PROC_MARKER_VAR, self.marker, self._candidates()
        )

    def _candidates(self) -> list[int] | None:
        """The pids worth reading: the job's scope plus this start's own leader; None means every pid."""
        pids = self.scope() if self.scope is not None else None
        return None if pids is None else [self.popen.pid, *pids]

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._gone():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def kill_now(self, timeout: float = 5.0) -> int | None:
        """SIGKILL the process group and reap the leader: for processes with nothing to flush."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        self._pump.join(timeout=2.0)
        return self.popen.returncode

    def stop(self, sigint_timeout: float = 10.0, sigterm_timeout: float = 3.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to every process of this start, waiting for all of them."""
        if self._stopped:  # already stopped (an app that exited is stopped at once, and again at the end)
            return self.popen.returncode
        if not self._gone():
            self.interrupt()
            if not self.wait_gone(sigint_timeout):
                self.signal_all(signal.SIGTERM)
                if not self.wait_gone(sigterm_timeout):
                    log.warning("%s ignored SIGINT and SIGTERM; killing it", self.name)
                    self.signal_all(signal.SIGKILL)
                    self.wait_gone(2.0)
        self.signal_group(signal.SIGKILL)
        kill_marked_processes(PROC_MARKER_VAR, self.marker, scope=self._candidates)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5.0)
        self._pump.join(timeout=2.0)
        self._stopped = True
        log.info("stopped %s", self.name)
        return self.popen.returncode


def process_group_members(pgid: int, candidates: Iterable[int] | None = None) -> list[int]:
    members = []
    for pid in _all_pids() if candidates is None else candidates:
        fields = stat_fields(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(pid)
    return members


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


def find_marked_processes(var: str, value: str, candidates: Iterable[int] | None = None) -> list[int]:
    """Processes whose environment carries var=value, among `candidates` (default: every process)."""
    needle = f"{var}={value}".encode()
    own = os.getpid()
    pids = _all_pids() if candidates is None else dict.fromkeys(candidates)
    return [pid for pid in pids if pid != own and _environ_has(pid, needle)]


def kill_marked_processes(
    var: str, value: str, timeout: float = 5.0, scope: Callable[[], Iterable[int] | None] | None = None
) -> list[int]:
    """SIGKILL every process whose environment carries var=value, and wait until they are gone.

    `scope` narrows the search to where such processes can be (read again on every round); reading
    every process's environment is most of what stopping a short job costs the runner."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = find_marked_processes(var, value, scope() if scope is not None else None)
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
