"""CPU accounting shared by the benchmarks (root only for the cgroup part)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class CpuGroup:
    """CPU seconds of some processes and all their descendants: a cgroup-v1 cpuacct group (root only).

    Runners are detached and their job processes are nsenter'd into namespaces, so rusage would miss
    most of them; a cgroup sees every descendant. Without cgroup-v1 cpuacct, `seconds()` is None."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str) -> None:
        self.path: Path | None = self.ROOT / f"orm-bench-{os.getpid()}-{name}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None

    def add(self, pid: int) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(str(pid))

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        """Move whatever is left back to the root group and remove ours."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.ROOT / "cgroup.procs").write_text(pid)
            self.path.rmdir()
        self.path = None


def own_cpu_seconds(pid: int) -> float:
    """CPU time of one process without its children (e.g. the API server and its controllers)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    utime, stime = (int(v) for v in stat[stat.rindex(")") + 2 :].split()[11:13])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
