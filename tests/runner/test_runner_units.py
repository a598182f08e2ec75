"""Unit tests of the runner's parts: spec, environment, output keys, reporter, forwarder."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from openrobomaker.runner import reporter as reporter_module
from openrobomaker.runner.environment import JobContext, application_environment, base_environment
from openrobomaker.runner.failures import MAX_REASON_CHARS, etag_mismatch_code, truncate_reason
from openrobomaker.runner.forwarder import UnixToTcpForwarder, serve_tcp_to_unix
from openrobomaker.runner.layout import RunLayout
from openrobomaker.runner.outputs import output_key_prefix
from openrobomaker.runner.reporter import Reporter
from openrobomaker.runner.spec import OutputLocation, RunnerSpec, SpecError

SPEC = {
    "jobId": "sim-abc123def456",
    "jobArn": "arn:aws:robomaker:us-east-1:000000000000:simulation-job/sim-abc123def456",
    "runId": "2026-11-28T18-30-00.123Z_6f1c9f7e-3a53-4c8e-9a55-0a6f1f0f6a11",
    "account": "000000000000",
    "region": "us-east-1",
    "workDir": "/tmp/work",
    "cacheDir": "/tmp/cache",
    "objectStore": {"kind": "local", "root": "/tmp/store"},
    "controlPlane": {"url": "http://127.0.0.1:8421", "token": "t0k"},
    "apiEndpoint": {
        "url": "http://127.0.0.1:8421",
        "accessKeyId": "AK",
        "secretAccessKey": "SK",
        "sessionToken": None,
    },
    "maxJobDurationInSeconds": 3600,
    "failureBehavior": "Continue",
    "applications": [
        {
            "kind": "simulation",
            "name": "my-sim",
            "arn": "arn:sim",
            "version": "1",
            "softwareSuite": {"name": "ROS", "version": "Melodic"},
            "sources": [{"s3Bucket": "b", "s3Key": "k.tar.gz", "etag": "abc"}],
            "launchConfig": {
                "packageName": "p",
                "launchFile": "l.launch",
                "environmentVariables": {"A": "1"},
                "streamUI": False,
            },
        }
    ],
    "dataSources": [
        {"name": "maps", "s3Bucket": "b", "s3Keys": [{"s3Key": "maps/a.yaml", "etag": "e"}], "type": "File"}
    ],
    "outputLocation": {"s3Bucket": "out", "s3Prefix": "runs"},
    "recordAllRosTopics": True,
    "isolation": "auto",
    "restartCount": 2,
}


def test_spec_round_trip():
    spec = RunnerSpec.from_json(json.dumps(SPEC))
    assert spec.applications[0].launch_config.environment_variables == {"A": "1"}
    assert spec.applications[0].is_numbered_version and spec.record_all_ros_topics
    again = RunnerSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(spec.to_json())["apiEndpoint"]["sessionToken"] is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("jobId"), "jobId"),
        (lambda s: s.update(failureBehavior="Explode"), "Explode"),
        (lambda s: s.update(isolation="chroot"), "chroot"),
        (lambda s: s.update(maxJobDurationInSeconds=0), "maxJobDurationInSeconds"),
        (lambda s: s["applications"][0].update(kind="tool"), "tool"),
        (lambda s: s["applications"][0]["launchConfig"].update(command="roslaunch x y"), "command"),
    ],
)
def test_spec_rejects_bad_input(mutate, message):
    data = json.loads(json.dumps(SPEC))
    mutate(data)
    with pytest.raises(SpecError, match=message):
        RunnerSpec.from_dict(data)
    with pytest.raises(SpecError):
        RunnerSpec.from_json("{not json")


def test_output_key_prefix_never_doubles_slashes():
    assert output_key_prefix(OutputLocation("b", "runs"), "sim-1", "r1") == "runs/sim-1/r1"
    assert output_key_prefix(OutputLocation("b", "/a//b/"), "sim-1", "r1") == "a/b/sim-1/r1"
    assert output_key_prefix(OutputLocation("b", ""), "sim-1", "r1") == "sim-1/r1"


def test_failure_helpers():
    spec = RunnerSpec.from_dict(SPEC)
    assert etag_mismatch_code(spec.applications[0]) == "SimulationApplicationVersionMismatchedEtag"
    assert len(truncate_reason("x" * 5000)) == MAX_REASON_CHARS


def test_application_environment_is_clean_and_ordered(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", "/some/venv")
    monkeypatch.setenv("PYTHONPATH", "/some/venv/lib")
    data = json.loads(json.dumps(SPEC))
    data["applications"][0]["launchConfig"]["environmentVariables"] = {
        "MY_VAR": "x",
        "AWS_REGION": "eu-west-1",
        "ROS_MASTER_URI": "http://ROBOMAKER_ROBOT_APP_IP:11311",
        "GAZEBO_MASTER_URI": "http://ROBOMAKER_SIM_APP_IP:11345",
    }
    data["apiEndpoint"]["sessionToken"] = "session"
    spec = RunnerSpec.from_dict(data)
    layout = RunLayout(tmp_path)
    context = JobContext(
        master_port=11311,
        api_endpoint_url="http://127.0.0.1:8421",
        datasources_dir="/d",
        ros_package_path=[Path("/msgs/share")],
        python_path=[Path("/msgs/python")],
        run_marker="m",
    )
    env = application_environment(spec, spec.applications[0], layout, context, [Path("/bundle")])
    assert "VIRTUAL_ENV" not in env and env["PYTHONPATH"] == "/msgs/python"
    assert env["ROS_PACKAGE_PATH"] == "/bundle:/msgs/share"
    assert env["MY_VAR"] == "x" and env["AWS_REGION"] == "us-east-1"
    assert env["ROS_MASTER_URI"] == "http://localhost:11311"
    assert env["GAZEBO_MASTER_URI"] == "http://127.0.0.1:11345"
    assert env["AWS_SESSION_TOKEN"] == "session"
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_ROBOMAKER"] == "http://127.0.0.1:8421"
    assert set(base_environment(layout, context)) <= set(env)


class _Plane:
    """A minimal control plane for the reporter: answers every report, or fails while `down` is set."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        plane = self
        self.reports: list[dict] = []
        self.actions: list[str] = []
        self.down = False

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if plane.down or self.headers.get("Authorization") != "Bearer tok":
                    self.send_response(503 if plane.down else 401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                plane.reports.append(body)
                data = json.dumps({"action": plane.actions.pop(0) if plane.actions else "none"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_reporter_phases_heartbeats_actions_and_outage(tmp_path, monkeypatch):
    monkeypatch.setattr(reporter_module, "HEARTBEAT_SECONDS", 1.0)  # the default (3 s) would make this slow
    plane = _Plane()
    received: list[str] = []
    reporter = Reporter(
        plane.url,
        "sim-1",
        "run-1",
        "tok",
        received.append,
        lambda: 1234,
        tmp_path / "final.json",
        final_deadline_seconds=30,
    )
    reporter.start()
    reporter.set_phase("Preparing")
    plane.actions.append("restart")
    reporter.set_phase("Running")
    time.sleep(2.3)
    phases = [r["phase"] for r in plane.reports]
    assert phases[:2] == ["Preparing", "Running"] and phases.count("Running") >= 2  # heartbeats
    assert received == ["restart"]
    assert all(r["runId"] == "run-1" and r["simulationTimeMillis"] == 1234 for r in plane.reports)
    assert [r["seq"] for r in plane.reports] == sorted({r["seq"] for r in plane.reports})

    plane.down = True
    reporter.set_phase("Terminating")
    finisher = threading.Thread(target=reporter.finish, args=("Canceled", None, None))
    finisher.start()
    time.sleep(1.0)
    assert json.loads((tmp_path / "final.json").read_text())["outcome"] == "Canceled"
    assert finisher.is_alive()  # still retrying
    plane.down = False
    finisher.join(10)
    assert not finisher.is_alive()
    assert [r["phase"] for r in plane.reports][-2:] == ["Terminating", "Finished"]
    reporter.stop()
    plane.server.shutdown()


def test_forwarders_bridge_tcp_through_a_unix_socket(tmp_path):
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()

    def echo_once():
        conn, _ = upstream.accept()
        with conn:
            conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=echo_once, daemon=True).start()
    sock_path = str(tmp_path / "api.sock")
    host_side = UnixToTcpForwarder(sock_path, "127.0.0.1", upstream.getsockname()[1])
    host_side.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    threading.Thread(target=serve_tcp_to_unix, args=(port, sock_path), daemon=True).start()
    deadline = time.monotonic() + 5
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with client:
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b"echo:hello"
    host_side.close()
    upstream.close()


def test_api_socket_path_falls_back_to_a_short_dir(tmp_path):
    assert RunLayout(tmp_path).api_socket_path() == tmp_path / "api.sock"
    long_layout = RunLayout(tmp_path / ("x" * 120))
    fallback = long_layout.api_socket_path()
    assert len(str(fallback)) < 100 and fallback.name == "api.sock" and fallback.parent.is_dir()
    fallback.parent.rmdir()


def test_marker_search_scoped_to_the_job_namespace_finds_and_kills_orphans(tmp_path):
    """The scoped search (job's pid namespace + leader) finds what the full /proc scan finds, orphans too."""
    import uuid

    from openrobomaker.runner.isolation import choose_isolation
    from openrobomaker.runner.procs import PROC_MARKER_VAR, JobProcess, LogSink, find_marked_processes

    try:
        isolation = choose_isolation("auto")
    except Exception as exc:  # noqa: BLE001 - a host without namespaces cannot run this
        pytest.skip(f"no namespaces here: {exc}")
    isolation.start(tmp_path)
    marker = uuid.uuid4().hex
    try:
        # The shell leaves a background sleep behind (an orphan, reparented to the namespace's pid 1).
        process = JobProcess(
            "t",
            isolation.wrap(["/bin/sh", "-c", "sleep 30 & echo started; sleep 0.2"], tmp_path),
            {"PATH": "/usr/bin:/bin"},
            LogSink(tmp_path / "t.log"),
            tmp_path,
            marker,
            leader_is_wrapper=isolation.isolated,
            scope=isolation.job_pids,
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        everywhere = find_marked_processes(PROC_MARKER_VAR, process.marker)
        assert everywhere, "the orphaned sleep should still carry the marker"
        if isolation.isolated:
            assert set(everywhere) <= set(isolation.job_pids())
            # The process-tree walk finds exactly what reading every process's namespace link finds.
            assert isolation.job_pids() == sorted(isolation._scan_every_process())
        assert sorted(
            find_marked_processes(PROC_MARKER_VAR, process.marker, process._candidates())
        ) == sorted(everywhere)
        process.stop(sigint_timeout=2)
        assert find_marked_processes(PROC_MARKER_VAR, process.marker) == []
    finally:
        isolation.stop()


def test_run_layout_makes_ros_folders_only_for_ros_jobs(tmp_path):
    plain, ros = RunLayout(tmp_path / "plain"), RunLayout(tmp_path / "ros")
    plain.create(ros=False)
    ros.create(ros=True)
    assert plain.home.is_dir() and plain.ros_logs.is_dir()
    assert not plain.ros_bags.exists() and not plain.status.exists() and not plain.downloads.exists()
    assert ros.ros_log_dir.is_dir() and ros.ros_bags.is_dir() and ros.status.is_dir()
    assert plain.scratch().is_dir()


def test_local_store_download_is_a_snapshot_of_the_object(tmp_path):
    from openrobomaker.objectstore import ObjectStoreConfig, open_store

    store = open_store(ObjectStoreConfig(kind="local", root=str(tmp_path / "objects")))
    store.create_bucket("b")
    first = store.put_bytes("b", "k", b"version 1")
    dest = tmp_path / "bundle"
    info = store.download("b", "k", dest)
    assert info.etag == first.etag and dest.read_bytes() == b"version 1"
    store.put_bytes("b", "k", b"version 2")  # replacing the object leaves the downloaded copy as it was
    assert dest.read_bytes() == b"version 1"
    assert store.download("b", "k", tmp_path / "again").size == len(b"version 2")


def test_zygote_reads_the_store_module_and_isolation_a_job_names(tmp_path):
    from openrobomaker.runner.zygote import read_spec_facts

    for kind, module in (
        ("s3", "openrobomaker.objectstore.s3"),
        ("local", "openrobomaker.objectstore.local"),
    ):
        spec = tmp_path / f"{kind}.json"
        spec.write_text(json.dumps({"objectStore": {"kind": kind}, "isolation": "netns"}))
        assert read_spec_facts(str(spec)).store_module == module
        assert read_spec_facts(str(spec)).isolation == "netns"
    (tmp_path / "odd.json").write_text(json.dumps({"objectStore": {"kind": "os.system"}}))
    odd = read_spec_facts(str(tmp_path / "odd.json"))
    assert odd.store_module is None  # only our own store modules are imported
    assert odd.isolation == "auto"  # the spec's default
    missing = read_spec_facts(str(tmp_path / "missing.json"))
    assert missing.store_module is None and missing.isolation is None  # no standby for a job unread
