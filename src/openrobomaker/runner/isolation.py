"""Each run in its own network, mount and pid namespaces, so two jobs on one host can both use port 11311.

One holder process (ns_holder.py) is started in fresh namespaces with `unshare`; every job process is then
started with `nsenter --target <holder>` so that the runner itself stays in the host's network namespace
(it needs the object store and the control plane on the host's loopback).

* `netns`  — as root: `unshare --net --mount --pid --fork --kill-child`.
* `userns` — unprivileged: the same inside a new user namespace (`--user --map-root-user`).
* `none`   — no isolation; the ROS master gets a free port instead of 11311.
* `auto`   — netns when root and allowed, else userns when the kernel allows it, else the run fails.

Cleanup is guaranteed by the kernel: the holder is pid 1 of the job's pid namespace, so when it dies every
process of the job dies. The holder dies when the runner stops it, when its stdin (a pipe from the runner)
closes, or — through setpriv's pdeathsig and unshare's --kill-child — when the runner is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.runner import ns_holder
from openrobomaker.runner.failures import INTERNAL_SERVICE_ERROR, JobFailure
from openrobomaker.runner.procs import pdeathsig_prefix

log = logging.getLogger(__name__)

HOLDER_SCRIPT = str(Path(__file__).with_name("ns_holder.py"))
ROS_MASTER_PORT = 11311
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
_PROBE_TIMEOUT = 10.0
_READY_TIMEOUT = 15.0

HOST_REQUIREMENTS = (
    "Each simulation job runs in its own network namespace. This host allows neither: run the runner as "
    "root (CAP_SYS_ADMIN), or enable unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
    "kernel.unprivileged_userns_clone=1 where that sysctl exists, and on Ubuntu 23.10+ "
    "kernel.apparmor_restrict_unprivileged_userns=0), with util-linux (unshare, nsenter) installed; "
    "or set the executor's isolation to 'none' (one job per host)."
)


def _tool(name: str) -> str | None:
    return shutil.which(name, path=_TOOL_PATH)


@dataclass(frozen=True)
class DataSourceMount:
    source: Path  # on the host, in workDir
    target: str  # inside the job's mount namespace


class Isolation:
    """No isolation: processes run directly on the host."""

    mode = "none"

    def __init__(self) -> None:
        self.master_port = _free_port()

    @property
    def isolated(self) -> bool:
        return False

    def start(self, namespace_dir: Path) -> None:
        del namespace_dir

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        del cwd
        return list(argv)

    def wait_for_port(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def init_ros_master(self, port: int, run_id: str, timeout: float) -> bool:
        """Wait for the ROS master and give it the run's /run_id."""
        return ns_holder.init_master(port, run_id, timeout) == 0

    def mount_data_sources(self, mounts: list[DataSourceMount]) -> bool:
        del mounts
        return False

    def stop(self) -> None:
        pass


class NamespaceIsolation(Isolation):
    def __init__(self, user_namespace: bool):
        self.user_namespace = user_namespace
        self.mode = "userns" if user_namespace else "netns"
        self.master_port = ROS_MASTER_PORT
        self.holder: subprocess.Popen | None = None
        self.holder_pid: int | None = None
        self.namespace_dir: Path | None = None

    @property
    def isolated(self) -> bool:
        return True

    def _unshare_argv(self) -> list[str]:
        unshare = _tool("unshare") or "unshare"
        user = ["--user", "--map-root-user"] if self.user_namespace else []
        return [unshare, *user, "--net", "--mount", "--pid", "--fork", "--kill-child"]

    def start(self, namespace_dir: Path) -> None:
        self.namespace_dir = namespace_dir
        argv = pdeathsig_prefix() + self._unshare_argv() + ["--", sys.executable, "-I", HOLDER_SCRIPT, "hold"]
        stderr_path = namespace_dir / "holder.stderr"
        with open(stderr_path, "ab") as stderr:
            self.holder = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                env={"PATH": _TOOL_PATH, "LANG": "C.UTF-8"},
            )
        if not self._await_ready():
            detail = stderr_path.read_text(errors="replace").strip()[-500:]
            self.stop()
            raise JobFailure(
                INTERNAL_SERVICE_ERROR, f"could not create the job's namespaces ({self.mode}): {detail}"
            )
        self.holder_pid = _child_of(self.holder.pid)
        if self.holder_pid is None:
            self.stop()
            raise JobFailure(INTERNAL_SERVICE_ERROR, "the namespace holder process disappeared")
        log.info("namespaces ready (%s): holder pid %s", self.mode, self.holder_pid)

    def _await_ready(self) -> bool:
        assert self.holder is not None and self.holder.stdout is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], _READY_TIMEOUT)
        line = self.holder.stdout.readline() if ready else b""
        self.holder.stdout.close()  # the holder prints nothing after "ready"
        return line.strip() == b"ready"

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        assert self.holder_pid is not None, "namespaces not started"
        nsenter = _tool("nsenter") or "nsenter"
        user = ["--user", "--preserve-credentials"] if self.user_namespace else []
        target = ["--target", str(self.holder_pid), *user, "--net", "--mount", "--pid", f"--wd={cwd}"]
        return [nsenter, *target, "--", *argv]

    def run_inside(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = 30.0):
        return subprocess.run(
            self.wrap(argv, Path("/")),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env={"PATH": _TOOL_PATH, "LANG": "C.UTF-8"},
            check=False,
        )

    def wait_for_port(self, port: int, timeout: float) -> bool:
        result = self.run_inside(
            [sys.executable, "-I", HOLDER_SCRIPT, "wait-port", str(port), str(timeout)], timeout=timeout + 10
        )
        return result.returncode == 0

    def init_ros_master(self, port: int, run_id: str, timeout: float) -> bool:
        argv = [sys.executable, "-I", HOLDER_SCRIPT, "init-master", str(port), run_id, str(timeout)]
        return self.run_inside(argv, timeout=timeout + 10).returncode == 0

    def mount_data_sources(self, mounts: list[DataSourceMount]) -> bool:
        """Bind each data source read-only at its target inside the job's mount namespace only."""
        if not mounts:
            return True
        assert self.namespace_dir is not None
        plan = {
            "stash": str(self.namespace_dir / "host-opt"),
            "binds": [{"source": str(m.source), "target": m.target} for m in mounts],
        }
        result = self.run_inside(
            [sys.executable, "-I", HOLDER_SCRIPT, "mounts"], stdin=json.dumps(plan).encode()
        )
        if result.returncode != 0:
            log.warning("data sources not mounted: %s", result.stderr.decode(errors="replace").strip())
            return False
        return True

    def stop(self) -> None:
        if self.holder is None:
            return
        if self.holder.stdin is not None:
            with contextlib.suppress(OSError):
                self.holder.stdin.close()  # the holder exits on EOF
        try:
            self.holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.holder.pid, 9)
            self.holder.wait(timeout=5)
        self.holder = None


def _child_of(parent_pid: int) -> int | None:
    """The (host) pid of the process `unshare --fork` started: pid 1 of the new pid namespace."""
    children_file = Path(f"/proc/{parent_pid}/task/{parent_pid}/children")
    try:
        children = children_file.read_text().split()
        if children:
            return int(children[0])
    except OSError:
        pass
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; the ppid is the second field after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent_pid:
            return int(entry.name)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _namespaces_work(user_namespace: bool) -> tuple[bool, str]:
    unshare = _tool("unshare")
    if unshare is None or _tool("nsenter") is None:
        return False, "util-linux unshare/nsenter not found"
    user = ["--user", "--map-root-user"] if user_namespace else []
    argv = [unshare, *user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--", "/bin/true"]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, result.stderr.decode(errors="replace").strip()


def choose_isolation(requested: str) -> Isolation:
    """The isolation to use for `requested` (auto | netns | userns | none), or a JobFailure saying why not."""
    if requested == "none":
        return Isolation()
    attempts: list[tuple[bool, str]] = []
    if requested in ("auto", "netns") and os.geteuid() == 0:
        attempts.append((False, "netns"))
    if requested in ("auto", "userns"):
        attempts.append((True, "userns"))
    details = []
    for user_namespace, name in attempts:
        works, detail = _namespaces_work(user_namespace)
        if works:
            return NamespaceIsolation(user_namespace)
        details.append(f"{name}: {detail or 'not permitted'}")
    if requested == "netns" and os.geteuid() != 0:
        details.append("netns: the runner is not root")
    raise JobFailure(INTERNAL_SERVICE_ERROR, f"{HOST_REQUIREMENTS} ({'; '.join(details)})")
