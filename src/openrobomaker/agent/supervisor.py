"""Keeps the deployed application running, as Greengrass kept a long-lived Lambda: restarted when it dies,
replaced by the next deployment. Each launch gets its own ROS master port, so several agents on one machine
(a simulated fleet) never share a master.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrobomaker.bundles import BundleOverlay, ExtractedBundle, sourced_argv
from openrobomaker.procfs import start_time

log = logging.getLogger("openrobomaker.agent.supervisor")

# Launched processes get this PATH and nothing of the agent's own environment (a venv PATH, PYTHONPATH
# or VIRTUAL_ENV would make `#!/usr/bin/env python3` nodes lose rospy; DESIGN pitfalls).
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_ROS_PACKAGE_PATH = "/usr/share"
RESTART_BACKOFF_MAX = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bundle_from_record(record: dict[str, Any]) -> ExtractedBundle:
    overlays = [
        BundleOverlay(Path(o["prefix"]), Path(o["setup_script"]) if o.get("setup_script") else None)
        for o in record["overlays"]
    ]
    return ExtractedBundle(record["format"], overlays, [Path(p) for p in record["ros_package_roots"]])


def bundle_record(bundle: ExtractedBundle) -> dict[str, Any]:
    return {
        "format": bundle.format,
        "overlays": [
            {"prefix": str(o.prefix), "setup_script": str(o.setup_script) if o.setup_script else None}
            for o in bundle.overlays
        ],
        "ros_package_roots": [str(p) for p in bundle.ros_package_roots],
    }


def clean_environment(ros_dir: Path, job_id: str, bundle: ExtractedBundle, extra: dict[str, str]) -> dict:
    home = ros_dir / "home"
    ros_home = ros_dir / "ros_home" / job_id  # RoboMaker's ROS_HOME was per deployment (spec §4.5)
    for directory in (home, ros_home):
        directory.mkdir(parents=True, exist_ok=True)
    roots = [str(p) for p in bundle.ros_package_roots]
    env = {
        "PATH": CLEAN_PATH,
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "ROS_HOME": str(ros_home),
        "ROS_LOG_DIR": str(ros_home / "log"),
        "ROS_PACKAGE_PATH": ":".join([*roots, SYSTEM_ROS_PACKAGE_PATH]),
        "ROS_IP": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


@dataclass
class App:
    """One application as launched: enough to launch it again after a crash or an agent restart."""

    job_id: str
    bundle: dict[str, Any]  # bundle_record()
    package: str
    launch_file: str
    suite: str
    env: dict[str, str]
    log_path: str
    cwd: str
    extra: dict[str, Any] = field(default_factory=dict)

    def argv(self, port: int) -> list[str]:
        if self.suite == "ROS2":
            program = ["ros2", "launch", self.package, self.launch_file]
        else:
            program = ["roslaunch", "-p", str(port), self.package, self.launch_file]
        return sourced_argv(bundle_from_record(self.bundle), program)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def kill_group(pid: int, start: str | None, grace: float = 10.0) -> None:
    """Stop a launched process group: SIGINT (roslaunch shuts its nodes down), then SIGTERM, SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        if start is not None and start_time(pid) != start:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if start_time(pid) is None:
                return
            time.sleep(0.1)


class Supervisor:
    def __init__(self, on_event, on_process):
        self._on_event = on_event  # (event name, App, detail) -> None
        self._on_process = on_process  # (pid, start) or None -> None, persisted by the agent
        self._lock = threading.RLock()
        self._app: App | None = None
        self._process: subprocess.Popen | None = None
        self._port = 0
        self._restarts = 0
        self._next_restart = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="app-supervisor", daemon=True)

    def start_thread(self) -> None:
        self._thread.start()

    @property
    def app(self) -> App | None:
        return self._app

    @property
    def master_port(self) -> int:
        return self._port

    def process_alive(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def launch(self, app: App | None) -> subprocess.Popen | None:
        """Stop what runs and start `app` (None: run nothing)."""
        with self._lock:
            self._stop_process()
            self._app = app
            self._restarts = 0
            if app is not None:
                self._start_process()
            return self._process

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            self._stop_process()

    def _start_process(self) -> None:
        app = self._app
        self._port = free_port()
        env = {**app.env, "ROS_MASTER_URI": f"http://127.0.0.1:{self._port}"}
        with open(app.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                app.argv(self._port),
                cwd=app.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._on_process((self._process.pid, start_time(self._process.pid)))
        self._on_event("launched", app, {"pid": self._process.pid, "masterPort": self._port})

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            kill_group(process.pid, start_time(process.pid))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if process is not None:
            self._on_process(None)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                if self._app is None or self._process is None or self._process.poll() is None:
                    continue
                now = time.monotonic()
                if self._next_restart == 0.0:
                    # roslaunch exits 0 even when a required node crashed: any exit of a deployed app is a
                    # death to recover from, as Greengrass restarted a pinned Lambda.
                    code = self._process.returncode
                    delay = min(RESTART_BACKOFF_MAX, 2.0**self._restarts)
                    self._next_restart = now + delay
                    self._on_event("died", self._app, {"exitCode": code, "restartIn": delay})
                    continue
                if now < self._next_restart:
                    continue
                self._next_restart = 0.0
                self._restarts += 1
                self._start_process()
