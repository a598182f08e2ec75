"""The runner as a real subprocess: failures while preparing, and jobs whose apps are plain commands."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time

import pytest

SLEEPER = ["/bin/bash", "-c", 'echo "marker=$APP_MARKER"; exec sleep 600']

# Runs inside the job with `/usr/bin/env python3`: the interpreter must be Debian's (rospy importable).
INSPECT = r"""
import json, os, shutil, socket, sys, urllib.error, urllib.request
import rospy  # fails if the job's PATH put another python3 first
root = os.environ["AWS_ROBOMAKER_DATASOURCES_DIR"]
files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
try:
    open(os.path.join(root, "maps", "new-file"), "w")
    writable = True
except OSError:
    writable = False
try:
    status = urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"] + "/ping-from-job", timeout=10).status
except urllib.error.HTTPError as exc:
    status = exc.code
master_port = int(os.environ["ROS_MASTER_URI"].rsplit(":", 1)[1])
socket.create_connection(("127.0.0.1", master_port), timeout=5).close()
print("INSPECT " + json.dumps({
    "env": dict(os.environ), "files": files, "writable": writable, "api_status": status,
    "python3": shutil.which("python3"), "uid": os.getuid(),
    "maps_a": open(os.path.join(root, "maps", "maps", "a.yaml")).read() if os.path.exists(
        os.path.join(root, "maps", "maps", "a.yaml")) else None,
}), flush=True)
"""


def command_bundle(jobs, key: str, setup_sh: str = "export APP_MARKER=v1\n") -> None:
    jobs.put("apps", key, jobs.setup_only_bundle(setup_sh))


def command_app(jobs, kind: str, command: list[str], key: str | None = None, **kwargs) -> dict:
    key = key or f"{kind}-cmd.tar.gz"
    command_bundle(jobs, key)
    return jobs.application(kind, key, command=command, **kwargs)


def inspect_output(handle) -> dict:
    for line in handle.log("SimulationApplicationLogs.log").splitlines():
        if " INSPECT " in line:
            return json.loads(line.split(" INSPECT ", 1)[1])
    raise AssertionError(handle.log("SimulationApplicationLogs.log")[-3000:])


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- failures while preparing (no ROS process is ever started) -----------------------------------


def _expect_preparing_failure(jobs, spec: dict, code: str, *reason_parts: str) -> dict:
    handle, final = jobs.run_to_end(spec, timeout=60)
    assert final["outcome"] == "Failed", final
    assert final["failureCode"] == code, final
    for part in reason_parts:
        assert part in final["failureReason"], final["failureReason"]
    assert handle.phases() == ["Preparing", "Finished"]
    assert json.loads((handle.work_dir / "final.json").read_text())["failureCode"] == code
    assert handle.proc.returncode == 0
    return final


def test_corrupt_bundle_is_invalid_bundle(jobs):
    jobs.put("apps", "corrupt.tar.gz", b"\x1f\x8b\x08\x00" + os.urandom(500))
    spec = jobs.spec([jobs.application("simulation", "corrupt.tar.gz", "sim_world", "world.launch")])
    _expect_preparing_failure(jobs, spec, "InvalidBundleSimulationApplication", "FORMAT")


def test_bundle_escaping_with_dotdot_is_invalid_bundle(jobs, example_bundles):
    jobs.put("apps", "evil.tar.gz", tar_gz({"setup.sh": b"", "../../evil.sh": b"echo pwned"}))
    apps = jobs.example_applications(example_bundles)[:1]
    apps.append(jobs.application("robot", "evil.tar.gz", "robot_controller", "controller.launch"))
    _expect_preparing_failure(jobs, jobs.spec(apps), "InvalidBundleRobotApplication", "UNSAFE", "..")
    assert not (jobs.root / "runs" / "evil.sh").exists()


def test_missing_bundle_object_is_bad_permissions(jobs):
    spec = jobs.spec([jobs.application("simulation", "nowhere.tar.gz", "sim_world", "world.launch")])
    jobs.store.create_bucket("apps")
    _expect_preparing_failure(jobs, spec, "BadPermissionsSimulationApplication", "nowhere.tar.gz")


@pytest.mark.parametrize(
    ("version", "code"), [("1", "SimulationApplicationVersionMismatchedEtag"), ("$LATEST", "MismatchedEtag")]
)
def test_changed_bundle_etag(jobs, example_bundles, version, code):
    jobs.put("apps", "sim.tar.gz", example_bundles["sim_world.tar.gz"])
    app = jobs.application(
        "simulation",
        "sim.tar.gz",
        "sim_world",
        "world.launch",
        etag="0123456789abcdef0123456789abcdef",
        version=version,
    )
    _expect_preparing_failure(jobs, jobs.spec([app]), code, "0123456789abcdef0123456789abcdef")


def test_missing_data_source_is_invalid_s3_resource(jobs, example_bundles):
    jobs.put("data", "maps/present.yaml", b"x")
    sources = [
        {
            "name": "maps",
            "s3Bucket": "data",
            "type": "File",
            "s3Keys": [{"s3Key": "maps/present.yaml"}, {"s3Key": "maps/missing.yaml"}],
        }
    ]
    spec = jobs.spec(jobs.example_applications(example_bundles), dataSources=sources)
    _expect_preparing_failure(jobs, spec, "InvalidS3Resource", "maps/missing.yaml")


def test_changed_data_source_etag_is_mismatched_etag(jobs, example_bundles):
    jobs.put("data", "maps/a.yaml", b"x")
    sources = [
        {
            "name": "maps",
            "s3Bucket": "data",
            "type": "File",
            "s3Keys": [{"s3Key": "maps/a.yaml", "etag": "ffffffffffffffffffffffffffffffff"}],
        }
    ]
    spec = jobs.spec(jobs.example_applications(example_bundles), dataSources=sources)
    _expect_preparing_failure(jobs, spec, "MismatchedEtag", "maps/a.yaml")


def test_missing_output_bucket_is_bad_permissions_s3_output(jobs, example_bundles):
    spec = jobs.spec(jobs.example_applications(example_bundles))
    spec["outputLocation"] = {"s3Bucket": "no-such-output-bucket", "s3Prefix": ""}
    _expect_preparing_failure(jobs, spec, "BadPermissionsS3Output", "no-such-output-bucket")


# --- jobs of plain commands ------------------------------------------------------------------------


@pytest.mark.ros
def test_environment_data_sources_and_api_inside_the_job(jobs):
    jobs.put("data", "maps/a.yaml", b"image: a.pgm\n")
    jobs.put("data", "logs/2020/run1.bag", b"bag1")
    jobs.put("data", "logs/2020/run2.bag", b"bag2")
    jobs.put("data", "worlds.tar.gz", tar_gz({"worlds/room.world": b"<sdf/>"}))
    sources = [
        {"name": "maps", "s3Bucket": "data", "type": "File", "s3Keys": [{"s3Key": "maps/a.yaml"}]},
        {"name": "bags", "s3Bucket": "data", "type": "Prefix", "s3Keys": [{"s3Key": "logs/2020/"}]},
        {"name": "worlds", "s3Bucket": "data", "type": "Archive", "s3Keys": [{"s3Key": "worlds.tar.gz"}]},
    ]
    env = {
        "MY_SETTING": "hello world; $(not a shell)",
        "ROS_IP": "ROBOMAKER_SIM_APP_IP",
        "AWS_REGION": "eu-west-3",
    }
    app = command_app(jobs, "simulation", ["/usr/bin/env", "python3", "-c", INSPECT], env=env)
    handle, final = jobs.run_to_end(jobs.spec([app], dataSources=sources), timeout=60)
    assert final["outcome"] == "Completed", (final, handle.log("SimulationApplicationLogs.log")[-2000:])
    seen = inspect_output(handle)
    job_env = seen["env"]
    spec = handle.spec
    assert seen["python3"] == "/usr/bin/python3"
    assert job_env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert not {"VIRTUAL_ENV", "PYENV_VERSION", "PYTHONHOME"} & set(job_env)
    assert job_env["HOME"].startswith(str(handle.work_dir))
    assert job_env["ROS_LOG_DIR"].startswith(str(handle.work_dir / "output" / "ros-logs"))
    assert job_env["ROS_MASTER_URI"] == "http://localhost:11311" and job_env["ROS_HOSTNAME"] == "localhost"
    assert job_env["AWS_ROBOMAKER_SIMULATION_JOB_ID"] == spec["jobId"]
    assert job_env["AWS_ROBOMAKER_SIMULATION_JOB_ARN"] == spec["jobArn"]
    assert job_env["AWS_ROBOMAKER_SIMULATION_RUN_ID"] == spec["runId"]
    assert job_env["AWS_REGION"] == job_env["AWS_DEFAULT_REGION"] == "us-east-1"  # not the user's value
    assert job_env["AWS_ACCOUNT_ID"] == "000000000000"
    assert job_env["AWS_ACCESS_KEY_ID"] == "AKIDJOB" and job_env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert "AWS_SESSION_TOKEN" not in job_env
    assert job_env["AWS_ENDPOINT_URL"] == job_env["AWS_ENDPOINT_URL_ROBOMAKER"]
    assert job_env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert job_env["MY_SETTING"] == "hello world; $(not a shell)" and job_env["ROS_IP"] == "127.0.0.1"
    assert job_env["APP_MARKER"] == "v1"  # the bundle's setup.sh was sourced
    assert "robomaker_simulation_msgs" in job_env["ROS_PACKAGE_PATH"]
    assert seen["api_status"] == 404  # reached the fake API through the forwarder
    assert any(c.path == "/ping-from-job" for c in jobs.plane.api_calls)
    # Data sources: read-only, full S3 key below the data source name, mounted at /opt/robomaker.
    assert job_env["AWS_ROBOMAKER_DATASOURCES_DIR"] == "/opt/robomaker/datasources"
    assert seen["files"] == [
        "bags/logs/2020/run1.bag",
        "bags/logs/2020/run2.bag",
        "maps/maps/a.yaml",
        "worlds/worlds/room.world",
    ]
    assert seen["maps_a"] == "image: a.pgm\n" and seen["writable"] is False
    assert not os.path.exists("/opt/robomaker/datasources/maps")  # the host's /opt is untouched


@pytest.mark.ros
def test_no_isolation_uses_a_free_master_port_and_the_api_directly(jobs):
    app = command_app(jobs, "simulation", ["/usr/bin/env", "python3", "-c", INSPECT])
    handle, final = jobs.run_to_end(jobs.spec([app], isolation="none"), timeout=60)
    assert final["outcome"] == "Completed", handle.log("SimulationApplicationLogs.log")[-2000:]
    job_env = inspect_output(handle)["env"]
    assert job_env["ROS_MASTER_URI"] != "http://localhost:11311"
    assert job_env["AWS_ENDPOINT_URL"] == jobs.plane.url
    assert job_env["AWS_ROBOMAKER_DATASOURCES_DIR"] == str(handle.work_dir / "datasources")


@pytest.mark.ros
def test_user_namespace_isolation(jobs):
    app = command_app(jobs, "simulation", ["/usr/bin/env", "python3", "-c", INSPECT])
    handle, final = jobs.run_to_end(jobs.spec([app], isolation="userns"), timeout=60)
    assert final["outcome"] == "Completed", handle.log("SimulationApplicationLogs.log")[-2000:]
    seen = inspect_output(handle)
    assert seen["uid"] == 0 and seen["api_status"] == 404
    assert seen["env"]["ROS_MASTER_URI"] == "http://localhost:11311"


@pytest.mark.ros
def test_restart_action_picks_up_a_new_latest_bundle(jobs):
    app = command_app(jobs, "simulation", SLEEPER, key="sleeper.tar.gz")
    handle = jobs.start(jobs.spec([app]))
    handle.wait_phase("Running", 60)
    _wait_for(lambda: "marker=v1" in handle.log("SimulationApplicationLogs.log"), 20)
    command_bundle(jobs, "sleeper.tar.gz", setup_sh="export APP_MARKER=v2\n")  # a new $LATEST
    handle.action("restart")
    _wait_for(lambda: "marker=v2" in handle.log("SimulationApplicationLogs.log"), 40)
    assert handle.phases()[:4] == ["Preparing", "Running", "Restarting", "Running"]
    assert len({r["runId"] for r in jobs.plane.reports[handle.job_id]}) == 1
    handle.action("cancel")
    assert handle.wait_finished(60)["outcome"] == "Canceled"


@pytest.mark.ros
def test_sigterm_and_cancel_file_cancel_the_job(jobs):
    by_signal = jobs.start(jobs.spec([command_app(jobs, "simulation", SLEEPER)]))
    by_file = jobs.start(jobs.spec([command_app(jobs, "simulation", SLEEPER)]))
    for handle in (by_signal, by_file):
        handle.wait_phase("Running", 60)
    os.kill(by_signal.proc.pid, signal.SIGTERM)
    (by_file.work_dir / "cancel").touch()
    for handle in (by_signal, by_file):
        final = handle.wait_finished(60)
        assert final["outcome"] == "Canceled" and final["failureCode"] is None


@pytest.mark.ros
def test_control_plane_outage_does_not_stop_the_run(jobs):
    handle = jobs.start(jobs.spec([command_app(jobs, "simulation", SLEEPER)]))
    handle.wait_phase("Running", 60)
    jobs.plane.unavailable = True
    time.sleep(2.5)
    assert handle.proc.poll() is None
    (handle.work_dir / "cancel").touch()
    _wait_for(lambda: (handle.work_dir / "final.json").exists(), 30)
    final_file = json.loads((handle.work_dir / "final.json").read_text())
    assert final_file["outcome"] == "Canceled" and final_file["phase"] == "Finished"
    time.sleep(1)
    assert handle.proc.poll() is None  # still trying to deliver the final report
    jobs.plane.unavailable = False
    final = handle.wait_finished(30)
    assert final["seq"] == final_file["seq"] and handle.proc.returncode == 0


@pytest.mark.ros
def test_robot_exit_zero_keeps_the_job_running_until_max_duration(jobs):
    apps = [command_app(jobs, "simulation", SLEEPER), command_app(jobs, "robot", ["/bin/true"])]
    handle, final = jobs.run_to_end(jobs.spec(apps, maxJobDurationInSeconds=3), timeout=60)
    assert final["outcome"] == "Completed"
    assert 2900 <= final["simulationTimeMillis"] <= 4500
    assert handle.phases() == ["Preparing", "Running", "Terminating", "Finished"]
    assert "exited with code 0" in handle.log("RobotApplicationLogs.log")


@pytest.mark.ros
def test_ros2_application_fails_clearly_without_ros2(jobs):
    command_bundle(jobs, "ros2.tar.gz")
    app = jobs.application("simulation", "ros2.tar.gz", "demo_nodes_py", "talker.launch.py", suite="ROS2")
    _, final = jobs.run_to_end(jobs.spec([app]), timeout=60)
    assert final["failureCode"] == "SimulationApplicationCrash"
    assert "command not found" in final["failureReason"] and "ros2 launch" in final["failureReason"]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


@pytest.mark.ros
def test_output_bucket_gone_at_upload_time_fails_the_job(jobs):
    import shutil

    handle = jobs.start(jobs.spec([command_app(jobs, "simulation", SLEEPER)], maxJobDurationInSeconds=3))
    handle.wait_phase("Running", 60)
    shutil.rmtree(jobs.root / "store" / "out")  # the output bucket disappears while the job runs
    final = handle.wait_finished(60)
    assert final["outcome"] == "Failed" and final["failureCode"] == "BadPermissionsS3Output"
    assert "s3://out/runs/" in final["failureReason"]
