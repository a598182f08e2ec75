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

Runners are reused, and wait for their job ready: a runner whose job ended (its final report taken by the
control plane) does not exit but goes back to the zygote, idle; the zygote also keeps one idle runner forked
ahead. An idle runner makes the next job's namespaces at once (pid 1 in fresh network, mount and pid
namespaces: the slowest part of a runner's start), says `idle` on its own socket to the zygote, and waits.
The next job with the same isolation and priority goes to an idle runner instead of a new fork: no fork,
no copy-on-write of the zygote's pages, no exit, and no namespaces made on the job's path. Each job still
gets namespaces nobody used before, its own run directory, log file, stdio and command line. An idle
runner has no job: no spec, no reports; it dies with the zygote (PR_SET_PDEATHSIG, and EOF on its socket)
and with it its pid 1. It leaves after IDLE_SECONDS without a job (saying `bye`, so that a job handed
to it meanwhile is not lost), after MAX_RUNS jobs, or when anything of the last job is left in it (a
thread). While it runs a job it is a runner like any other and outlives the zygote; its socket then
carries only turns: the zygote hands out turns for the CPU-heavy steps of jobs (runner/turns.py).

Since one process runs several jobs in turn, the executor's handle of a job names the run too:
`local:<pid>:<start>:<run>`; the runner's command line ends with `--run <run>` from its second job on,
and the executor checks it before it signals the process (see executors/local.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

from openrobomaker.procfs import set_task_name, stat_fields
from openrobomaker.runner import turns

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


# An idle runner that gets no job within this leaves (the variable is for tests).
IDLE_SECONDS = float(os.environ.get("OPENROBOMAKER_RUNNER_IDLE_SECONDS") or 60.0)
MAX_RUNS = 100  # jobs per runner process, bounding whatever a run might leave behind in it
_MESSAGE_BYTES = 1 << 16
_THREADS_GONE_SECONDS = 1.0


def _detach(nice: int) -> None:
    """A runner's own session, signals as a fresh interpreter has them, its priority."""
    os.setsid()
    _default_signals()
    if nice > 0:
        os.nice(nice)


def _default_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it


def _redirect_stdio(out_path: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def runner_command_line(spec_path: str, run: int) -> list[str]:
    """What a runner's /proc/<pid>/cmdline says while it runs its `run`-th job (see executors/local.py)."""
    argv = [sys.executable, "-m", "openrobomaker.runner", "--spec", spec_path]
    return argv + (["--run", str(run)] if run > 1 else [])


def idle_command_line(runs_done: int) -> list[str]:
    """An idle runner's command line: how many jobs it ran, so that the executor can tell the handle of
    the job just handed to it (run runs_done + 1, alive) from that of its last one (over)."""
    return [sys.executable, "-m", "openrobomaker.runner", "--idle", str(runs_done)]


@dataclass(frozen=True)
class SpecFacts:
    """What the zygote reads of a job's spec: its object store's module and its isolation mode."""

    store_module: str | None
    isolation: str | None


def read_spec_facts(spec_path: str) -> SpecFacts:
    try:
        with open(spec_path, "rb") as spec_file:
            spec = json.load(spec_file)
        kind = spec.get("objectStore", {}).get("kind")
        isolation = spec.get("isolation") or "auto"
    except (OSError, ValueError, AttributeError):
        return SpecFacts(None, None)  # the runner itself reports a spec it cannot read
    module = f"openrobomaker.objectstore.{kind}" if kind in STORE_KINDS else None
    return SpecFacts(module, isolation if isinstance(isolation, str) else None)


def _preload_store(module: str | None) -> None:
    """Import, once, what a job's runner needs beyond _preload: boto3 only when the store is S3 (it
    would double what every fork of a local-store server copies)."""
    if module is None or module in sys.modules:
        return
    with contextlib.suppress(ImportError):
        importlib.import_module(module)
        gc.freeze()


@dataclass(frozen=True)
class RunnerKind:
    """Which jobs a runner can take: the namespaces it makes while idle and the priority it runs at."""

    isolation: str
    nice: int


# --- the runner's side ---------------------------------------------------------------------------------


class RunnerLife:
    """One runner process from its fork to its exit: jobs handed to it, idle spells in between."""

    def __init__(self, link: socket.socket, kind: RunnerKind, zygote: int):
        self.link, self.kind, self.zygote = link, kind, zygote
        self.runs = 0
        self.prepared = None  # the namespaces made while idle, for the next job

    def live(self, request: dict | None) -> NoReturn:
        code = 70
        try:
            _detach(self.kind.nice)
            while True:
                if request is None:
                    request = self._wait_idle()
                    if request is None:
                        code = 0
                        return
                code, reusable = self._run(request)
                request = None
                if not (reusable and self.runs < MAX_RUNS and self._nothing_left_running()):
                    return
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - report whatever killed the run on runner.out
            import traceback

            traceback.print_exc()
        finally:
            if self.prepared is not None:
                self.prepared.discard()
            _exit(code)

    def _run(self, request: dict) -> tuple[int, bool]:
        """Become the runner of the request's job: its command line, stdio and directory, then the run."""
        set_parent_death_signal(0)  # a runner with a job outlives the zygote and the server
        self.runs += 1
        set_command_line(runner_command_line(request["spec"], self.runs))
        set_task_name("orm-runner")
        _redirect_stdio(request["out"])
        os.chdir(request["cwd"])
        from pathlib import Path

        from openrobomaker.runner.__main__ import execute_spec

        prepared, self.prepared = self.prepared, None
        return execute_spec(Path(request["spec"]), prepared, turns.TurnTaker(self.link))

    def _wait_idle(self) -> dict | None:
        """Idle: shed the last job, make the next one's namespaces, tell the zygote, wait for a job."""
        set_parent_death_signal(signal.SIGKILL)  # an idle runner lives only as long as the zygote
        if os.getppid() != self.zygote:
            return None  # the zygote went while this runner ran its job
        _default_signals()
        _drop_log_handlers()
        _redirect_stdio(os.devnull)
        os.chdir("/")
        set_command_line(idle_command_line(self.runs))
        if self.kind.isolation != "none":  # `none` picks a free port per job: nothing to make ahead
            from openrobomaker.runner.isolation import prepare_isolation

            self.prepared = prepare_isolation(self.kind.isolation)
        try:
            self.link.send(b"idle")
            # Named idle once the zygote can hand it a job (the command line said so earlier, for the
            # executor's handles: the last job's handle is stale from then on).
            set_task_name("orm-idle")
            return self._receive_job()
        except OSError:
            return None

    def _receive_job(self) -> dict | None:
        deadline, said_bye = time.monotonic() + IDLE_SECONDS, False
        while True:
            timeout = None if said_bye else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.link], [], [], timeout)
            if not ready:
                # Leaving: the zygote answers `ok`, or it had handed this runner a job already (which is
                # then run: the zygote ignores a `bye` from a runner it gave a job).
                self.link.send(b"bye")
                said_bye = True
                continue
            message = self.link.recv(_MESSAGE_BYTES)
            if turns.parse(message) is not None:
                continue  # a `go` for a turn the last job gave up waiting for
            if not message or message == b"ok":
                return None
            return json.loads(message)

    @staticmethod
    def _nothing_left_running() -> bool:
        """Only the main thread is left of the last job (its reporter, log pumps and exit watchers end
        with it); anything still running would run on into the next job, so such a runner exits."""
        import threading

        deadline = time.monotonic() + _THREADS_GONE_SECONDS
        while threading.active_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        return threading.active_count() == 1


def _drop_log_handlers() -> None:
    """The last job's runner.log is closed: nothing an idle runner does belongs in it."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()


def _exit(code: int) -> NoReturn:
    import logging

    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


# --- the zygote's side ---------------------------------------------------------------------------------


@dataclass
class RunnerLink:
    """The zygote's end of one runner's socket."""

    pid: int
    sock: socket.socket
    kind: RunnerKind
    runs: int = 0  # jobs handed to it so far
    idle: bool = False


class Zygote:
    """Hands jobs to idle runners, forks runners when none fits, keeps one idle runner forked ahead."""

    def __init__(self) -> None:
        self.links: dict[int, RunnerLink] = {}  # by socket fd
        self.turns = turns.TurnQueue()  # runners' turns for their CPU-heavy steps (runner/turns.py)

    # requests from the executor

    def start_runner(self, request: dict) -> tuple[dict, RunnerKind | None]:
        """The answer for the request ({"pid", "run"}), and the kind of runner to keep idle for the next
        job like it."""
        facts = read_spec_facts(request["spec"])
        _preload_store(facts.store_module)
        kind = RunnerKind(facts.isolation, int(request.get("nice") or 0)) if facts.isolation else None
        link = self._hand_to_idle(request, kind) if kind is not None else None
        if link is None:
            link = self._fork(kind or RunnerKind("none", int(request.get("nice") or 0)), request)
        link.runs += 1
        return {"pid": link.pid, "run": link.runs}, kind

    def _hand_to_idle(self, request: dict, kind: RunnerKind) -> RunnerLink | None:
        for link in sorted(self.links.values(), key=lambda lk: lk.runs, reverse=True):
            if not (link.idle and link.kind == kind):
                continue
            link.idle = False
            try:
                link.sock.send(json.dumps(request).encode())
                return link
            except OSError:
                self._drop(link)  # it died idle
        return None

    def keep_one_idle(self, kind: RunnerKind | None) -> None:
        """Fork an idle runner for the next job of this kind unless one is there or on its way: after the
        answer, off the job's path."""
        if kind is None or any(
            link.kind == kind and (link.idle or link.runs == 0) for link in self.links.values()
        ):
            return
        self._fork(kind, None)

    def _fork(self, kind: RunnerKind, request: dict | None) -> RunnerLink:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            # Other runners' sockets must not live on in this one: they would never see EOF.
            for link in self.links.values():
                link.sock.close()
            self.links.clear()
            RunnerLife(theirs, kind, zygote).live(request)
        theirs.close()
        link = RunnerLink(pid, ours, kind)
        self.links[ours.fileno()] = link
        return link

    # messages from runners

    def sockets(self) -> list[socket.socket]:
        return [link.sock for link in self.links.values()]

    def on_message(self, sock: socket.socket) -> None:
        link = self.links[sock.fileno()]
        try:
            message = sock.recv(_MESSAGE_BYTES)
        except OSError:
            message = b""
        if (turn := turns.parse(message)) is not None:
            self._on_turn_message(link, *turn)
        elif message == b"idle":
            link.idle = True
        elif message == b"bye":
            if link.idle:  # else it has a job already, which it will run
                link.idle = False
                with contextlib.suppress(OSError):
                    sock.send(b"ok")
        elif not message:
            self._drop(link)  # the runner exited

    def _on_turn_message(self, link: RunnerLink, word: bytes, number: int) -> None:
        now = time.monotonic()
        if word == b"turn":
            self._send_grants(self.turns.ask(link.pid, number, now))
        elif word == b"done":
            self._send_grants(self.turns.give_back(link.pid, number, now))

    def expire_turns(self) -> None:
        self._send_grants(self.turns.expire(time.monotonic()))

    def seconds_to_next_turn_expiry(self) -> float | None:
        return self.turns.seconds_to_next_expiry(time.monotonic())

    def _send_grants(self, granted: list) -> None:
        by_pid = {link.pid: link for link in self.links.values()}
        for pid, number in granted:
            link = by_pid.get(pid)
            if link is None:
                continue
            try:
                link.sock.send(b"go %d" % number)
            except OSError:
                self._drop(link)  # its turn goes to the next one

    def _drop(self, link: RunnerLink) -> None:
        self.links.pop(link.sock.fileno(), None)
        link.sock.close()
        self._send_grants(self.turns.drop(link.pid, time.monotonic()))

    def close(self) -> None:
        for link in list(self.links.values()):
            self._drop(link)


def serve(stdin_fd: int, stdout) -> int:
    """Requests from the executor (JSON lines on stdin) and runners' messages, one at a time."""
    zygote = Zygote()
    pending = b""
    while True:
        timeout = zygote.seconds_to_next_turn_expiry()
        readable, _, _ = select.select([*zygote.sockets(), stdin_fd], [], [], timeout)
        zygote.expire_turns()
        # Runners' news before requests (select keeps the order it is given): a runner that said `idle` in
        # the same round as a request takes that request instead of a fork.
        for ready in readable:
            if ready != stdin_fd:
                if ready.fileno() in zygote.links:
                    zygote.on_message(ready)
                continue
            data = os.read(stdin_fd, _MESSAGE_BYTES)
            if not data:
                zygote.close()  # idle runners see EOF and leave; busy ones keep their jobs
                return 0
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                _answer(zygote, line, stdout)


def _answer(zygote: Zygote, line: bytes, stdout) -> None:
    kind = None
    try:
        answer, kind = zygote.start_runner(json.loads(line))
    except Exception as exc:  # noqa: BLE001 - the executor falls back to a plain runner process
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    stdout.write(json.dumps(answer) + "\n")
    stdout.flush()
    with contextlib.suppress(Exception):  # without an idle runner the next job is forked as before
        zygote.keep_one_idle(kind)


def _start_namespace_factory() -> None:
    """As root, the small process that forks the jobs' pid 1s (runner/ns_holder.py, `factory`), its address
    left in the environment the runners inherit. Without it (not root, or it cannot start) runners fork
    pid 1 themselves."""
    if os.geteuid() != 0:
        return
    from openrobomaker.runner import ns_holder

    name = f"openrobomaker-nsfactory-{os.getpid()}-{secrets.token_hex(8)}"  # abstract: no file to clean up
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind("\0" + name)
            listener.listen(64)
            subprocess.Popen(
                [sys.executable, "-I", "-S", ns_holder.__file__, "factory", str(os.getpid())],
                stdin=listener.fileno(),
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
    except OSError:
        return
    os.environ[ns_holder.FACTORY_ENV] = name


def main() -> int:
    set_parent_death_signal(signal.SIGKILL)
    expected_parent = os.environ.pop("OPENROBOMAKER_ZYGOTE_PARENT", "")
    if expected_parent and os.getppid() != int(expected_parent):
        return 1  # the server died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of a foreground server reaches the server only
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners that end before the zygote leave no zombie
    _preload()
    _start_namespace_factory()
    # Everything imported so far lives as long as the runners: keep it out of their garbage collections,
    # whose passes would otherwise write to (and so copy) every inherited page.
    gc.freeze()
    print("ready", flush=True)
    return serve(sys.stdin.fileno(), sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
