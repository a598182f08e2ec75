"""Fixtures for the runner tests: a fake control plane (a real HTTP server), a local object store, the
example bundles, and a harness that starts `python -m openrobomaker.runner` as a real subprocess and makes
sure nothing of the job survives the test."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from openrobomaker.objectstore import ObjectStoreConfig, open_store

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
ROSLAUNCH = Path("/usr/bin/roslaunch")
ACCOUNT = "000000000000"
REGION = "us-east-1"
REPORT_PATH_PREFIX = "/_runner/v1/jobs/"


@pytest.fixture(autouse=True)
def _skip_ros_tests_without_ros(request):
    if request.node.get_closest_marker("ros") and not ROSLAUNCH.exists():
        pytest.skip("ROS 1 (/usr/bin/roslaunch) is not installed")


# --- fake control plane ---------------------------------------------------------------------------


@dataclass
class ApiCall:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeControlPlane:
    """Records runner reports and answers with queued actions; also plays the RoboMaker API endpoint."""

    tokens: dict[str, str] = field(default_factory=dict)
    arns: dict[str, str] = field(default_factory=dict)
    reports: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    actions: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    api_calls: list[ApiCall] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    unavailable: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def register(self, job_id: str, job_arn: str, token: str) -> None:
        self.tokens[job_id] = token
        self.arns[job_arn] = job_id

    def push_action(self, job_id: str, action: str) -> None:
        with self.cond:
            self.actions[job_id].append(action)

    def record_report(self, job_id: str, token: str | None, report: dict) -> tuple[int, dict]:
        with self.cond:
            if self.unavailable:
                return 503, {"message": "restarting"}
            if token != self.tokens.get(job_id):
                return 401, {"message": "bad token"}
            self.reports[job_id].append(report)
            self.cond.notify_all()
            queue = self.actions[job_id]
            return 200, {"action": queue.popleft() if queue else "none"}

    def record_api_call(self, call: ApiCall) -> tuple[int, dict]:
        with self.cond:
            self.api_calls.append(call)
            self.cond.notify_all()
        path = urllib.parse.unquote(call.path)
        if path.startswith("/tags/"):
            arn = path[len("/tags/") :]
            if call.method == "POST":
                self.tags[arn].update(json.loads(call.body or b"{}").get("tags", {}))
                return 200, {}
            if call.method == "GET":
                return 200, {"tags": self.tags[arn]}
            if call.method == "DELETE":
                for key in urllib.parse.parse_qs(call.query).get("tagKeys", []):
                    self.tags[arn].pop(key, None)
                return 200, {}
        if path == "/cancelSimulationJob" and call.method == "POST":
            job_id = self.arns.get(json.loads(call.body or b"{}").get("job", ""))
            if job_id:
                self.push_action(job_id, "cancel")
                return 200, {}
            return 400, {"message": "unknown job"}
        return 404, {"message": f"no such operation {call.method} {call.path}"}

    def phases(self, job_id: str) -> list[str]:
        with self.cond:
            seen: list[str] = []
            for report in self.reports[job_id]:
                if not seen or seen[-1] != report["phase"]:
                    seen.append(report["phase"])
            return seen

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self.cond.wait(min(remaining, 0.5))

    def wait_phase(self, job_id: str, phase: str, timeout: float = 60.0) -> dict:
        self.wait_for(
            lambda: any(r["phase"] == phase for r in self.reports[job_id]),
            timeout,
            f"{job_id} to report {phase} (got {self.phases(job_id)})",
        )
        return next(r for r in self.reports[job_id] if r["phase"] == phase)

    def count_phase_entries(self, job_id: str, phase: str) -> int:
        return self.phases(job_id).count(phase)


def _make_handler(plane: FakeControlPlane):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parsed = urllib.parse.urlsplit(self.path)
            if parsed.path.startswith(REPORT_PATH_PREFIX) and parsed.path.endswith("/report"):
                job_id = parsed.path[len(REPORT_PATH_PREFIX) : -len("/report")]
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
                self._reply(*plane.record_report(job_id, token, json.loads(body)))
                return
            call = ApiCall(self.command, parsed.path, parsed.query, dict(self.headers), body)
            self._reply(*plane.record_api_call(call))

        do_GET = do_POST = do_DELETE = do_PUT = _handle  # noqa: N815

    return Handler


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    plane = FakeControlPlane()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(plane))
    server.daemon_threads = True
    plane.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield plane
    server.shutdown()
    server.server_close()


# --- bundles --------------------------------------------------------------------------------------


def _load_build_bundles():
    spec = importlib.util.spec_from_file_location("example_build_bundles", EXAMPLES / "build_bundles.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


build_bundles = _load_build_bundles()


@pytest.fixture(scope="session")
def example_bundles(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("example-bundles")
    subprocess.run([str(EXAMPLES / "build_bundles.sh"), str(out)], check=True, capture_output=True)
    return {path.name: path for path in out.iterdir()}


def make_package(root: Path, name: str, files: dict[str, str], executables: tuple[str, ...] = ()) -> Path:
    """A minimal catkin package `name` under root, with extra files (relative path -> content)."""
    package = root / name
    (package / "launch").mkdir(parents=True, exist_ok=True)
    (package / "package.xml").write_text(
        f'<?xml version="1.0"?>\n<package format="2"><name>{name}</name><version>0.0.1</version>'
        f"<description>test</description><maintainer email='t@example.com'>t</maintainer>"
        f"<license>Apache-2.0</license><buildtool_depend>catkin</buildtool_depend></package>\n"
    )
    for rel, content in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if rel in executables:
            path.chmod(0o755)
    return package


def plain_bundle(tmp_path: Path, packages: list[Path], name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(build_bundles.plain_bundle_bytes(packages))
    return path


# --- runner harness -------------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every live process whose command line contains `text` (a psutil-free /proc scan)."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


@dataclass
class RunnerHandle:
    job_id: str
    spec: dict
    work_dir: Path
    proc: subprocess.Popen
    plane: FakeControlPlane

    def wait_phase(self, phase: str, timeout: float = 60.0) -> dict:
        return self.plane.wait_phase(self.job_id, phase, timeout)

    def wait_finished(self, timeout: float = 90.0) -> dict:
        report = self.wait_phase("Finished", timeout)
        self.proc.wait(timeout=30)
        return report

    def phases(self) -> list[str]:
        return self.plane.phases(self.job_id)

    def action(self, action: str) -> None:
        self.plane.push_action(self.job_id, action)

    def log(self, name: str) -> str:
        path = self.work_dir / "output" / "ros-logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def runner_log(self) -> str:
        path = self.work_dir / "runner.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class JobHarness:
    root: Path
    cache_dir: Path
    plane: FakeControlPlane
    store_config: ObjectStoreConfig
    started: list[RunnerHandle] = field(default_factory=list)

    @property
    def store(self):
        return open_store(self.store_config)

    def put(self, bucket: str, key: str, source: Path | bytes) -> str:
        store = self.store
        store.create_bucket(bucket)
        if isinstance(source, bytes):
            return store.put_bytes(bucket, key, source).etag
        return store.upload(source, bucket, key).etag

    def application(
        self,
        kind: str,
        key: str,
        package: str | None = None,
        launch_file: str | None = None,
        *,
        bucket: str = "apps",
        etag: str | None = None,
        version: str = "$LATEST",
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        suite: str = "ROS",
    ) -> dict:
        launch = {"environmentVariables": env or {}}
        if package:
            launch.update(packageName=package, launchFile=launch_file)
        if command:
            launch["command"] = command
        return {
            "kind": kind,
            "name": f"{kind}-app",
            "version": version,
            "arn": f"arn:aws:robomaker:{REGION}:{ACCOUNT}:{kind}-application/{kind}-app/1",
            "softwareSuite": {"name": suite, "version": "Melodic"},
            "sources": [{"s3Bucket": bucket, "s3Key": key, "etag": etag}],
            "launchConfig": launch,
        }

    def example_applications(
        self, bundles: dict[str, Path], sim_format: str = "tar.gz", robot_format: str = "tar.gz"
    ) -> list[dict]:
        """sim_world and robot_controller uploaded as apps/<app>.<format> (format: tar.gz | colcon-v2.tar)."""
        sim_key, robot_key = f"sim_world.{sim_format}", f"robot_controller.{robot_format}"
        self.put("apps", sim_key, bundles[sim_key])
        self.put("apps", robot_key, bundles[robot_key])
        return [
            self.application("simulation", sim_key, "sim_world", "world.launch"),
            self.application("robot", robot_key, "robot_controller", "controller.launch"),
        ]

    def spec(self, applications: list[dict], **overrides) -> dict:
        job_id = "sim-" + uuid.uuid4().hex[:12]
        run_id = time.strftime("%Y-%m-%dT%H-%M-%S.000Z_", time.gmtime()) + str(uuid.uuid4())
        arn = f"arn:aws:robomaker:{REGION}:{ACCOUNT}:simulation-job/{job_id}"
        work_dir = self.root / "runs" / job_id
        work_dir.mkdir(parents=True)
        spec = {
            "jobId": job_id,
            "jobArn": arn,
            "runId": run_id,
            "account": ACCOUNT,
            "region": REGION,
            "workDir": str(work_dir),
            "cacheDir": str(self.cache_dir),
            "objectStore": self.store_config.to_dict(),
            "controlPlane": {"url": self.plane.url, "token": uuid.uuid4().hex},
            "apiEndpoint": {
                "url": self.plane.url,
                "accessKeyId": "AKIDJOB",
                "secretAccessKey": "secret",
                "sessionToken": None,
            },
            "maxJobDurationInSeconds": 600,
            "failureBehavior": "Fail",
            "applications": applications,
            "dataSources": [],
            "outputLocation": {"s3Bucket": "out", "s3Prefix": "runs"},
            "recordAllRosTopics": False,
            "isolation": "auto",
            "restartCount": 0,
        }
        spec.update(overrides)
        if spec.get("outputLocation"):
            self.store.create_bucket("out")
        return spec

    def start(self, spec: dict) -> RunnerHandle:
        self.plane.register(spec["jobId"], spec["jobArn"], spec["controlPlane"]["token"])
        spec_path = self.root / "specs" / f"{spec['jobId']}.json"
        spec_path.parent.mkdir(exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "AWS_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "openrobomaker.runner", "--spec", str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "specs" / f"{spec['jobId']}.stderr", "wb"),  # noqa: SIM115
            start_new_session=True,
            env=env,
        )
        handle = RunnerHandle(spec["jobId"], spec, Path(spec["workDir"]), proc, self.plane)
        self.started.append(handle)
        return handle

    def run_to_end(self, spec: dict, timeout: float = 90.0) -> tuple[RunnerHandle, dict]:
        handle = self.start(spec)
        return handle, handle.wait_finished(timeout)

    def package_app(
        self,
        kind: str,
        package: str,
        files: dict[str, str],
        launch_file: str | None = None,
        executables: tuple[str, ...] = (),
        **app_kwargs,
    ) -> dict:
        """Build a one-package plain bundle, upload it as apps/<package>.tar.gz, return the application."""
        src = self.root / "src" / uuid.uuid4().hex[:8]
        bundle = plain_bundle(
            self.root, [make_package(src, package, files, executables)], f"{package}.tar.gz"
        )
        self.put("apps", f"{package}.tar.gz", bundle)
        return self.application(
            kind, f"{package}.tar.gz", package if launch_file else None, launch_file, **app_kwargs
        )

    def setup_only_bundle(self, setup_sh: str) -> bytes:
        """A plain bundle holding nothing but a setup.sh (for apps given as a command)."""
        return build_bundles.plain_bundle_bytes([], setup_sh)

    def live_processes(self, handle: RunnerHandle) -> list[tuple[int, str]]:
        return processes_mentioning(str(handle.work_dir))

    def output_keys(self, handle: RunnerHandle) -> list[str]:
        return sorted(o.key for o in self.store.list("out", f"runs/{handle.job_id}/"))

    def cleanup(self) -> list[tuple[int, str]]:
        """Stop runners still alive; return the job processes that survived their runner (should be none)."""
        for handle in self.started:
            if handle.proc.poll() is None:
                with_signal(handle.proc, signal.SIGTERM)
                try:
                    handle.proc.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    with_signal(handle.proc, signal.SIGKILL)
                    handle.proc.wait(timeout=10)
        leftovers = []
        deadline = time.monotonic() + 5
        for handle in self.started:
            while (found := processes_mentioning(str(handle.work_dir))) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid, cmdline in found:
                leftovers.append((pid, cmdline))
                with_pid_signal(pid, signal.SIGKILL)
        return leftovers


def with_signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def with_pid_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runner-cache")


@pytest.fixture
def jobs(tmp_path, control_plane, shared_cache) -> Iterator[JobHarness]:
    harness = JobHarness(
        root=tmp_path,
        cache_dir=shared_cache,
        plane=control_plane,
        store_config=ObjectStoreConfig(kind="local", root=str(tmp_path / "store")),
    )
    yield harness
    leftovers = harness.cleanup()
    assert not leftovers, f"job processes outlived their runner: {leftovers}"
