"""A resident, pre-imported runner parent: `python -m openrobomaker.runner.zygote`.

The local executor starts one per server (lazily) and asks it, one JSON line on stdin per job, to fork a
runner: `{"spec": SPEC, "cwd": WORK_DIR, "out": RUNNER_OUT, "nice": N}` → `{"pid": PID}` on stdout.
A new interpreter plus the runner's imports cost ~0.4 CPU-s per job; a fork of this process costs a few ms.

The forked runner is exactly the detached runner `python -m openrobomaker.runner --spec SPEC` would be:
it outlives the zygote and the server (the zygote ignores SIGCHLD, so its exited runners are reaped by the
kernel, and a runner left behind when the zygote exits is adopted by init), leads its own
session, has no parent-death signal, has its stdio on runner.out, and its command line is rewritten to
`... -m openrobomaker.runner --spec SPEC` so that the executor's find_orphan and anyone reading `ps` see
what it is. The zygote itself is single-threaded (forks are safe), holds no server socket or database
connection (it is a fresh interpreter started with close_fds), and exits when the server does: stdin EOF,
plus PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import signal
import sys

from openrobomaker.procfs import set_task_name, stat_fields

PR_SET_PDEATHSIG = 1
TITLE_ROOM = 4096  # bytes of argv space reserved for the forked runners' command lines
STORE_KINDS = ("local", "s3")
_ARG_START_FIELD = 48  # /proc/<pid>/stat fields 48 and 49 (1-based): where argv lies in memory


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_parent_death_signal(sig: int) -> None:
    _libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_command_line(argv: list[str]) -> bool:
    """Rewrite this process's /proc/self/cmdline in place (as setproctitle does), within the original room."""
    fields = stat_fields("self")
    if fields is None:
        return False
    try:
        # fields[0] is field 3 (the state), so field N is fields[N - 3].
        start, end = int(fields[_ARG_START_FIELD - 3]), int(fields[_ARG_START_FIELD - 2])
        text = "\0".join(argv).encode() + b"\0"
        if len(text) > end - start:
            return False
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(text.ljust(end - start, b"\0"))
        return True
    except (OSError, ValueError, IndexError):
        return False


def _preload() -> None:
    """Import everything a runner needs, once, here; forks inherit it."""
    # Imported on first use (host names are idna-encoded; open_store imports the store's module): without
    # these every runner imported, and compiled, them again.
    import encodings.idna  # noqa: F401
    import http.client  # noqa: F401

    import openrobomaker.runner.__main__  # noqa: F401
    import openrobomaker.runner.job  # noqa: F401


def _become_runner(request: dict) -> None:
    """In the grandchild: detach, redirect stdio, run the job run, never return."""
    code = 70
    try:
        os.setsid()
        set_parent_death_signal(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.chdir(request["cwd"])
        nice = int(request.get("nice") or 0)
        if nice > 0:
            os.nice(nice)
        set_command_line([sys.executable, "-m", "openrobomaker.runner", "--spec", request["spec"]])
        set_task_name("orm-runner")
        from pathlib import Path

        from openrobomaker.runner.__main__ import run_spec

        code = run_spec(Path(request["spec"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report whatever killed the run on runner.out
        import traceback

        traceback.print_exc()
    finally:
        import logging

        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _store_module(spec_path: str) -> str | None:
    """The object store module the job's runner will open (the spec names the store's kind)."""
    try:
        with open(spec_path, "rb") as spec:
            kind = json.load(spec).get("objectStore", {}).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # the runner itself reports a spec it cannot read
    return f"openrobomaker.objectstore.{kind}" if kind in STORE_KINDS else None


def _preload_for(request: dict) -> None:
    """Import, once, what this job's runner needs beyond _preload: boto3 only when the store is S3 (it
    would double what every fork of a local-store server copies)."""
    module = _store_module(request["spec"])
    if module is None or module in sys.modules:
        return
    with contextlib.suppress(ImportError):
        importlib.import_module(module)
        gc.freeze()


def fork_runner(request: dict) -> int:
    """One fork; the runner is the zygote's child until either exits. Returns the runner's pid."""
    _preload_for(request)
    runner = os.fork()
    if runner == 0:
        _become_runner(request)
    return runner


def serve(stdin, stdout) -> int:
    for line in stdin:
        try:
            request = json.loads(line)
            answer = {"pid": fork_runner(request)}
        except Exception as exc:  # noqa: BLE001 - the executor falls back to a plain runner process
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()
    return 0


def main() -> int:
    set_parent_death_signal(signal.SIGKILL)
    expected_parent = os.environ.pop("OPENROBOMAKER_ZYGOTE_PARENT", "")
    if expected_parent and os.getppid() != int(expected_parent):
        return 1  # the server died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of a foreground server reaches the server only
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners that end before the zygote leave no zombie
    _preload()
    # Everything imported so far lives as long as the runners: keep it out of their garbage collections,
    # whose passes would otherwise write to (and so copy) every inherited page.
    gc.freeze()
    print("ready", flush=True)
    return serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
