"""Each run in its own network, mount and pid namespaces, so two jobs on one host can both use port 11311.

Pid 1 of the job is forked from the runner (ns_holder.ForkedHolder: no new interpreter; as root directly
into a new pid namespace, in user namespace mode below a holder that makes the user namespace first); it
has fresh network and mount namespaces and answers the runner's requests (port waits, the
master's /run_id, a listening socket for the API forwarder, data-source mounts). Every job process is
started with `nsenter --target <holder>` so that the runner itself stays in the host's network namespace
(it needs the object store and the control plane on the host's loopback).

* `netns`  — as root: new network, mount and pid namespaces.
* `userns` — unprivileged: the same inside a new user namespace (root inside maps to the runner's uid).
* `none`   — no isolation; the ROS master gets a free port instead of 11311.
* `auto`   — netns when root and allowed, else userns when the kernel allows it, else the run fails.

Cleanup is guaranteed by the kernel: the holder is pid 1 of the job's pid namespace, so when it dies every
process of the job dies. The holder dies when the runner kills it or hangs up its socket, or — through a
chain of parent-death signals — when the runner is SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openrobomaker.runner import ns_holder
from openrobomaker.runner.failures import INTERNAL_SERVICE_ERROR, JobFailure

log = logging.getLogger(__name__)

HOLDER_SCRIPT = str(Path(__file__).with_name("ns_holder.py"))
ROS_MASTER_PORT = 11311
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
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

    def stop(self, wait: bool = True) -> None:
        """End what the job's processes run in; wait=False leaves the waiting to wait_stopped()."""
        del wait

    def wait_stopped(self) -> None:
        """Until what stop() ended is gone."""

    def job_pids(self) -> list[int] | None:
        """Where the job's processes can be, for the marker searches; None: anywhere on the host."""
        return None


class NamespaceIsolation(Isolation):
    def __init__(self, user_namespace: bool, holder: ns_holder.ForkedHolder | None = None):
        self.user_namespace = user_namespace
        self.mode = "userns" if user_namespace else "netns"
        self.master_port = ROS_MASTER_PORT
        self.holder = holder
        self.ending: ns_holder.ForkedHolder | None = None  # killed by stop(wait=False), not yet waited for
        self.namespace_dir: Path | None = None
        self.pid_namespace: str | None = None  # e.g. "pid:[4026532301]", read while the holder lives

    @property
    def isolated(self) -> bool:
        return True

    @property
    def holder_pid(self) -> int | None:
        return self.holder.pid if self.holder is not None else None

    def start(self, namespace_dir: Path) -> None:
        self.namespace_dir = namespace_dir
        if self.holder is None:  # choose_isolation normally hands over the holder its probe created
            try:
                self.holder = ns_holder.ForkedHolder(self.user_namespace, _READY_TIMEOUT)
            except (OSError, ns_holder.HolderError) as exc:
                raise JobFailure(
                    INTERNAL_SERVICE_ERROR, f"could not create the job's namespaces ({self.mode}): {exc}"
                ) from exc
        try:
            self.pid_namespace = os.readlink(f"/proc/{self.holder_pid}/ns/pid")
        except OSError:
            self.pid_namespace = None  # the marker searches then read every process
        log.info("namespaces ready (%s): holder pid %s", self.mode, self.holder_pid)

    def job_pids(self) -> list[int] | None:
        """Every process in the job's pid namespace. Each job process is started by nsenter into it and
        cannot leave it (orphans go to its pid 1); the nsenter leaders themselves, in the host's namespace,
        are added by their JobProcess. So the job's processes are descendants of the runner's children or
        of that pid 1: walking the process tree down from them reads a few files per job process, where
        reading every process on the host (one readlink each) cost milliseconds per call on a busy host."""
        if self.pid_namespace is None:
            return None
        roots = _children(os.getpid())
        if roots is None:
            return self._scan_every_process()
        if self.holder_pid is not None:
            roots.append(self.holder_pid)
        return [pid for pid in _descendants(roots) if self._in_job_namespace(pid)]

    def _in_job_namespace(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == self.pid_namespace
        except OSError:  # gone, or not ours to read (another user's process: not the job's)
            return False

    def _scan_every_process(self) -> list[int]:
        """The same without /proc/<pid>/task/<tid>/children (kernels built without CONFIG_PROC_CHILDREN)."""
        return [
            int(entry)
            for entry in os.listdir("/proc")
            if entry.isdigit() and self._in_job_namespace(int(entry))
        ]

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        assert self.holder_pid is not None, "namespaces not started"
        nsenter = _tool("nsenter") or "nsenter"
        user = ["--user", "--preserve-credentials"] if self.user_namespace else []
        target = ["--target", str(self.holder_pid), *user, "--net", "--mount", "--pid", f"--wd={cwd}"]
        return [nsenter, *target, "--", *argv]

    def _ask(self, message: dict, timeout: float) -> bool:
        assert self.holder is not None, "namespaces not started"
        try:
            return bool(self.holder.request(message, timeout + 5).get("ok"))
        except (OSError, ValueError, ns_holder.HolderError) as exc:
            log.warning("namespace holder request %s failed: %s", message.get("op"), exc)
            return False

    def wait_for_port(self, port: int, timeout: float) -> bool:
        return self._ask({"op": "wait-port", "port": port, "timeout": timeout}, timeout)

    def init_ros_master(self, port: int, run_id: str, timeout: float) -> bool:
        return self._ask({"op": "init-master", "port": port, "run_id": run_id, "timeout": timeout}, timeout)

    def listen_inside(self, port: int) -> socket.socket:
        """A listening TCP socket on the job's own loopback (the runner stays in the host's namespace)."""
        assert self.holder is not None, "namespaces not started"
        return self.holder.listen(port)

    def mount_data_sources(self, mounts: list[DataSourceMount]) -> bool:
        """Bind each data source read-only at its target inside the job's mount namespace only."""
        if not mounts:
            return True
        assert self.namespace_dir is not None
        plan = {
            "stash": str(self.namespace_dir / "host-opt"),
            "binds": [{"source": str(m.source), "target": m.target} for m in mounts],
        }
        if not self._ask({"op": "mounts", "plan": plan}, 30.0):
            log.warning("data sources not mounted")
            return False
        return True

    def stop(self, wait: bool = True) -> None:
        """End the namespaces: pid 1 is killed, and with it every process still in the job."""
        if self.holder is None:
            return
        self.holder.kill(wait)
        self.ending, self.holder = (None if wait else self.holder), None

    def wait_stopped(self) -> None:
        """Until pid 1 is gone: its exit (the kernel ending the namespaces and what is left in them) takes
        milliseconds of wall time on a busy host, which the runner need not spend holding its turn."""
        if self.ending is not None:
            self.ending.wait()
            self.ending = None


def _children(pid: int) -> list[int] | None:
    """The children of every thread of `pid` ([] when it is gone), or None when the kernel has no
    `children` files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                children.extend(int(child) for child in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return children


def _descendants(roots: list[int]) -> list[int]:
    """`roots` and everything below them (a process that exits meanwhile is skipped with its subtree)."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(_children(pid) or [])
    return sorted(seen)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _try_namespaces(user_namespace: bool) -> tuple[ns_holder.ForkedHolder | None, str]:
    """The probe is the real thing: create the job's namespaces; keep them when it works."""
    if _tool("nsenter") is None:
        return None, "util-linux nsenter not found"
    try:
        return ns_holder.ForkedHolder(user_namespace, _READY_TIMEOUT), ""
    except (OSError, ns_holder.HolderError) as exc:
        return None, str(exc)


@dataclass
class PreparedIsolation:
    """A job's namespaces made before its spec is known (an idle runner's), or why they could not be."""

    requested: str
    isolation: Isolation | None = None
    failure: JobFailure | None = None

    def discard(self) -> None:
        if self.isolation is not None:
            self.isolation.stop()
            self.isolation = None


def prepare_isolation(requested: str) -> PreparedIsolation:
    """choose_isolation, with its failure kept to be reported once the run has a reporter."""
    try:
        return PreparedIsolation(requested, isolation=choose_isolation(requested))
    except JobFailure as failure:
        return PreparedIsolation(requested, failure=failure)
    except Exception as exc:
        log.exception("creating the job's namespaces failed")
        return PreparedIsolation(
            requested, failure=JobFailure(INTERNAL_SERVICE_ERROR, f"Cannot isolate the job: {exc}")
        )


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
        holder, detail = _try_namespaces(user_namespace)
        if holder is not None:
            return NamespaceIsolation(user_namespace, holder)
        details.append(f"{name}: {detail or 'not permitted'}")
    if requested == "netns" and os.geteuid() != 0:
        details.append("netns: the runner is not root")
    raise JobFailure(INTERNAL_SERVICE_ERROR, f"{HOST_REQUIREMENTS} ({'; '.join(details)})")
