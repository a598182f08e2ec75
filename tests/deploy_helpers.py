"""Fleets of real agent processes on this machine, and a ROS 1 robot application with pre/post scripts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx

from helpers import DEV_KEY, REGION, stop_process
from openrobomaker.agent.client import sign
from openrobomaker.agent.supervisor import kill_group
from openrobomaker.objectstore import ObjectStoreConfig, open_store
from ros_bundles import _add, node_launch

PACKAGE = "hello_robot"

HELLO_NODE = """#!/usr/bin/env python3
import os
import rospy
from std_msgs.msg import String

rospy.init_node("hello")
print("hello up", "GREETING=%s" % os.environ.get("GREETING"),
      "TAG=%s" % os.environ.get("AWS_ROBOMAKER_ROBOT_TAG_KEY_site"),
      "MASTER=%s" % os.environ.get("ROS_MASTER_URI"), flush=True)
pub = rospy.Publisher("/hello", String, queue_size=10)
rate = rospy.Rate(5)
while not rospy.is_shutdown():
    pub.publish(String(data=os.environ.get("GREETING", "")))
    rate.sleep()
"""

SCRIPTS = {
    "pre.sh": '#!/bin/bash\necho "pre-launch GREETING=$GREETING master=$ROS_MASTER_URI"\nsleep ${PRE_SLEEP:-0}\n',
    "post.sh": "#!/bin/bash\necho \"post-launch $(rosnode list 2>&1 | tr '\\n' ' ')\"\n",
    "bad_pre.sh": "#!/bin/bash\necho 'pre-launch refuses' >&2\nexit 3\n",
    "bad_post.sh": "#!/bin/bash\necho 'post-launch check failed' >&2\nexit 4\n",
}


def hello_bundle(path: Path, marker: str = "v1") -> Path:
    """A plain ROS 1 bundle: package hello_robot, node hello, launch hello.launch, scripts in the package."""
    with tarfile.open(path, "w:gz") as tar:
        from ros_bundles import PACKAGE_XML

        _add(tar, f"{PACKAGE}/package.xml", PACKAGE_XML.format(name=PACKAGE).encode())
        _add(tar, f"{PACKAGE}/CMakeLists.txt", f"project({PACKAGE})\n".encode())
        _add(tar, f"{PACKAGE}/scripts/hello", HELLO_NODE.encode(), 0o755)
        _add(tar, f"{PACKAGE}/launch/hello.launch", node_launch(PACKAGE, ("hello", "hello")).encode())
        _add(tar, f"{PACKAGE}/VERSION", marker.encode())
        for name, body in SCRIPTS.items():
            _add(tar, f"{PACKAGE}/{name}", body.encode(), 0o755)
    return path


def object_store(server):
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket("bundles")
    return store


def robot_application(rm, store, tmp_path: Path, name: str, architectures=("X86_64",), marker="v1") -> dict:
    """A robot application with version 1 whose bundle is the hello bundle; returns {arn, key}."""
    key = f"{name}/bundle.tar.gz"
    store.upload(hello_bundle(tmp_path / f"{name}.tar.gz", marker), "bundles", key)
    sources = [{"s3Bucket": "bundles", "s3Key": key, "architecture": arch} for arch in architectures]
    app = rm.create_robot_application(
        name=name, sources=sources, robotSoftwareSuite={"name": "ROS", "version": "Melodic"}
    )
    rm.create_robot_application_version(application=app["arn"])
    return {"arn": app["arn"], "key": key}


def launch_config(**overrides) -> dict:
    config = {
        "packageName": PACKAGE,
        "launchFile": "hello.launch",
        "preLaunchFile": "pre.sh",
        "postLaunchFile": "post.sh",
        "environmentVariables": {"GREETING": "hi"},
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def app_config(app: dict, version: str = "1", **launch) -> list[dict]:
    return [
        {"application": app["arn"], "applicationVersion": version, "launchConfig": launch_config(**launch)}
    ]


def signed_post(endpoint: str, path: str, payload: dict, key=DEV_KEY, region: str = REGION) -> httpx.Response:
    url = endpoint + path
    body = json.dumps(payload).encode()
    return httpx.post(url, content=body, headers=sign("POST", url, body, key[0], key[1], region), timeout=30)


def robot_credentials(endpoint: str, robot_arn: str) -> dict:
    response = signed_post(endpoint, "/_agent/v1/credentials", {"robot": robot_arn})
    response.raise_for_status()
    return response.json()


@dataclass
class AgentProcess:
    robot_arn: str
    work_dir: Path
    endpoint: str
    process: subprocess.Popen | None = None

    @property
    def credentials_path(self) -> Path:
        return self.work_dir.parent / f"{self.work_dir.name}-robot.json"

    def start(self) -> AgentProcess:
        if not self.credentials_path.exists():
            self.credentials_path.write_text(json.dumps(robot_credentials(self.endpoint, self.robot_arn)))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "openrobomaker.agent", "--endpoint", self.endpoint]
        command += ["--credentials", str(self.credentials_path), "--work-dir", str(self.work_dir)]
        with open(self.work_dir.parent / f"{self.work_dir.name}.out", "ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """A crash: SIGKILL the agent (its application keeps running, as on a robot whose agent died)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20)
        self.kill_application()

    def kill_application(self) -> None:
        """What the agent left running (killed agent): SIGINT first, so that roslaunch stops the master
        and nodes it started in their own sessions; a bare SIGKILL would leave them behind."""
        state = self.state()
        leftover = state.get("app_process") if state else None
        if leftover:
            kill_group(int(leftover[0]), leftover[1], grace=5.0)

    def state(self) -> dict:
        path = self.work_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def events(self) -> list[dict]:
        path = self.work_dir / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def reports(self, job_id: str) -> list[dict]:
        return [e for e in self.events() if e.get("job") == job_id and e["event"] == "report"]

    def app_log(self, job_id: str) -> str:
        path = self.work_dir / "deployments" / job_id / "app.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def fleet_of_agents(
    server, rm, tmp_path: Path, name: str, count: int, architecture: str = "X86_64", tags=None
):
    """A fleet with `count` registered robots, each with its own agent process and work dir."""
    fleet = rm.create_fleet(name=name)["arn"]
    agents = []
    try:
        for index in range(count):
            agents.append(add_robot(server, rm, tmp_path, fleet, f"{name}-r{index}", architecture, tags))
        yield fleet, agents
    finally:
        for agent in agents:
            agent.stop()


def add_robot(
    server, rm, tmp_path, fleet, name, architecture="X86_64", tags=None, start=True
) -> AgentProcess:
    robot = rm.create_robot(
        name=name, architecture=architecture, greengrassGroupId=f"group-{name}", tags=tags or {"site": name}
    )["arn"]
    rm.register_robot(fleet=fleet, robot=robot)
    agent = AgentProcess(robot, tmp_path / name, server.endpoint)
    return agent.start() if start else agent


def wait_for_job(rm, job_arn: str, statuses=("Succeeded", "Failed", "Canceled"), timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = rm.describe_deployment_job(job=job_arn)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_arn} still {job['status']}: {job.get('robotDeploymentSummary')}")
        time.sleep(0.3)


def wait_until(condition, timeout: float = 120, interval: float = 0.3, what: str = "the condition"):
    """Poll `condition()` until it returns something truthy (returned); a generous deadline, not a sleep."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)
    return value


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def deploying_intervals(agents: list[AgentProcess], job: str) -> dict[str, tuple[float, float]]:
    """Per robot, from its own journal: when it began (Validating) and ended (its outcome) this job."""
    intervals = {}
    for agent in agents:
        reports = agent.reports(job)
        if reports:
            begin = min(r["t"] for r in reports)
            end = (
                max(r["t"] for r in reports if r.get("outcome"))
                if any(r.get("outcome") for r in reports)
                else None
            )
            intervals[agent.robot_arn] = (begin, end)
    return intervals


def signed_get(endpoint: str, path: str, query: dict, key, headers: dict | None = None) -> httpx.Response:
    """A GET on the agent channel signed with `key` (a robot's), redirects not followed."""
    url = f"{endpoint}{path}?{urlencode(query, quote_via=quote, safe='')}"
    signed = sign("GET", url, b"", key[0], key[1], REGION) | (headers or {})
    return httpx.get(url, headers=signed, timeout=30)
