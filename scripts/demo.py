#!/usr/bin/env python3
"""The quickstart demo: a real simulation job, end to end, on the embedded defaults.

Starts `openrobomaker serve` (SQLite + local object store under ./demo-data), builds the example bundles,
uploads them, creates a robot and a simulation application, runs a simulation job that records every ROS
topic, follows its logs, and lists what the job left in the output bucket. Only boto3 talks to the server,
exactly as a RoboMaker user's script would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DEMO_DATA_DIR", ROOT / "demo-data"))
PORT = int(os.environ.get("DEMO_PORT", "8421"))
ENDPOINT = f"http://127.0.0.1:{PORT}"
CLI = [sys.executable, "-m", "openrobomaker.cli"]
DURATION = int(os.environ.get("DEMO_DURATION", "30"))


def start_server() -> subprocess.Popen:
    DATA.mkdir(parents=True, exist_ok=True)
    log = open(DATA / "server.log", "ab")  # noqa: SIM115 - handed to the child, closed with it
    server = subprocess.Popen(
        [*CLI, "serve", "--data-dir", str(DATA), "--port", str(PORT)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            if httpx.get(f"{ENDPOINT}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"the server did not start; see {DATA / 'server.log'}")


def upload_bundles() -> None:
    # The job writes its logs and bags here, as into an S3 bucket the user made beforehand.
    subprocess.run([*CLI, "s3", "mb", "s3://demo-output", "--data-dir", str(DATA)], check=True)
    out = DATA / "bundles"
    subprocess.run([str(ROOT / "examples" / "build_bundles.sh"), str(out)], check=True)
    for name in ("sim_world.tar.gz", "robot_controller.tar.gz"):
        subprocess.run(
            [*CLI, "s3", "cp", str(out / name), f"s3://demo-bundles/{name}", "--data-dir", str(DATA)],
            check=True,
        )


def create_applications(rm) -> tuple[str, str]:
    suite = {"name": "ROS", "version": "Melodic"}
    for app in rm.list_robot_applications(filters=[{"name": "name", "values": ["demo-robot"]}])[
        "robotApplicationSummaries"
    ]:
        rm.delete_robot_application(application=app["arn"])
    for app in rm.list_simulation_applications(filters=[{"name": "name", "values": ["demo-world"]}])[
        "simulationApplicationSummaries"
    ]:
        rm.delete_simulation_application(application=app["arn"])
    robot = rm.create_robot_application(
        name="demo-robot",
        robotSoftwareSuite=suite,
        sources=[{"s3Bucket": "demo-bundles", "s3Key": "robot_controller.tar.gz", "architecture": "X86_64"}],
    )
    sim = rm.create_simulation_application(
        name="demo-world",
        robotSoftwareSuite=suite,
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        renderingEngine={"name": "OGRE", "version": "1.x"},
        sources=[{"s3Bucket": "demo-bundles", "s3Key": "sim_world.tar.gz", "architecture": "X86_64"}],
    )
    version = rm.create_robot_application_version(application=robot["arn"])
    return f"{robot['arn']}@{version['version']}", sim["arn"]


def run_job(rm, robot: str, sim: str) -> dict:
    robot_arn, robot_version = robot.split("@")
    job = rm.create_simulation_job(
        maxJobDurationInSeconds=DURATION,
        iamRole="arn:aws:iam::000000000000:role/DemoSimulationRole",
        outputLocation={"s3Bucket": "demo-output", "s3Prefix": "runs"},
        loggingConfig={"recordAllRosTopics": True},
        robotApplications=[
            {
                "application": robot_arn,
                "applicationVersion": robot_version,
                "launchConfig": {
                    "packageName": "robot_controller",
                    "launchFile": "controller.launch",
                    "environmentVariables": {"DEMO": "1"},
                    "streamUI": False,
                },
            }
        ],
        simulationApplications=[
            {
                "application": sim,
                "launchConfig": {"packageName": "sim_world", "launchFile": "world.launch", "streamUI": False},
            }
        ],
        tags={"demo": "quickstart"},
    )
    print(f"created {job['arn']} ({job['status']})")
    logs = subprocess.Popen([*CLI, "logs", job["arn"], "--follow", "--endpoint", ENDPOINT])
    seen = None
    while True:
        described = rm.describe_simulation_job(job=job["arn"])
        if described["status"] != seen:
            seen = described["status"]
            print(f"--- status: {seen}", flush=True)
        if seen in ("Completed", "Failed", "Canceled", "Terminated"):
            break
        time.sleep(1)
    logs.wait(30)
    return described


def main() -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    # The server's own store must exist before the upload, so start it first.
    server = start_server()
    try:
        upload_bundles()
        rm = boto3.client("robomaker", endpoint_url=ENDPOINT, region_name="us-east-1")
        robot, sim = create_applications(rm)
        job = run_job(rm, robot, sim)
        print(
            f"job ended {job['status']}"
            + (f" ({job.get('failureCode')}: {job.get('failureReason')})" if job.get("failureCode") else "")
        )
        output = DATA / "objects" / "demo-output"
        files = sorted(
            p.relative_to(output) for p in output.rglob("*") if p.is_file() and ".openrobomaker" not in str(p)
        )
        print("output files:")
        for path in files:
            print(f"  s3://demo-output/{path}")
        return 0 if job["status"] == "Completed" else 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        shutil.rmtree(DATA / "bundles", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
