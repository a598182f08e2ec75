"""The runner as a real subprocess, with real ROS 1 (rosmaster, roslaunch, rosbag) and the example apps."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

CRASH_NODE = """#!/usr/bin/env python3
import sys, time
import rospy
rospy.init_node("crasher")
rospy.loginfo("crasher: up, crashing in a moment")
time.sleep(1.0)
sys.exit(3)
"""
CRASH_LAUNCH = '<launch><node pkg="crasher" type="crash.py" name="crasher" output="screen"/></launch>\n'

TAGGER_NODE = """#!/usr/bin/env python3
import rospy
from robomaker_simulation_msgs.msg import Tag
from robomaker_simulation_msgs.srv import AddTags, Cancel, ListTags
rospy.init_node("tagger")
rospy.wait_for_service("/robomaker/job/add_tags", timeout=30)
added = rospy.ServiceProxy("/robomaker/job/add_tags", AddTags)([Tag(key="name", value="my_test")])
rospy.loginfo("add_tags success=%s message=%s", added.success, added.message)
listed = rospy.ServiceProxy("/robomaker/job/list_tags", ListTags)()
rospy.loginfo("list_tags success=%s tags=%s", listed.success, [(t.key, t.value) for t in listed.tags])
cancelled = rospy.ServiceProxy("/robomaker/job/cancel", Cancel)()
rospy.loginfo("cancel success=%s message=%s", cancelled.success, cancelled.message)
rospy.spin()
"""
TAGGER_LAUNCH = (
    '<launch><node pkg="tagger" type="tag.py" name="tagger" output="screen" required="true"/></launch>\n'
)


def _crasher_app(jobs):
    files = {"nodes/crash.py": CRASH_NODE, "launch/crash.launch": CRASH_LAUNCH}
    return jobs.package_app("robot", "crasher", files, "crash.launch", executables=("nodes/crash.py",))


def _wait_for_line(read, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = read()
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; last content:\n{read()[-2000:]}")


def test_examples_run_record_bag_cancel_and_upload(jobs, example_bundles, tmp_path):
    from rosbags.highlevel import AnyReader

    # The simulation application as a colcon-bundle v2, the robot application as a plain tar.gz.
    apps = jobs.example_applications(example_bundles, sim_format="colcon-v2.tar")
    handle = jobs.start(jobs.spec(apps, recordAllRosTopics=True))
    running = handle.wait_phase("Running", 60)
    assert running["startedAt"] and running["pid"] == handle.proc.pid and running["failureCode"] is None
    _wait_for_line(lambda: handle.log("RobotApplicationLogs.log"), "robot_controller: at (", 30)
    time.sleep(2)  # a few seconds of bag
    heartbeats = [r for r in handle.plane.reports[handle.job_id] if r["phase"] == "Running"]
    assert len(heartbeats) >= 2 and [r["seq"] for r in heartbeats] == sorted(r["seq"] for r in heartbeats)

    handle.action("cancel")
    final = handle.wait_finished(60)
    assert final["outcome"] == "Canceled" and final["failureCode"] is None
    assert final["simulationTimeMillis"] > 1000
    assert handle.phases() == ["Preparing", "Running", "Terminating", "Finished"]
    assert json.loads((handle.work_dir / "final.json").read_text())["outcome"] == "Canceled"
    assert not jobs.live_processes(handle)

    prefix = f"runs/{handle.job_id}/{handle.spec['runId']}/"
    keys = jobs.output_keys(handle)
    assert all(k.startswith(prefix) and "//" not in k for k in keys)
    assert prefix + "ros-logs/RobotApplicationLogs.log" in keys
    assert prefix + "ros-logs/SimulationApplicationLogs.log" in keys
    robot_log = jobs.store.open("out", prefix + "ros-logs/RobotApplicationLogs.log").read().decode()
    assert "robot_controller: at (" in robot_log and robot_log[:4].isdigit()  # timestamped lines
    assert (
        "sim_world: "
        in jobs.store.open("out", prefix + "ros-logs/SimulationApplicationLogs.log").read().decode()
    )
    bags = [k for k in keys if k.startswith(prefix + "ros-bags/") and k.endswith(".bag")]
    assert len(bags) == 1, keys
    local_bag = tmp_path / "recorded.bag"
    jobs.store.download("out", bags[0], local_bag)
    with AnyReader([local_bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        types = {c.topic: c.msgtype for c in reader.connections}
    assert counts.get("/odom", 0) > 5 and counts.get("/scan", 0) > 5 and counts.get("/cmd_vel", 0) > 5, counts
    assert types["/odom"] == "nav_msgs/msg/Odometry" and types["/scan"] == "sensor_msgs/msg/LaserScan"
    overlays = [p for p in (jobs.cache_dir / "bundles").iterdir() if not p.name.startswith(".")]
    assert len(overlays) >= 2  # the v2 bundle's dependencies and workspace overlays, cached by sha256


def test_node_crash_fails_the_job(jobs, example_bundles):
    apps = jobs.example_applications(example_bundles)[:1] + [_crasher_app(jobs)]
    handle, final = jobs.run_to_end(jobs.spec(apps, failureBehavior="Fail"), timeout=60)
    assert final["outcome"] == "Failed"
    assert final["failureCode"] == "RobotApplicationCrash"
    assert "exited with code 3" in final["failureReason"] and "crasher" in final["failureReason"]
    assert "crasher: up" in handle.log("RobotApplicationLogs.log")
    assert handle.phases() == ["Preparing", "Running", "Terminating", "Finished"]


def test_crash_with_continue_restarts_in_place(jobs, example_bundles):
    apps = jobs.example_applications(example_bundles)[:1] + [_crasher_app(jobs)]
    handle = jobs.start(jobs.spec(apps, failureBehavior="Continue"))
    failed = handle.wait_phase("RunningFailed", 60)
    assert failed["failureCode"] == "RobotApplicationCrash"
    jobs.plane.wait_for(lambda: handle.phases().count("Running") >= 2, 30, "a second Running")
    log_text = handle.log("RobotApplicationLogs.log")
    assert "start #2" in log_text
    handle.action("cancel")
    final = handle.wait_finished(60)
    assert final["outcome"] == "Canceled"
    assert handle.phases()[:4] == ["Preparing", "Running", "RunningFailed", "Running"]


def test_missing_ros_package_is_a_clear_failure(jobs, example_bundles):
    apps = jobs.example_applications(example_bundles)
    apps[1]["launchConfig"]["packageName"] = "no_such_package"
    _, final = jobs.run_to_end(jobs.spec(apps), timeout=60)
    assert final["failureCode"] == "RobotApplicationCrash"
    assert "Resource not found" in final["failureReason"] and "no_such_package" in final["failureReason"]


def test_two_runners_at_once_both_use_port_11311(jobs, example_bundles):
    # Both extract the same colcon-v2 overlays into the shared cache at the same time, too.
    apps = jobs.example_applications(example_bundles, robot_format="colcon-v2.tar")
    first, second = jobs.start(jobs.spec(apps)), jobs.start(jobs.spec(apps))
    for handle in (first, second):
        handle.wait_phase("Running", 60)
    for handle in (first, second):
        _wait_for_line(lambda h=handle: h.log("RobotApplicationLogs.log"), "robot_controller: at (1", 30)
        assert "ROS_MASTER_URI=http://localhost:11311" in handle.log("SimulationApplicationLogs.log")
        master_logs = list((handle.work_dir / "output" / "ros-logs" / "ros").glob("**/master.log"))
        assert master_logs and "port[11311]" in master_logs[0].read_text()
    for handle in (first, second):
        handle.action("cancel")
    for handle in (first, second):
        assert handle.wait_finished(60)["outcome"] == "Canceled"


def test_robomaker_services_reach_the_api_through_the_forwarder(jobs):
    files = {"nodes/tag.py": TAGGER_NODE, "launch/tag.launch": TAGGER_LAUNCH}
    apps = [jobs.package_app("robot", "tagger", files, "tag.launch", executables=("nodes/tag.py",))]
    handle, final = jobs.run_to_end(jobs.spec(apps), timeout=90)
    # The node's /robomaker/job/cancel call went through the API to the control plane, which cancelled.
    assert final["outcome"] == "Canceled", (final, handle.log("RobotApplicationLogs.log"))
    arn = handle.spec["jobArn"]
    calls = [(c.method, urllib.parse.unquote(c.path)) for c in jobs.plane.api_calls]
    assert ("POST", f"/tags/{arn}") in calls and ("GET", f"/tags/{arn}") in calls
    assert ("POST", "/cancelSimulationJob") in calls
    tag_call = next(c for c in jobs.plane.api_calls if c.method == "POST" and "/tags/" in c.path)
    assert json.loads(tag_call.body) == {"tags": {"name": "my_test"}}
    auth = {k.lower(): v for k, v in tag_call.headers.items()}["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDJOB/") and "/robomaker/aws4_request" in auth
    log_text = handle.log("RobotApplicationLogs.log")
    assert (
        "add_tags success=True" in log_text
        and "list_tags success=True tags=[('name', 'my_test')]" in log_text
    )


def test_runner_sigkill_leaves_no_job_process(jobs, example_bundles):
    handle = jobs.start(jobs.spec(jobs.example_applications(example_bundles), recordAllRosTopics=True))
    handle.wait_phase("Running", 60)
    _wait_for_line(lambda: handle.log("RobotApplicationLogs.log"), "robot_controller: at (", 30)
    assert len(jobs.live_processes(handle)) >= 3
    os.kill(handle.proc.pid, signal.SIGKILL)
    handle.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while jobs.live_processes(handle) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs.live_processes(handle)


def test_ros_messages_match_upstream_md5sums(shared_cache):
    import subprocess

    from openrobomaker.runner.rosmsgs import UPSTREAM_MD5SUMS, ensure_ros_messages

    package = ensure_ros_messages(shared_cache)
    names = sorted(UPSTREAM_MD5SUMS)
    script = (
        "import json, sys; from robomaker_simulation_msgs import msg, srv; "
        "print(json.dumps({n: getattr(msg if n == 'Tag' else srv, n)._md5sum for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", script, *names],
        env={"PYTHONPATH": str(package.python_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == UPSTREAM_MD5SUMS
    assert (Path(package.package_root) / "robomaker_simulation_msgs" / "package.xml").is_file()


RUN_ID_NODE = """#!/usr/bin/env python3
import rospy
rospy.init_node("run_id_reader")
print("RUN_ID=" + rospy.get_param("/run_id"), flush=True)
"""
RUN_ID_LAUNCH = '<launch><node pkg="runid" type="read.py" name="run_id_reader" output="screen"/></launch>\n'


def test_each_run_gets_a_fresh_master_and_its_run_id(jobs):
    """The master starts alongside the launcher; the launcher still runs under the run's own /run_id,
    a new one per run, and the ROS logs land in ros-logs/ under it. Nothing is left afterwards."""
    files = {"nodes/read.py": RUN_ID_NODE, "launch/read.launch": RUN_ID_LAUNCH}
    app = jobs.package_app("simulation", "runid", files, "read.launch", executables=("nodes/read.py",))
    seen = []
    for _ in range(2):
        handle, final = jobs.run_to_end(jobs.spec([app], outputLocation=None), timeout=90)
        assert final["outcome"] == "Completed", handle.log("SimulationApplicationLogs.log")[-2000:]
        text = handle.log("SimulationApplicationLogs.log")
        run_id = text.split("RUN_ID=", 1)[1].split()[0]
        assert f"(run_id {run_id})" in handle.runner_log()  # the one the runner set, not one of roslaunch's
        assert (handle.work_dir / "output" / "ros-logs" / "ros" / run_id).is_dir()
        assert (handle.work_dir / "output" / "ros-logs" / "rosmaster.log").exists()
        assert not jobs.live_processes(handle)
        seen.append(run_id)
    assert seen[0] != seen[1]
