"""The local executor: runners as detached processes on this host, each its own session (process group),
so that they keep running while the control plane restarts.

Runners are forked by a resident, pre-imported zygote (runner/zygote.py) started lazily, once per server,
and restarted if it dies: a fork costs milliseconds where a new interpreter plus imports costs ~0.4 CPU-s.
When the zygote cannot be used, `python -m openrobomaker.runner --spec SPEC` is started instead; both
kinds of runner look the same from here (same command line, same session, same reports).

Handles are `local:<pid>:<start time>`; the start time (from /proc) guards against a recycled pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from openrobomaker.procfs import start_time

log = logging.getLogger(__name__)

RUNNER_NICE = 5  # runners and their jobs yield the CPU to the control plane (admission, reports)
ZYGOTE_READY_SECONDS = 30.0
ZYGOTE_ANSWER_SECONDS = 10.0


def _parse(handle: str) -> tuple[int, str]:
    kind, pid, start = handle.split(":", 2)
    if kind != "local":
        raise ValueError(f"not a local handle: {handle}")
    return int(pid), start


def runner_command(spec_path: str) -> list[str]:
    return [sys.executable, "-m", "openrobomaker.runner", "--spec", spec_path]


def _runner_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENROBOMAKER_SERVER_")}


def _lower_priority() -> None:
    os.nice(RUNNER_NICE)


class Zygote:
    """The resident runner parent: one request line in, one answer line out, serialized by a lock."""

    def __init__(self) -> None:
        from openrobomaker.runner.zygote import TITLE_ROOM

        env = _runner_env()
        env["OPENROBOMAKER_ZYGOTE_PARENT"] = str(os.getpid())
        # The last argument is room for the forked runners' rewritten command lines (see zygote.py).
        argv = [sys.executable, "-m", "openrobomaker.runner.zygote", " " * TITLE_ROOM]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            env=env,
            cwd="/",
        )
        self.lock = threading.Lock()
        if self._read_line(ZYGOTE_READY_SECONDS) != b"ready":
            self.close()
            raise OSError("the runner zygote did not start")
        log.info("runner zygote started (pid %s)", self.process.pid)

    def _read_line(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else b""

    def alive(self) -> bool:
        return self.process.poll() is None

    def fork_runner(self, spec_path: str, work_dir: str) -> int:
        request = {"spec": spec_path, "cwd": work_dir, "out": str(Path(work_dir) / "runner.out")}
        request["nice"] = RUNNER_NICE
        with self.lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            line = self._read_line(ZYGOTE_ANSWER_SECONDS)
        if not line:
            self.close()  # a zygote that does not answer is replaced on the next start
            raise OSError("the runner zygote did not answer")
        answer = json.loads(line)
        if "pid" not in answer:
            raise OSError(f"the runner zygote could not fork: {answer.get('error')}")
        return int(answer["pid"])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()  # the zygote exits on EOF
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class LocalExecutor:
    name = "local"

    def __init__(self, use_zygote: bool = True) -> None:
        self._children: dict[int, subprocess.Popen] = {}
        self.use_zygote = use_zygote
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()

    def start(self, job_id: str, run_id: str, spec_path: str, work_dir: str) -> str:
        pid = self._fork_from_zygote(spec_path, work_dir) if self.use_zygote else None
        if pid is None:
            pid = self._spawn_interpreter(spec_path, work_dir)
        start = start_time(pid) or "0"
        return f"local:{pid}:{start}"

    def _zygote_process(self) -> Zygote:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    log.warning("runner zygote (pid %s) died; starting a new one", self._zygote.process.pid)
                self._zygote = Zygote()
            return self._zygote

    def _fork_from_zygote(self, spec_path: str, work_dir: str) -> int | None:
        for _attempt in range(2):  # a zygote killed since the last start is replaced once
            try:
                return self._zygote_process().fork_runner(spec_path, work_dir)
            except (OSError, ValueError) as exc:
                log.warning("runner zygote unusable (%s)", exc)
        return None

    def _spawn_interpreter(self, spec_path: str, work_dir: str) -> int:
        # runner.log is the runner's own log; its stdout/stderr (an interpreter crash) go beside it.
        with open(Path(work_dir) / "runner.out", "ab") as out:
            process = subprocess.Popen(
                runner_command(spec_path),
                cwd=work_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=_runner_env(),
                preexec_fn=_lower_priority,  # noqa: PLW1509 - os.nice only, no locks
            )
        self._children[process.pid] = process
        return process.pid

    def zygote_pid(self) -> int | None:
        zygote = self._zygote
        return zygote.process.pid if zygote is not None and zygote.alive() else None

    def close(self) -> None:
        """Stop the zygote (runners keep running: they are not its children)."""
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def _reap(self) -> None:
        for pid, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[pid]

    def is_alive(self, handle: str) -> bool:
        self._reap()
        pid, start = _parse(handle)
        return start_time(pid) == start

    def terminate(self, handle: str) -> None:
        if self.is_alive(handle):
            pid, _ = _parse(handle)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill(self, handle: str) -> None:
        if self.is_alive(handle):
            pid, _ = _parse(handle)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def kill_leftovers(self, job_id: str) -> int:
        """Kill every process still marked with the job's id (a runner killed with SIGKILL cannot clean up)."""
        marker = f"AWS_ROBOMAKER_SIMULATION_JOB_ID={job_id}\0".encode()
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except (OSError, ProcessLookupError):
                continue
        return killed

    def find_orphan(self, spec_path: str) -> str | None:
        wanted = "\0".join(runner_command(spec_path)[1:]).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if wanted in cmdline:
                start = start_time(int(entry.name))
                if start:
                    return f"local:{entry.name}:{start}"
        return None
