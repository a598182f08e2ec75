"""Helper run inside a job's namespaces (standard library only; runs under any Python 3).

    ns_holder.py hold                    pid 1 of the job's pid namespace: brings `lo` up, prints "ready",
                                         reaps orphans, exits when stdin closes (the runner died) or on SIGTERM.
    ns_holder.py wait-port PORT SECONDS  exit 0 once 127.0.0.1:PORT accepts connections inside the namespace.
    ns_holder.py init-master PORT RUN_ID SECONDS
                                         wait for the ROS master, then set /run_id as roscore does (every
                                         roslaunch of the job must agree on it, or they race to set it).
    ns_holder.py mounts                  apply the data-source mount plan (JSON on stdin) in the mount namespace.
    ns_holder.py factory ZYGOTE_PID      (as root) make pid 1s for the runners of one zygote, on the listening
                                         unix socket it gets as stdin (see `factory`).

When the holder exits, the kernel kills every other process of the pid namespace: that is what guarantees a
job leaves nothing behind even if the runner is SIGKILLed.

`ForkedHolder` is the same holder without a new interpreter. As root the runner forks pid 1 of a new pid
namespace directly (unshare of the pid namespace around one fork), and that child unshares its network and
mount namespaces itself; in user namespace mode a forked child unshares all of them (libc unshare) and forks
pid 1 below it. Pid 1 then serves the runner's
requests (wait for a port, set the master's /run_id, open a listening socket inside the namespace and pass
it back over SCM_RIGHTS, apply the data-source mounts) on a socketpair until the runner closes it or dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import NoReturn

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MOUNT = "/bin/mount"
UMOUNT = "/bin/umount"
OPT = "/opt"
OPT_ROBOMAKER = "/opt/robomaker"
DATASOURCES_ROOT = "/opt/robomaker/datasources"


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _reap_children() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def hold() -> int:
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    bring_loopback_up()
    print("ready", flush=True)

    def watch_stdin() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(0.2):
        _reap_children()
    return 0


def wait_port(port: int, seconds: float, interval: float = 0.1) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return 0
        except OSError:
            time.sleep(interval)
    return 1


def init_master(port: int, run_id: str, seconds: float) -> int:
    import xmlrpc.client

    deadline = time.monotonic() + seconds
    # rosmaster answers within ~0.5 s; a refused connect is cheap, so look often.
    while wait_port(port, max(deadline - time.monotonic(), 0), 0.02) == 0:
        master = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/")
        try:
            code, message, _ = master.setParam("/openrobomaker_runner", "/run_id", run_id)
        except (OSError, xmlrpc.client.Error) as exc:
            # The port can accept before the master serves (or under heavy load drop the first call).
            message = str(exc)
            code = 0
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
        if code != 1:
            print(f"setting /run_id failed: {message}", file=sys.stderr)
            return 1
        return 0
    return 1


def _mount(*args: str) -> None:
    import subprocess

    subprocess.run([MOUNT, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _locked_flags(path: str) -> list[str]:
    # In a user namespace a remount must keep the flags the parent namespace locked, or it fails (EPERM).
    flags = os.statvfs(path).f_flag
    names = [
        (os.ST_NOSUID, "nosuid"),
        (os.ST_NODEV, "nodev"),
        (os.ST_NOEXEC, "noexec"),
        (os.ST_NOATIME, "noatime"),
        (os.ST_NODIRATIME, "nodiratime"),
        (os.ST_RELATIME, "relatime"),
    ]
    return [name for bit, name in names if flags & bit]


def _mirror_entry(stash: str, name: str) -> None:
    """Recreate /opt/<name> on the tmpfs so the host's /opt stays visible inside the job."""
    source, target = os.path.join(stash, name), os.path.join(OPT, name)
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    if os.path.isdir(source):
        os.mkdir(target)
    else:
        open(target, "w").close()  # noqa: SIM115 - an empty mount point
    _mount("--rbind", source, target)


def _make_opt_robomaker(stash: str) -> None:
    if os.path.isdir(OPT_ROBOMAKER):
        _mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", OPT_ROBOMAKER)
        return
    # /opt/robomaker does not exist on the host and must not be created there: put a tmpfs over /opt in
    # this mount namespace only, and bind the host's /opt entries back onto it.
    os.makedirs(stash, exist_ok=True)
    _mount("--rbind", OPT, stash)
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", OPT)
    for name in sorted(os.listdir(stash)):
        _mirror_entry(stash, name)
    os.mkdir(OPT_ROBOMAKER)


def apply_mounts(plan: dict) -> int:
    import subprocess  # here, not at the top: the factory (`python -I -S`) stays small without it

    try:
        _make_opt_robomaker(plan["stash"])
        for bind in plan["binds"]:
            target = bind["target"]
            os.makedirs(target, exist_ok=True)
            _mount("--bind", bind["source"], target)
            _mount("-o", ",".join(["remount", "bind", "ro", *_locked_flags(target)]), target)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (
            exc.stderr.decode(errors="replace").strip()
            if isinstance(exc, subprocess.CalledProcessError)
            else ""
        )
        print(f"mounting data sources failed: {exc} {detail}", file=sys.stderr)
        return 1
    return 0


# --- the forked holder -------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
_MESSAGE_BYTES = 1 << 16
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: a forked child must not import


class HolderError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise HolderError(f"{what}: {os.strerror(code)}")


def _name_task(name: bytes) -> None:
    """`orm-holder` / `orm-init` in ps, top and perf rather than a third and fourth `python` per job."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
        comm.write(name)


def _die_with_parent(parent: int | None) -> None:
    _check(_LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), "prctl")
    if parent is not None and os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _enter_new_namespaces(user_namespace: bool, pid: bool = True) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = (
        CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWPID if pid else 0) | (CLONE_NEWUSER if user_namespace else 0)
    )
    _check(_LIBC.unshare(flags), "unshare")
    if user_namespace:  # root inside maps to the runner's own uid/gid, as `unshare --map-root-user` does
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    # Mounts made inside the job must not propagate to the host (unshare(1) does the same by default).
    _check(_LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return listener


def _answer(sock: socket.socket, request: dict) -> None:
    op = request.get("op")
    if op == "wait-port":
        _send(sock, {"ok": wait_port(int(request["port"]), float(request["timeout"]), 0.02) == 0})
    elif op == "init-master":
        ok = init_master(int(request["port"]), str(request["run_id"]), float(request["timeout"])) == 0
        _send(sock, {"ok": ok})
    elif op == "listen":
        try:
            listener = _listen(int(request["port"]))
        except OSError as exc:
            _send(sock, {"ok": False, "error": str(exc)})
            return
        _send(sock, {"ok": True}, [listener.fileno()])
        listener.close()
    elif op == "mounts":
        _send(sock, {"ok": apply_mounts(request["plan"]) == 0})
    else:
        _send(sock, {"ok": False, "error": f"unknown request {op!r}"})


def _serve_as_init(sock: socket.socket) -> None:
    """pid 1 of the job: bring lo up, answer requests, reap orphans; return when the runner hangs up."""
    bring_loopback_up()
    _send(sock, {"ready": True})
    while True:
        readable, _, _ = select.select([sock], [], [], 0.5)
        _reap_children()
        if not readable:
            continue
        data = sock.recv(_MESSAGE_BYTES)
        if not data:
            return
        try:
            _answer(sock, json.loads(data))
        except Exception as exc:  # noqa: BLE001 - pid 1 must not die of one bad request: the job would
            _send(sock, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _close_inherited(keep: socket.socket) -> None:
    """Nothing of the runner's (log files, pipes, its control-plane connection) stays open in the job."""
    fd = keep.fileno()
    os.closerange(3, fd)
    os.closerange(fd + 1, 1 << 16)


def _default_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _child_main(inner_sock: socket.socket, outer_sock: socket.socket, body: Callable[[], None]) -> NoReturn:
    """A forked child's life: only its end of the socket open, `body`, and any failure told to the runner."""
    status = 1
    try:
        outer_sock.close()
        _close_inherited(inner_sock)
        body()
        status = 0
    except BaseException as exc:  # noqa: BLE001 - tell the runner why, whatever it was
        with contextlib.suppress(OSError):
            _send(inner_sock, {"error": str(exc) or type(exc).__name__})
    finally:
        os._exit(status)


def _holder_child(
    inner_sock: socket.socket, outer_sock: socket.socket, runner: int, user_ns: bool
) -> NoReturn:
    """The forked child (user namespace mode): new namespaces, then pid 1 below it; it waits for pid 1 and
    exits with it. (The pid namespace must be made inside the new user namespace, so after it.)"""

    def hold() -> None:
        _die_with_parent(runner)
        _name_task(b"orm-holder")
        _default_signals()
        _enter_new_namespaces(user_ns)
        init = os.fork()
        if init == 0:
            status = 1
            try:
                # Its parent is outside its pid namespace (getppid() says 0), so there is nothing to check;
                # should the parent die first, the runner's end of the socket still closes with the runner.
                _die_with_parent(None)
                _name_task(b"orm-init")
                _serve_as_init(inner_sock)
                status = 0
            finally:
                os._exit(status)
        _send(inner_sock, {"pid": init})
        inner_sock.close()
        os.waitpid(init, 0)

    _child_main(inner_sock, outer_sock, hold)


def _fork_as_pid_1() -> int:
    """fork(), the child being pid 1 of a new pid namespace (as root: no user namespace needed first).
    Only that one child: this process's later children are born in its own pid namespace again."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_LIBC.unshare(CLONE_NEWPID), "unshare (pid)")
        child = -1
        try:
            child = os.fork()
        finally:
            if child != 0:
                _check(_LIBC.setns(own, CLONE_NEWPID), "setns (pid)")
        return child
    finally:
        os.close(own)


def _init_child(inner_sock: socket.socket, outer_sock: socket.socket, with_parent: bool = True) -> NoReturn:
    """Forked straight in as pid 1 of the new pid namespace: its network and mount namespaces, then serve.
    with_parent=False (made by the factory): it lives on when its parent, the factory, goes (with the
    server), and ends when the runner's end of its socket closes."""

    def serve() -> None:
        # Its parent is outside its pid namespace (getppid() says 0): nothing to check; should the runner
        # die first, the runner's end of the socket still closes with it.
        if with_parent:
            _die_with_parent(None)
        _name_task(b"orm-init")
        _default_signals()
        _enter_new_namespaces(False, pid=False)
        _serve_as_init(inner_sock)

    _child_main(inner_sock, outer_sock, serve)


def _new_lock():
    import threading  # not at the top: the factory (`python -I -S`) stays small without it

    return threading.Lock()


class ForkedHolder:
    """The runner's end of a forked holder: as root, pid 1 of the job forked directly (one process); in
    user namespace mode, a holder that makes the namespaces and forks pid 1 (two processes)."""

    def __init__(self, user_namespace: bool, timeout: float = 15.0):
        self.pid: int | None = None  # pid 1 of the job's pid namespace, as the host sees it
        self.child: int | None = None  # this process's child to wait for (None: pid 1 is the factory's)
        self._pidfd: int | None = None  # pid 1 made by the factory: signalled and awaited through this
        made = None if user_namespace else _pid_1_from_factory(timeout)
        if made is not None:
            self.pid, self.sock = made
            with contextlib.suppress(OSError):  # taken at once, so a reused pid can never be mistaken for it
                self._pidfd = os.pidfd_open(self.pid)
            self._lock = _new_lock()
            self._ready(timeout)
            return
        outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if user_namespace:
            runner = os.getpid()
            self.child = os.fork()
            if self.child == 0:
                _holder_child(inner, outer, runner, user_namespace)
        else:
            try:
                self.child = _fork_as_pid_1()
            except HolderError:
                inner.close()
                outer.close()
                raise
            if self.child == 0:
                _init_child(inner, outer)
            self.pid = self.child
        inner.close()
        self.sock = outer
        self._lock = _new_lock()
        self._ready(timeout)

    def _ready(self, timeout: float) -> None:
        try:
            self._await_ready(timeout)
        except HolderError:
            self.close()
            raise

    def _await_ready(self, timeout: float) -> None:
        ready = False
        deadline = time.monotonic() + timeout
        while self.pid is None or not ready:
            message = self._receive(deadline - time.monotonic())
            if "error" in message:
                raise HolderError(message["error"])
            self.pid = message.get("pid", self.pid)
            ready = ready or bool(message.get("ready"))

    def _receive(self, timeout: float) -> dict:
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not readable:
            raise HolderError("the namespace holder did not answer")
        data = self.sock.recv(_MESSAGE_BYTES)
        if not data:
            raise HolderError("the namespace holder exited")
        return json.loads(data)

    def request(self, message: dict, timeout: float) -> dict:
        with self._lock:  # one request at a time: the master's set-up runs in a thread of the runner
            _send(self.sock, message)
            return self._receive(timeout)

    def listen(self, port: int, timeout: float = 10.0) -> socket.socket:
        """A TCP socket listening on 127.0.0.1:port inside the job's network namespace."""
        with self._lock:
            _send(self.sock, {"op": "listen", "port": port})
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                raise HolderError("the namespace holder did not answer")
            data, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE_BYTES, 1)
        answer = json.loads(data or b"{}")
        if not answer.get("ok") or not fds:
            raise HolderError(answer.get("error") or "no socket from the namespace holder")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        """Hang up: pid 1 exits, and the kernel kills everything left in the job's pid namespace."""
        self._hang_up()
        self.wait()

    def kill(self, wait: bool = True) -> None:
        """End the namespace now (no wait for pid 1 to notice the hang-up); with wait=False, return once
        pid 1 has its SIGKILL and let the caller wait() for its death later."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)
        self._hang_up()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Until pid 1 (and so every process of the job's pid namespace) is gone."""
        if self.child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.child, 0)
        elif self._pidfd is not None:
            try:
                select.select([self._pidfd], [], [])  # readable once pid 1 has exited
            finally:
                os.close(self._pidfd)
                self._pidfd = None

    def _hang_up(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- the factory ---------------------------------------------------------------------------------------
#
# A pid 1 forked from the runner shares the runner's whole heap (tens of MB of Python): the fork copies its
# page tables, and while the job runs every page the runner writes is copied once more, ~1 300 page faults
# a job. Forked from this small process instead (a `python -I -S` of this standard-library-only module,
# one per zygote), pid 1 costs a fraction of that. Runners connect to its socket (SOCK_SEQPACKET, the
# zygote's abstract socket name in FACTORY_ENV) and get back pid 1's pid and their end of its socket; the
# rest is the same as a forked pid 1. The factory itself is not in the job's way: a pid 1 it made outlives
# it, and ends when the runner's end of its socket closes.

FACTORY_ENV = "OPENROBOMAKER_NS_FACTORY"
_FACTORY_CONNECTIONS: dict[int, socket.socket] = {}  # by process: a forked runner makes its own


def factory(parent: int) -> int:
    """Serve runners on the listening socket that is stdin; only processes of this user are served. It goes
    with `parent` (the zygote), even one that died before it got this far."""
    _die_with_parent(parent)
    _name_task(b"orm-nsfactory")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # pid 1s it made are reaped by the kernel
    listener = socket.socket(fileno=0)
    clients: list[socket.socket] = []
    while True:
        readable, _, _ = select.select([listener, *clients], [], [])
        for sock in readable:
            if sock is listener:
                client, _ = listener.accept()
                if _peer_uid(client) == os.getuid():
                    clients.append(client)
                else:
                    client.close()
                continue
            try:
                request = sock.recv(_MESSAGE_BYTES)
                if request == b"pid1":
                    _make_pid_1_for(sock)
                    continue
            except OSError:
                pass
            clients.remove(sock)  # the runner left (or asked something else)
            sock.close()


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _make_pid_1_for(client: socket.socket) -> None:
    outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        child = _fork_as_pid_1()
        if child == 0:
            client.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # pid 1 waits for what it runs (mount)
            _init_child(inner, outer, with_parent=False)
        _send(client, {"pid": child}, [outer.fileno()])
    except HolderError as exc:
        _send(client, {"error": str(exc)})
    finally:
        outer.close()
        inner.close()


def _pid_1_from_factory(timeout: float) -> tuple[int, socket.socket] | None:
    """(pid 1, the runner's end of its socket) from the zygote's factory; None without one (the runner then
    forks pid 1 itself)."""
    address = os.environ.get(FACTORY_ENV)
    if not address:
        return None
    try:
        connection = _factory_connection(address)
        connection.send(b"pid1")
        readable, _, _ = select.select([connection], [], [], timeout)
        if not readable:
            raise OSError("the namespace factory did not answer")
        data, fds, _, _ = socket.recv_fds(connection, _MESSAGE_BYTES, 1)
    except OSError:
        broken = _FACTORY_CONNECTIONS.pop(os.getpid(), None)
        if broken is not None:
            broken.close()
        return None
    answer = json.loads(data or b"{}")
    if "pid" not in answer or not fds:
        for fd in fds:
            os.close(fd)
        if answer.get("error"):
            raise HolderError(answer["error"])
        return None
    os.set_inheritable(fds[0], False)
    return int(answer["pid"]), socket.socket(fileno=fds[0])


def _factory_connection(address: str) -> socket.socket:
    connection = _FACTORY_CONNECTIONS.get(os.getpid())
    if connection is None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            connection.connect("\0" + address)  # an abstract name (an environment variable holds no NUL)
        except OSError:
            connection.close()
            raise
        _FACTORY_CONNECTIONS[os.getpid()] = connection
    return connection


def main(argv: list[str]) -> int:
    if argv[:1] == ["hold"]:
        return hold()
    if argv[:1] == ["wait-port"] and len(argv) == 3:
        return wait_port(int(argv[1]), float(argv[2]))
    if argv[:1] == ["init-master"] and len(argv) == 4:
        return init_master(int(argv[1]), argv[2], float(argv[3]))
    if argv[:1] == ["mounts"]:
        return apply_mounts(json.load(sys.stdin))
    if argv[:1] == ["factory"] and len(argv) == 2:
        return factory(int(argv[1]))
    print(__doc__, file=sys.stderr)
    return errno.EINVAL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
