"""Where simulation job runs execute. `local`: a process supervisor on this host (the embedded default)."""

from __future__ import annotations

from typing import Protocol


class Executor(Protocol):
    name: str

    def start(self, job_id: str, run_id: str, spec_path: str, work_dir: str) -> str:
        """Start a runner for one job run; returns a handle that survives a control-plane restart."""

    def is_alive(self, handle: str) -> bool: ...

    def terminate(self, handle: str) -> None:
        """Ask the runner to cancel (it uploads outputs and reports before it exits)."""

    def kill(self, handle: str) -> None:
        """Stop the runner and everything it started, now."""

    def kill_leftovers(self, job_id: str) -> int:
        """Stop whatever of a job outlived its runner."""

    def find_orphan(self, spec_path: str) -> str | None:
        """A runner already started for this spec (a start the control plane crashed before recording)."""
