"""Helper run inside a job's namespaces (standard library only; runs under any Python 3).

    ns_holder.py hold                    pid 1 of the job's pid namespace: brings `lo` up, prints "ready",
                                         reaps orphans, exits when stdin closes (the runner died) or on SIGTERM.
    ns_holder.py wait-port PORT SECONDS  exit 0 once 127.0.0.1:PORT accepts connections inside the namespace.
    ns_holder.py init-master PORT RUN_ID SECONDS
                                         wait for the ROS master, then set /run_id as roscore does (every
                                         roslaunch of the job must agree on it, or they race to set it).
    ns_holder.py mounts                  apply the data-source mount plan (JSON on stdin) in the mount namespace.

When the holder exits, the kernel kills every other process of the pid namespace: that is what guarantees a
job leaves nothing behind even if the runner is SIGKILLed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import xmlrpc.client

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


def wait_port(port: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return 0
        except OSError:
            time.sleep(0.1)
    return 1


def init_master(port: int, run_id: str, seconds: float) -> int:
    if wait_port(port, seconds) != 0:
        return 1
    master = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/")
    code, message, _ = master.setParam("/openrobomaker_runner", "/run_id", run_id)
    if code != 1:
        print(f"setting /run_id failed: {message}", file=sys.stderr)
        return 1
    return 0


def _mount(*args: str) -> None:
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


def main(argv: list[str]) -> int:
    if argv[:1] == ["hold"]:
        return hold()
    if argv[:1] == ["wait-port"] and len(argv) == 3:
        return wait_port(int(argv[1]), float(argv[2]))
    if argv[:1] == ["init-master"] and len(argv) == 4:
        return init_master(int(argv[1]), argv[2], float(argv[3]))
    if argv[:1] == ["mounts"]:
        return apply_mounts(json.load(sys.stdin))
    print(__doc__, file=sys.stderr)
    return errno.EINVAL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
