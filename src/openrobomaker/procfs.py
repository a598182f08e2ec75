"""Reading /proc/<pid>/stat, for the executor, the runner and the agent; naming this process."""

from __future__ import annotations

_START_TIME = 19  # field 22 (starttime), counted from field 3 (state)


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [0] is field 3 (state), [1] ppid, [2] pgrp, ...

    The command name may hold spaces and parentheses; fields resume after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid from a recycled one); None when it is
    gone or a zombie (it has finished)."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return fields[_START_TIME]


def set_task_name(name: str) -> None:
    """Name this process in `ps`, `top` and `perf` (forked runners and holders would all be `python`)."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass  # a name is a convenience only
