"""Simulation jobs that really run: real ROS 1 launches through the runner, driven by the real boto3 client.

Each test uploads small ROS bundles into the server's local object store, creates the applications and a
job, and checks what a RoboMaker user relies on: status transitions, failure codes, logs, files in the
output bucket, messages in the recorded bag, and that nothing of a job is left running afterwards.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from helpers import running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store
from ros_bundles import (
    BOTO3_SELF_TAG,
    CRASHER,
    LISTENER,
    SELF_TAG_AND_CANCEL,
    TALKER,
    node_launch,
    ros_package_bundle,
)

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not Path("/usr/bin/roslaunch").exists(), reason="ROS 1 (ros-base) is not installed"),
]

ROLE = "arn:aws:iam::000000000000:role/RoboMakerJobRole"
TERMINAL = {"Completed", "Failed", "Canceled", "Terminated"}


@pytest.fixture(scope="module")
def ros_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ros-server")
    with running_server({"limits": {"simulation_units": 64}}, data_dir=directory) as srv:
        yield srv


@pytest.fixture(scope="module")
def store(ros_server):
    objects = open_store(ObjectStoreConfig(kind="local", root=str(ros_server.data_dir / "objects")))
    for bucket in ("bundles", "outputs", "datasets"):
        objects.create_bucket(bucket)
    return objects


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, store):
    """The package `chatter` with talker/listener/crasher nodes and one launch file per scenario."""
    out = tmp_path_factory.mktemp("bundles")
    launches = {
        "talker.launch": node_launch("chatter", ("talker", "talker.py")),
        "listener.launch": node_launch("chatter", ("listener", "listener.py")),
        "crash.launch": node_launch("chatter", ("crasher", "crasher.py")),
        "verdict.launch": node_launch("chatter", ("verdict", "verdict.py")),
        "boto3_tag.launch": node_launch("chatter", ("boto3_tag", "boto3_tag.py")),
    }
    nodes = {
        "talker.py": TALKER,
        "listener.py": LISTENER,
        "crasher.py": CRASHER,
        "verdict.py": SELF_TAG_AND_CANCEL,
        "boto3_tag.py": BOTO3_SELF_TAG,
    }
    path = ros_package_bundle(out / "chatter.tar.gz", "chatter", nodes, launches)
    store.upload(path, "bundles", "chatter.tar.gz")
    return out


def create_apps(rm, key: str = "chatter.tar.gz") -> dict:
    suffix = uuid.uuid4().hex[:8]
    suite = {"name": "ROS", "version": "Melodic"}
    source = [{"s3Bucket": "bundles", "s3Key": key, "architecture": "X86_64"}]
    robot = rm.create_robot_application(name=f"robot-{suffix}", robotSoftwareSuite=suite, sources=source)
    sim = rm.create_simulation_application(
        name=f"sim-{suffix}",
        robotSoftwareSuite=suite,
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        sources=source,
    )
    return {"robot": robot["arn"], "sim": sim["arn"]}


def create_job(
    rm,
    apps: dict,
    *,
    robot_launch="listener.launch",
    sim_launch="talker.launch",
    duration=8,
    robot_version=None,
    **extra,
) -> str:
    robot_config = {
        "application": apps["robot"],
        "launchConfig": {
            "packageName": "chatter",
            "launchFile": robot_launch,
            "environmentVariables": {"GREETING": "from-robot"},
            "streamUI": False,
        },
    }
    if robot_version:
        robot_config["applicationVersion"] = robot_version
    request = {
        "maxJobDurationInSeconds": duration,
        "iamRole": ROLE,
        "outputLocation": {"s3Bucket": "outputs", "s3Prefix": "runs"},
        "robotApplications": [robot_config],
        "simulationApplications": [
            {
                "application": apps["sim"],
                "launchConfig": {
                    "packageName": "chatter",
                    "launchFile": sim_launch,
                    "environmentVariables": {"GREETING": "from-sim"},
                },
            }
        ],
    }
    request.update(extra)
    return rm.create_simulation_job(**request)["arn"]


def wait_for(rm, arn: str, statuses: set[str], timeout: float = 90) -> tuple[dict, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rm.describe_simulation_job(job=arn)
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in statuses:
            return job, seen
        if job["status"] in TERMINAL:
            raise AssertionError(
                f"job ended {job['status']} {job.get('failureCode')}: {job.get('failureReason')}"
            )
        time.sleep(0.2)
    raise AssertionError(f"job did not reach {statuses} in {timeout}s; saw {seen}")


def job_processes(job_id: str) -> list[int]:
    """Processes whose command line or environment mentions the job (runner, roscore, nodes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                job_id.encode() in (entry / "cmdline").read_bytes()
                or job_id.encode() in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def assert_nothing_left(job_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while job_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_processes(job_id) == [], f"processes of {job_id} still running"


def output_keys(store, arn: str) -> list[str]:
    job_id = arn.rsplit("/", 1)[1]
    return [info.key for info in store.list("outputs", f"runs/{job_id}/")]


def test_job_runs_to_max_duration_with_logs_and_bag(ros_server, store, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, loggingConfig={"recordAllRosTopics": True}, duration=8)
    running, seen = wait_for(rm, arn, {"Running"})
    assert seen[0] in ("Pending", "Preparing")
    assert "Preparing" in seen or seen[0] == "Pending"
    assert running["lastStartedAt"] is not None
    job, more = wait_for(rm, arn, {"Completed"}, timeout=60)
    assert job["simulationTimeMillis"] >= 7000
    assert "failureCode" not in job
    job_id = arn.rsplit("/", 1)[1]
    keys = output_keys(store, arn)
    run_ids = {key.split("/")[2] for key in keys}
    assert len(run_ids) == 1, keys
    logs = [k for k in keys if "/ros-logs/" in k]
    bags = [k for k in keys if "/ros-bags/" in k and k.endswith(".bag")]
    assert logs and bags, keys
    text = "".join(store.open("outputs", k).read().decode(errors="replace") for k in logs)
    assert "talker said hello" in text
    assert f"talker up, job {job_id} greeting from-sim" in text
    assert "listener heard hello" in text
    from rosbags.rosbag1 import Reader

    local_bag = bundles / f"{job_id}.bag"
    store.download("outputs", bags[0], local_bag)
    with Reader(local_bag) as reader:
        topics = {conn.topic: conn.msgcount for conn in reader.connections}
    # The talker publishes at 10 Hz for most of the 8 s; how many land depends on the host's load.
    assert topics.get("/chatter", 0) > 5, topics
    assert_nothing_left(job_id)


def test_two_jobs_run_at_once_on_the_same_ports(ros_server, store, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    first = create_job(rm, apps, duration=20)
    second = create_job(rm, apps, duration=20)
    wait_for(rm, first, {"Running"})
    wait_for(rm, second, {"Running"})
    time.sleep(3)  # both masters on 11311, both talkers publishing: neither may fail
    statuses = {rm.describe_simulation_job(job=arn)["status"] for arn in (first, second)}
    assert statuses == {"Running"}
    for arn in (first, second):
        rm.cancel_simulation_job(job=arn)
    for arn in (first, second):
        job, _ = wait_for(rm, arn, {"Canceled"}, timeout=60)
        assert_nothing_left(arn.rsplit("/", 1)[1])


def test_crash_with_fail_behavior_fails_the_job(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, robot_launch="crash.launch", duration=60)
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=90)
    assert job["failureCode"] == "RobotApplicationCrash"
    assert job["failureReason"]
    assert_nothing_left(arn.rsplit("/", 1)[1])


def live_logs(server, arn: str) -> str:
    """The job's application logs so far, through the same signed endpoint `openrobomaker logs` uses."""
    from botocore.credentials import Credentials

    from openrobomaker.cli_jobs import signed_get

    url = f"{server.endpoint}/_openrobomaker/v1/simulation-jobs/{arn.rsplit('/', 1)[1]}/logs"
    response = signed_get(url, Credentials("test", "test"), "us-east-1")
    assert response.status_code == 200, response.text
    return "".join(chunk["data"] for chunk in response.json()["logs"])


def test_crash_with_continue_restarts_in_place(ros_server, store, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, robot_launch="crash.launch", duration=45, failureBehavior="Continue")
    deadline = time.monotonic() + 45
    while "(start #2)" not in live_logs(ros_server, arn):
        assert rm.describe_simulation_job(job=arn)["status"] not in TERMINAL
        assert time.monotonic() < deadline, "the crashed application was not restarted in place"
        time.sleep(0.5)
    job, _ = wait_for(rm, arn, {"Completed"}, timeout=90)
    keys = output_keys(store, arn)
    text = "".join(
        store.open("outputs", k).read().decode(errors="replace") for k in keys if "/ros-logs/" in k
    )
    assert text.count("crasher will crash") >= 2


def test_cancel_stops_every_process(ros_server, store, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, duration=600)
    wait_for(rm, arn, {"Running"})
    job_id = arn.rsplit("/", 1)[1]
    assert job_processes(job_id)
    rm.cancel_simulation_job(job=arn)
    job, seen = wait_for(rm, arn, {"Canceled"}, timeout=60)
    assert "failureCode" not in job
    assert_nothing_left(job_id)
    assert any("/ros-logs/" in k for k in output_keys(store, arn))


def wait_for_log(server, arn: str, text: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while live_logs(server, arn).count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} did not appear {count} time(s) in the job's logs"
        time.sleep(0.3)


def test_restart_runs_the_applications_again(ros_server, store, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, duration=600)
    first, _ = wait_for(rm, arn, {"Running"})
    wait_for_log(ros_server, arn, "talker up")
    rm.restart_simulation_job(job=arn)
    assert rm.describe_simulation_job(job=arn)["status"] == "Restarting"
    wait_for_log(ros_server, arn, "talker up", count=2)
    again, _ = wait_for(rm, arn, {"Running"})
    assert again["lastStartedAt"] > first["lastStartedAt"]
    rm.cancel_simulation_job(job=arn)
    wait_for(rm, arn, {"Canceled"}, timeout=60)


def _tar_with_escape(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["corrupt", "escape"])
def test_bad_bundles_fail_with_invalid_bundle(ros_server, store, bundles, tmp_path, kind):
    rm = ros_server.client()
    key = f"bad-{kind}-{uuid.uuid4().hex[:6]}.tar.gz"
    if kind == "corrupt":
        store.put_bytes("bundles", key, b"\x1f\x8b this is not a gzip stream")
    else:
        store.upload(_tar_with_escape(tmp_path / "escape.tar.gz"), "bundles", key)
    apps = create_apps(rm)
    rm.update_robot_application(
        application=apps["robot"],
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        sources=[{"s3Bucket": "bundles", "s3Key": key, "architecture": "X86_64"}],
    )
    arn = create_job(rm, apps)
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=60)
    assert job["failureCode"] == "InvalidBundleRobotApplication", job
    assert not list(ros_server.data_dir.rglob("escaped.txt"))
    assert not (ros_server.data_dir.parent / "escaped.txt").exists()


def test_missing_data_source_fails_with_invalid_s3_resource(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(
        rm, apps, dataSources=[{"name": "maps", "s3Bucket": "datasets", "s3Keys": ["missing/map.yaml"]}]
    )
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=60)
    assert job["failureCode"] == "InvalidS3Resource", job


def test_data_source_is_readable_inside_the_job(ros_server, store, bundles):
    rm = ros_server.client()
    store.put_bytes("datasets", "maps/room.yaml", b"room: 1\n")
    apps = create_apps(rm)
    arn = create_job(
        rm,
        apps,
        duration=6,
        dataSources=[{"name": "maps", "s3Bucket": "datasets", "s3Keys": ["maps/room.yaml"]}],
    )
    job, _ = wait_for(rm, arn, {"Completed"}, timeout=60)
    assert job["dataSources"][0]["s3Keys"][0]["etag"] == store.head("datasets", "maps/room.yaml").etag


def test_changed_bundle_fails_a_numbered_version(ros_server, store, bundles):
    rm = ros_server.client()
    key = f"changing-{uuid.uuid4().hex[:6]}.tar.gz"
    store.upload(bundles / "chatter.tar.gz", "bundles", key)
    apps = create_apps(rm, key)
    version = rm.create_robot_application_version(application=apps["robot"])["version"]
    store.put_bytes("bundles", key, (bundles / "chatter.tar.gz").read_bytes() + b"\0" * 1024)
    arn = create_job(rm, apps, robot_version=version)
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=60)
    assert job["failureCode"] == "RobotApplicationVersionMismatchedEtag", job


def test_unwritable_output_location(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, outputLocation={"s3Bucket": "no-such-output-bucket", "s3Prefix": "x"})
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=60)
    assert job["failureCode"] == "BadPermissionsS3Output", job


def test_job_tags_and_cancels_itself_through_the_robomaker_services(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, robot_launch="verdict.launch", duration=600)
    job, _ = wait_for(rm, arn, {"Canceled"}, timeout=90)
    assert rm.list_tags_for_resource(resourceArn=arn)["tags"].get("verdict") == "passed"


def test_application_calls_the_api_with_boto3_from_inside(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, robot_launch="boto3_tag.launch", duration=600)
    wait_for(rm, arn, {"Running"})
    deadline = time.monotonic() + 60
    while "fromInside" not in rm.list_tags_for_resource(resourceArn=arn)["tags"]:
        assert time.monotonic() < deadline, "the application could not tag its own job"
        time.sleep(0.5)
    rm.cancel_simulation_job(job=arn)
    wait_for(rm, arn, {"Canceled"}, timeout=60)


def test_logs_command_prints_application_output(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    # Max duration counts from Running, while the master may still be starting: leave the talker time to
    # speak on a loaded host.
    arn = create_job(rm, apps, duration=12)
    wait_for(rm, arn, {"Completed"}, timeout=90)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    out = subprocess.run(
        [sys.executable, "-m", "openrobomaker.cli", "logs", arn, "--endpoint", ros_server.endpoint],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "talker said hello" in out.stdout


def test_job_survives_a_control_plane_crash(tmp_path, bundles):
    with running_server({"limits": {"simulation_units": 16}}, data_dir=tmp_path) as srv:
        objects = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path / "objects")))
        for bucket in ("bundles", "outputs"):
            objects.create_bucket(bucket)
        objects.upload(bundles / "chatter.tar.gz", "bundles", "chatter.tar.gz")
        rm = srv.client()
        apps = create_apps(rm)
        arn = create_job(rm, apps, duration=15)
        wait_for(rm, arn, {"Running"})
        job_id = arn.rsplit("/", 1)[1]
        srv.kill()
        time.sleep(2)
        assert job_processes(job_id), "the job died with the control plane"
        srv.start()
        rm = srv.client()
        assert rm.describe_simulation_job(job=arn)["status"] in ("Running", "Terminating", "Completed")
        job, _ = wait_for(rm, arn, {"Completed"}, timeout=60)
        assert job["simulationTimeMillis"] >= 14000
        assert_nothing_left(job_id)


def test_killed_runner_fails_the_job(ros_server, bundles):
    rm = ros_server.client()
    apps = create_apps(rm)
    arn = create_job(rm, apps, duration=600)
    wait_for(rm, arn, {"Running"})
    job_id = arn.rsplit("/", 1)[1]
    runners = [
        pid
        for pid in job_processes(job_id)
        if b"openrobomaker.runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert runners
    for pid in runners:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    job, _ = wait_for(rm, arn, {"Failed"}, timeout=60)
    assert job["failureCode"] == "InternalServiceError"
    assert_nothing_left(job_id)
