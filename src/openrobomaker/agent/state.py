"""The agent's work dir: persistent state, the report outbox and the event journal.

state.json            what runs (the last successful deployment), what was handled, the report counter
outbox/<seq>.json     reports not delivered yet (survive network loss and agent restarts)
events.jsonl          local journal of every step with this machine's timestamps
deployments/<job>/    bundle, extracted application, scripts and logs of one deployment
ros/                  ROS_HOME, ROS logs and HOME of launched processes
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

KEEP_HANDLED = 50


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class WorkDir:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.outbox = self.root / "outbox"
        self.deployments = self.root / "deployments"
        self.ros = self.root / "ros"
        for directory in (self.root, self.outbox, self.deployments, self.ros):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.state_path = self.root / "state.json"
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"seq": 0, "current": None, "handled": [], "app_process": None}

    def save(self) -> None:
        with self._lock:
            write_json_atomic(self.state_path, self.state)

    def next_seq(self) -> int:
        with self._lock:
            self.state["seq"] += 1
            seq = self.state["seq"]
            write_json_atomic(self.state_path, self.state)
        return seq

    def mark_handled(self, job_id: str) -> None:
        handled = [j for j in self.state["handled"] if j != job_id] + [job_id]
        self.state["handled"] = handled[-KEEP_HANDLED:]
        self.save()

    def is_handled(self, job_id: str) -> bool:
        return job_id in self.state["handled"]

    def deployment_dir(self, job_id: str) -> Path:
        path = self.deployments / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def journal(self, **event: Any) -> None:
        line = json.dumps({"t": time.time(), **event})
        with self._lock, open(self.root / "events.jsonl", "a") as handle:
            handle.write(line + "\n")

    def enqueue_report(self, report: dict[str, Any]) -> None:
        write_json_atomic(self.outbox / f"{report['seq']:012d}.json", report)

    def pending_reports(self) -> list[Path]:
        return sorted(self.outbox.glob("*.json"))
