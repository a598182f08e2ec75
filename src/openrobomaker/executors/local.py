"""The local executor: runners as detached processes on this host, each its own session (process group),
so that they keep running while the control plane restarts.

Runners are forked by a resident, pre-imported zygote (runner/zygote.py) started lazily, once per server,
and restarted if it dies: a fork costs milliseconds where a new interpreter plus imports costs ~0.4 CPU-s.
When the zygote cannot be used, `python -m openrobomaker.runner --spec SPEC` is started instead; both
kinds of runner look the same from here (same command line, same session, same reports).

Handles are `local:<pid>:<start time>[:<run>]`: the start time (from /proc) guards against a recycled pid,
and the run against a reused runner process (runner/zygote.py): a runner process runs its jobs one after
another, saying which in its command line (`--run N` from its second job on; between jobs `--idle N`, the
number of jobs it ran), and a handle is alive only while its process is on that run (or idle just before
it: the job was handed over and not taken yet). Starts and signals are serialized, so that no job can be
handed to a runner between the check of a handle and the signal sent to it.
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
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.procfs import start_time

log = logging.getLogger(__name__)

RUNNER_NICE = 5  # runners and their jobs yield the CPU to the control plane (admission, reports)
ZYGOTE_READY_SECONDS = 30.0
ZYGOTE_ANSWER_SECONDS = 10.0


@dataclass(frozen=True)
class Handle:
    pid: int
    start: str
    run: int = 1

    def __str__(self) -> str:
        return f"local:{self.pid}:{self.start}" + (f":{self.run}" if self.run > 1 else "")


def _parse(handle: str) -> Handle:
    kind, pid, rest = handle.split(":", 2)
    if kind != "local":
        raise ValueError(f"not a local handle: {handle}")
    start, _, run = rest.partition(":")
    return Handle(int(pid), start, int(run) if run else 1)


def _handle_run_is_current(cmdline: bytes, run: int) -> bool:
    """Whether the runner process with this command line is (or is about to be) on `run`."""
    args = cmdline.split(b"\0")
    if b"openrobomaker.runner.zygote" in args:
        return run == 1  # forked a moment ago, its command line not rewritten yet
    if b"openrobomaker.runner" not in args:
        return False
    if b"--idle" in args:  # between jobs: the next one may have been handed to it already
        return _number_after(args, b"--idle") == run - 1
    if b"--spec" not in args:
        return False
    return _run_of_runner(args) == run


def _number_after(args: list[bytes], flag: bytes) -> int | None:
    index = args.index(flag) + 1
    return int(args[index]) if index < len(args) and args[index].isdigit() else None


def _run_of_runner(args: list[bytes]) -> int | None:
    """The run a runner with these command-line arguments is on: `--run N`, else its first."""
    if b"--run" in args:
        return _number_after(args, b"--run")
    return 1


def _process_is_on_run(pid: int, run: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return _handle_run_is_current(fh.read(), run)
    except OSError:
        return False


def runner_command(spec_path: str) -> list[str]:
    """A runner's command line for its (first) job: the interpreter started, or a forked runner's."""
    from openrobomaker.runner.zygote import runner_command_line

    return runner_command_line(spec_path, 1)


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

    def fork_runner(self, spec_path: str, work_dir: str) -> tuple[int, int]:
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
        return int(answer["pid"]), int(answer.get("run") or 1)

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
        self._signal_lock = threading.Lock()  # see the module's docstring

    def start(self, job_id: str, run_id: str, spec_path: str, work_dir: str) -> str:
        with self._signal_lock:
            started = self._fork_from_zygote(spec_path, work_dir) if self.use_zygote else None
            pid, run = started if started is not None else (self._spawn_interpreter(spec_path, work_dir), 1)
            return str(Handle(pid, start_time(pid) or "0", run))

    def _zygote_process(self) -> Zygote:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    log.warning("runner zygote (pid %s) died; starting a new one", self._zygote.process.pid)
                self._zygote = Zygote()
            return self._zygote

    def _fork_from_zygote(self, spec_path: str, work_dir: str) -> tuple[int, int] | None:
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
        runner = _parse(handle)
        return start_time(runner.pid) == runner.start and _process_is_on_run(runner.pid, runner.run)

    def terminate(self, handle: str) -> None:
        with self._signal_lock:
            if self.is_alive(handle):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(_parse(handle).pid, signal.SIGTERM)

    def kill(self, handle: str) -> None:
        with self._signal_lock:
            if self.is_alive(handle):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(_parse(handle).pid, signal.SIGKILL)

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
            if wanted + b"\0" in cmdline:
                start, run = start_time(int(entry.name)), _run_of_runner(cmdline.split(b"\0"))
                if start and run:
                    return str(Handle(int(entry.name), start, run))
        return None
