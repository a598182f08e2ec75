"""The local executor: runners as detached processes on this host, each its own session (process group),
so that they keep running while the control plane restarts.

Handles are `local:<pid>:<start time>`; the start time (from /proc) guards against a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

_CLK_START_FIELD = 21  # /proc/<pid>/stat field 22 (0-based 21 after the comm field is cut out)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return fields[_CLK_START_FIELD - 2]


def _parse(handle: str) -> tuple[int, str]:
    kind, pid, start = handle.split(":", 2)
    if kind != "local":
        raise ValueError(f"not a local handle: {handle}")
    return int(pid), start


def runner_command(spec_path: str) -> list[str]:
    return [sys.executable, "-m", "openrobomaker.runner", "--spec", spec_path]


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}

    def start(self, job_id: str, run_id: str, spec_path: str, work_dir: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENROBOMAKER_SERVER_")}
        # runner.log is the runner's own log; its stdout/stderr (an interpreter crash) go beside it.
        with open(Path(work_dir) / "runner.out", "ab") as log:
            process = subprocess.Popen(
                runner_command(spec_path),
                cwd=work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        self._children[process.pid] = process
        start = _proc_start_time(process.pid) or "0"
        return f"local:{process.pid}:{start}"

    def _reap(self) -> None:
        for pid, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[pid]

    def is_alive(self, handle: str) -> bool:
        self._reap()
        pid, start = _parse(handle)
        return _proc_start_time(pid) == start

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
                start = _proc_start_time(int(entry.name))
                if start:
                    return f"local:{entry.name}:{start}"
        return None
