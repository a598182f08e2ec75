#!/usr/bin/env python3
"""A minimal ROS 1 simulation job against the same `roslaunch` run by hand, in one run; then throughput.

    python bench/sim_job_bench.py [--runs 10] [--duration 5] [--jobs 50] [--tiny-seconds 2]
                                  [--isolation auto] [--budget 360] [--bare-throughput] [--keep]
                                  [--write-results]

The application is one ROS package (`orm_bench`) with one rospy node that publishes five messages on
/bench at 10 Hz and writes the wall time of its first publish to a stamp file, then spins (or, for the
throughput part, exits 0 after --tiny-seconds, which ends a job Completed).

1. job   (x --runs): CreateSimulationJob with only a simulation application, maxJobDurationInSeconds
         --duration, compute.simulationUnitLimit 1, no output location; DescribeSimulationJob every 20 ms.
         Measures create -> Running, create -> first message, create -> terminal status (the job's wall).
2. bare  (x --runs, interleaved with 1 so both see the same machine load): `roslaunch -p PORT orm_bench
         talker.launch` of the same package extracted from the same bundle, in a clean environment
         (PATH=/usr/bin:/bin, so Debian's /usr/bin/python3; ROS_PACKAGE_PATH the extracted package; its own
         free master port, where nothing answers, so roslaunch starts a fresh master and rosout itself).
         Measures process start -> first message, and the wall time of process start -> --duration s ->
         SIGINT (Ctrl-C) -> every process exited.
   Overhead = (job wall p50 - bare wall p50) / bare wall p50. Targets: < 10 %; create -> Running p50 < 300 ms.
3. throughput: --jobs tiny jobs (simulationUnitLimit 1; the node exits 0 --tiny-seconds after its first
   message) created at once from as many threads, the server's limits.simulation_units and the account's
   concurrent_simulation_jobs set high enough for all; total wall (first create -> last terminal status as
   the client saw it, BatchDescribe every 0.25 s) and jobs/minute. --bare-throughput adds the same number
   of bare roslaunches at once as a reference (each stopped with SIGINT once its node has exited).

Where the time goes comes from the server's store (created_at, runner_started_at), each run's runner.log and
application log timestamps, and the node's stamp. CPU time of everything the server starts (runners,
namespaces, masters, nodes) and of the bare launches is read from cgroup-v1 cpuacct groups (root only).

Bounded: the throughput part gets what is left of --budget seconds (default 360) after parts 1 and 2;
jobs still running then are cancelled and reported as unfinished.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from cpu import CpuGroup, own_cpu_seconds  # noqa: E402

from helpers import free_port, most_at_once, running_server  # noqa: E402
from openrobomaker.objectstore import ObjectStoreConfig, open_store  # noqa: E402
from ros_bundles import node_launch, ros_package_bundle  # noqa: E402

ROLE = "arn:aws:iam::000000000000:role/BenchRole"
PACKAGE = "orm_bench"
TERMINAL = {"Completed", "Failed", "Canceled", "Terminated"}
POLL_SECONDS = 0.02
THROUGHPUT_POLL_SECONDS = 0.25
TINY_JOB_MAX_DURATION = 300  # a cap only: tiny jobs end when their node exits
RESULTS = HERE / "RESULTS.md"
START_MARK, END_MARK = "<!-- sim_job_bench:start -->", "<!-- sim_job_bench:end -->"
NOTES_MARK = "<!-- sim_job_bench:notes (kept when the numbers above are rewritten) -->"
TARGET_OVERHEAD, TARGET_RUNNING_MS = 0.10, 300.0

NODE = '''#!/usr/bin/env python3
"""Benchmark node: five messages on /bench at 10 Hz; the wall time of the first publish goes to a stamp."""
import os
import sys
import time

import rospy
from std_msgs.msg import String

run = os.environ.get("AWS_ROBOMAKER_SIMULATION_JOB_ID") or os.environ.get("BENCH_RUN_ID", "unknown")
stamp_dir = os.environ.get("BENCH_STAMP_DIR")
exit_after = float(os.environ.get("BENCH_EXIT_AFTER") or 0)


def stamp(suffix, text=""):
    if stamp_dir:
        tmp = os.path.join(stamp_dir, run + suffix + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(stamp_dir, run + suffix))


rospy.init_node("bench_talker")
pub = rospy.Publisher("/bench", String, queue_size=10)
pub.publish(String(data="bench 0"))
first = time.time()
stamp(".first", "%.6f\\n" % first)
print("bench_talker published its first message", flush=True)
try:
    rate = rospy.Rate(10)
    for count in range(1, 5):
        rate.sleep()
        pub.publish(String(data="bench %d" % count))
    if exit_after:
        while not rospy.is_shutdown() and time.time() < first + exit_after:
            time.sleep(0.05)
        stamp(".done", "%.6f\\n" % time.time())
        sys.exit(0)
    rospy.spin()
except rospy.ROSInterruptException:
    pass
'''


# --- small utilities -------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def count(values) -> dict:
    out: dict = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


MARKER_VAR = "ORM_SIM_JOB_BENCH_RUN"  # in every bare launch's environment, inherited by what it starts


def processes_mentioning(needle: bytes, where: tuple[str, ...] = ("environ",)) -> list[int]:
    """Pids (not this one) whose /proc/<pid>/<file> contains needle, for one of the files in `where`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in where:
            try:
                with open(f"/proc/{entry}/{name}", "rb") as fh:
                    if needle in fh.read():
                        found.append(int(entry))
                        break
            except OSError:
                continue
    return found


def kill_all(pids: list[int]) -> int:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def read_stamp(stamp_dir: Path, run: str, suffix: str = ".first") -> float | None:
    try:
        return float((stamp_dir / f"{run}{suffix}").read_text())
    except (OSError, ValueError):
        return None


# --- the application -------------------------------------------------------------------------------------


def build_bundle(path: Path) -> Path:
    launches = {
        "talker.launch": node_launch(PACKAGE, ("bench_talker", "bench_talker.py")),
        # Not required: the launcher counts a required node that ends, even with 0, as a crash.
        "tiny.launch": node_launch(PACKAGE, ("bench_talker", "bench_talker.py"), required=False),
    }
    return ros_package_bundle(path, PACKAGE, {"bench_talker.py": NODE}, launches)


def create_application(server, bundle: Path) -> str:
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket("bundles")
    store.upload(bundle, "bundles", bundle.name)
    app = server.client().create_simulation_application(
        name="sim-job-bench",
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        sources=[{"s3Bucket": "bundles", "s3Key": bundle.name, "architecture": "X86_64"}],
    )
    return app["arn"]


def job_request(app_arn: str, launch_file: str, duration: int, env: dict[str, str]) -> dict:
    return {
        "maxJobDurationInSeconds": duration,
        "iamRole": ROLE,
        "simulationApplications": [
            {
                "application": app_arn,
                "launchConfig": {
                    "packageName": PACKAGE,
                    "launchFile": launch_file,
                    "environmentVariables": env,
                },
            }
        ],
        "compute": {"simulationUnitLimit": 1},
    }


def job_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


# --- part 1: one job at a time ---------------------------------------------------------------------------


def run_job(server, rm, app_arn: str, duration: int, stamp_dir: Path, timeout: float = 90.0) -> dict:
    request = job_request(app_arn, "talker.launch", duration, {"BENCH_STAMP_DIR": str(stamp_dir)})
    t0 = time.time()
    arn = rm.create_simulation_job(**request)["arn"]
    seen: dict[str, float] = {}
    while True:
        job = rm.describe_simulation_job(job=arn)
        now = time.time()
        seen.setdefault(job["status"], now)
        if job["status"] in TERMINAL:
            break
        if now - t0 > timeout:
            rm.cancel_simulation_job(job=arn)
            raise RuntimeError(f"job {arn} not finished after {timeout}s (status {job['status']})")
        time.sleep(max(0.0, POLL_SECONDS - (time.time() - now)))
    job_id = job_id_of(arn)
    first_message = read_stamp(stamp_dir, job_id)
    result = {
        "job_id": job_id,
        "status": job["status"],
        "failure": f"{job.get('failureCode', '')} {job.get('failureReason', '')}".strip(),
        "statuses": list(seen),
        "running": seen["Running"] - t0 if "Running" in seen else None,
        "first_message": first_message - t0 if first_message else None,
        "wall": seen[job["status"]] - t0,
    }
    result.update(job_timeline(server, job_id, t0))
    return result


def db_row(server, job_id: str) -> dict:
    with contextlib.closing(sqlite3.connect(server.data_dir / "openrobomaker.db")) as db:
        row = db.execute(
            "SELECT created_at, runner_started_at, last_started_at, last_updated_at "
            "FROM simulation_jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
    keys = ("created", "runner_started", "last_started", "ended")
    return dict(zip(keys, row, strict=True)) if row else {}


RUNNER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
APP_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (.*)$")
# (event, log, pattern): the first line of that log matching the pattern marks the event.
MARKERS = (
    ("runner_log", "runner", r"^run \S+ of "),
    ("bundle_ready", "runner", r": \w+ bundle with \d+ overlay"),
    ("namespaces", "runner", r"^namespaces ready "),
    ("rosmaster", "runner", r"^started rosmaster "),
    ("rosout", "runner", r"^started rosout "),
    ("master_ready", "runner", r"^ROS master ready "),
    ("app_spawned", "runner", r"^started simulation-app "),
    ("max_duration", "runner", r"^maximum job duration"),
    ("app_stopped", "runner", r"^stopped simulation-app"),
    ("finished", "runner", r"^run finished: "),
    ("download", "app", r"^\[openrobomaker\] downloading bundle"),
    ("app_start", "app", r"^\[openrobomaker\] starting "),
)


def parse_log(path: Path, pattern: re.Pattern, utc: bool) -> list[tuple[float, str]]:
    events = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            match = pattern.match(line)
            if not match:
                continue
            if utc:
                when = dt.datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC)
            else:
                when = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")  # the runner's local time
            events.append((when.timestamp(), match[2]))
    return events


def job_timeline(server, job_id: str, t0: float) -> dict:
    """Seconds from t0 of each event in the store, runner.log and the application log."""
    out: dict = {
        f"db_{key}": (value - t0 if value else None) for key, value in db_row(server, job_id).items()
    }
    runner_logs = sorted((server.data_dir / "jobs" / job_id).glob("*/runner.log"))
    if not runner_logs:
        return out
    work_dir = runner_logs[-1].parent
    logs = {
        "runner": parse_log(work_dir / "runner.log", RUNNER_LINE, utc=False),
        "app": parse_log(work_dir / "output" / "ros-logs" / "SimulationApplicationLogs.log", APP_LINE, True),
    }
    for name, where, regex in MARKERS:
        found = next((when for when, text in logs[where] if re.search(regex, text)), None)
        out[f"log_{name}"] = found - t0 if found is not None else None
    out["isolation_mode"] = next(
        (text.split(": ", 1)[1] for _, text in logs["runner"] if text.startswith("isolation: ")), None
    )
    return out


# --- part 2: the same launch by hand ---------------------------------------------------------------------


def extract_bundle(bundle: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(target, filter="data")
    for script in (target / PACKAGE / "scripts").iterdir():
        script.chmod(0o755)
    return target


def start_bare(root: Path, run: str, launch_file: str, stamp_dir: Path, extra_env: dict | None = None):
    """`roslaunch -p PORT orm_bench LAUNCH` as a user would type it, in a clean environment of its own."""
    home = root / run
    home.mkdir(parents=True)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "ROS_HOME": str(home / ".ros"),
        "ROS_LOG_DIR": str(home / "log"),
        "ROS_MASTER_URI": f"http://localhost:{port}",
        "ROS_HOSTNAME": "localhost",
        "ROS_PACKAGE_PATH": str(root / "packages"),
        "BENCH_STAMP_DIR": str(stamp_dir),
        "BENCH_RUN_ID": run,
        MARKER_VAR: f"{os.getpid()}-{run}",
        **(extra_env or {}),
    }
    log = open(home / "roslaunch.log", "wb")  # noqa: SIM115 - closed by stop_bare
    process = subprocess.Popen(
        ["/usr/bin/roslaunch", "-p", str(port), PACKAGE, launch_file],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, log


def stop_bare(process: subprocess.Popen, log, timeout: float = 30.0) -> tuple[float, int]:
    """Ctrl-C: roslaunch stops its nodes, then rosout and the master it started. Then SIGKILL whatever of
    this launch is left (a Ctrl-C during roslaunch's start-up leaves its master behind).
    Returns when roslaunch had exited, and how many processes were left."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    ended = time.time()
    log.close()
    run = Path(log.name).parent.name
    return ended, kill_all(processes_mentioning(f"{MARKER_VAR}={os.getpid()}-{run}\0".encode()))


def run_bare(root: Path, run: str, duration: float | None, stamp_dir: Path, cpu: CpuGroup) -> dict:
    """One launch: Ctrl-C `duration` s after its start (None: once its node has published)."""
    t0 = time.time()
    process, log = start_bare(root, run, "talker.launch", stamp_dir)
    cpu.add(process.pid)  # roslaunch is still importing; everything it starts inherits the group
    if duration is None:
        while read_stamp(stamp_dir, run) is None and time.time() < t0 + 30:
            time.sleep(0.05)
    else:
        time.sleep(max(0.0, t0 + duration - time.time()))
    interrupted = time.time()
    end, leftovers = stop_bare(process, log)
    first_message = read_stamp(stamp_dir, run)
    return {
        "run": run,
        "exit": process.returncode,
        "leftovers": leftovers,
        "first_message": first_message - t0 if first_message else None,
        "stop": end - interrupted,
        "wall": end - t0,
    }


# --- part 3: throughput ----------------------------------------------------------------------------------


def run_throughput(server, app_arn: str, jobs: int, seconds: float, stamp_dir: Path, timeout: float) -> dict:
    rm = server.client(max_pool_connections=jobs)
    env = {"BENCH_STAMP_DIR": str(stamp_dir), "BENCH_EXIT_AFTER": f"{seconds:g}"}
    request = job_request(app_arn, "tiny.launch", TINY_JOB_MAX_DURATION, env)
    gate = threading.Barrier(jobs)

    def create(_: int) -> str:
        gate.wait()  # every thread sends its request at the same moment
        return rm.create_simulation_job(**request)["arn"]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        t0 = time.time()
        arns = list(pool.map(create, range(jobs)))
    submitted = time.time()
    seen: dict[str, dict[str, float]] = {arn: {} for arn in arns}
    final: dict[str, dict] = {}
    polls: list[float] = []
    while len(final) < jobs and time.time() < t0 + timeout:
        pending = [arn for arn in arns if arn not in final]
        for start in range(0, len(pending), 100):
            asked = time.time()
            answer = rm.batch_describe_simulation_job(jobs=pending[start : start + 100])
            now = time.time()
            polls.append(now - asked)
            for job in answer["jobs"]:
                seen[job["arn"]].setdefault(job["status"], now)
                if job["status"] in TERMINAL:
                    final[job["arn"]] = job
        time.sleep(THROUGHPUT_POLL_SECONDS)
    unfinished = [arn for arn in arns if arn not in final]
    not_in_budget = len(unfinished)
    for arn in unfinished:
        with contextlib.suppress(Exception):
            rm.cancel_simulation_job(job=arn)
    drain_until = time.time() + 25  # cancelled jobs end before the server stops: no runner left behind
    while unfinished and time.time() < drain_until:
        time.sleep(0.5)
        answer = rm.batch_describe_simulation_job(jobs=unfinished)
        ended = {job["arn"] for job in answer["jobs"] if job["status"] in TERMINAL}
        unfinished = [arn for arn in unfinished if arn not in ended]
    rows = [db_row(server, job_id_of(arn)) for arn in arns]
    timelines = []
    for arn in arns:
        timeline = job_timeline(server, job_id_of(arn), t0)
        first_message = read_stamp(stamp_dir, job_id_of(arn))
        timeline["running"] = seen[arn]["Running"] - t0 if "Running" in seen[arn] else None
        timeline["first_message"] = first_message - t0 if first_message else None
        node_exit = read_stamp(stamp_dir, job_id_of(arn), ".done")
        timeline["node_exit"] = node_exit - t0 if node_exit else None
        timeline["wall"] = seen[arn][final[arn]["status"]] - t0 if arn in final else None
        timelines.append(timeline)
    failures = count(
        f"{j['status']} {j.get('failureCode', '')}: {j.get('failureReason', '')}"
        for j in final.values()
        if j["status"] != "Completed"
    )
    return {
        "jobs": jobs,
        "submit": submitted - t0,
        "wall": max(t["wall"] for t in timelines if t["wall"] is not None) if final else None,
        "server_wall": max((t["db_ended"] for t in timelines if t.get("db_ended")), default=None),
        "polls": polls,
        "completed": sum(1 for j in final.values() if j["status"] == "Completed"),
        "unfinished": not_in_budget,
        "not_ended_after_cancel": len(unfinished),
        "statuses": count(j["status"] for j in final.values()),
        "failures": failures,
        "published": sum(1 for t in timelines if t["first_message"] is not None),
        "timelines": timelines,
        "peak_running": most_at_once(
            [(r["last_started"], r["ended"]) for r in rows if r.get("last_started") and r.get("ended")]
        ),
    }


def run_bare_throughput(root: Path, jobs: int, seconds: float, stamp_dir: Path, timeout: float) -> dict:
    """The same number of bare roslaunches at once; each gets Ctrl-C once its node has exited (roslaunch
    itself keeps running while the master and rosout it started are alive)."""
    t0 = time.time()
    env = {"BENCH_EXIT_AFTER": f"{seconds:g}"}
    runs = [start_bare(root, f"tput-{i}", "tiny.launch", stamp_dir, env) for i in range(jobs)]
    live = dict(enumerate(runs))
    ends: list[float] = []
    stoppers: list[threading.Thread] = []

    def stop(process, log, timeout: float = 30.0) -> None:
        ends.append(stop_bare(process, log, timeout)[0])

    while live and time.time() < t0 + timeout:
        for i in list(live):
            if (stamp_dir / f"tput-{i}.done").exists() or live[i][0].poll() is not None:
                stoppers.append(threading.Thread(target=stop, args=live.pop(i)))
                stoppers[-1].start()
        time.sleep(0.05)
    for process, log in live.values():  # out of time: stop them anyway
        stoppers.append(threading.Thread(target=stop, args=(process, log, 5.0)))
        stoppers[-1].start()
    for thread in stoppers:
        thread.join()
    return {
        "wall": max(ends) - t0,
        "exit_codes": count(process.returncode for process, _ in runs),
        "published": sum(1 for i in range(jobs) if read_stamp(stamp_dir, f"tput-{i}") is not None),
        "unfinished": len(live),
    }


# --- report ----------------------------------------------------------------------------------------------


def spans(jobs: list[dict], a: str | tuple[str, ...] | None, b: str) -> list[float]:
    """Per job: seconds from event a (None: the create call; a tuple: the first of them the job has) to b."""
    out = []
    for job in jobs:
        starts = [0.0] if a is None else [job.get(k) for k in ((a,) if isinstance(a, str) else a)]
        start = next((v for v in starts if v is not None), None)
        if start is not None and job.get(b) is not None:
            out.append(job[b] - start)
    return out


PHASES = (
    # (phase, from, to, what happens) — consecutive, so create -> Running is their sum
    ("create request", None, "db_created", "API call until the job's row is written"),
    ("admission", "db_created", "db_runner_started", "controller wakes, writes spec.json, spawns the runner"),
    (
        "runner start-up",
        "db_runner_started",
        "log_runner_log",
        "runner forked from the pre-imported zygote, first report",
    ),
    (
        "preparing",
        "log_runner_log",
        "log_bundle_ready",
        "namespaces (forked holder), bundle download + safe extract",
    ),
    ("namespaces", "log_bundle_ready", "log_namespaces", "message cache check"),
    (
        "API forwarder",
        "log_namespaces",
        "log_rosmaster",
        "listening socket from the holder, forwarder thread in the runner",
    ),
    (
        "ROS master",
        "log_rosmaster",
        "log_rosout",
        "rosmaster spawned (not waited for: it starts in parallel)",
    ),
    ("rosout + service node + app", "log_rosout", "log_app_spawned", "three spawns, nothing waited for"),
    ("Running seen", "log_app_spawned", "running", "phase report over HTTP, store, the client's next poll"),
)
AFTER_RUNNING = (
    (
        "master ready",
        "log_app_spawned",
        "log_master_ready",
        "app spawned → master answering with /run_id (the launcher waits for it)",
    ),
    ("launch", "log_app_spawned", "first_message", "app spawned → node's first publish (roslaunch, node)"),
    ("max duration", "log_app_spawned", "log_max_duration", "the job's maxJobDurationInSeconds (part 1)"),
    ("node works", "first_message", "node_exit", "node publishes, exits 0 after its time (part 3)"),
    (
        "stop application",
        ("log_max_duration", "node_exit"),
        "log_app_stopped",
        "SIGINT to roslaunch (1) / node exited (3) → launcher and every node gone",
    ),
    (
        "stop infrastructure",
        "log_app_stopped",
        "log_finished",
        "namespace killed (services node, rosout, master with it), forwarder closed",
    ),
    ("final report", "log_finished", "db_ended", "runner's end → the server recorded the terminal status"),
    ("terminal seen", "db_ended", "wall", "→ the client's next poll saw it"),
)


def build_report(
    args, meta: dict, jobs: list[dict], bares: list[dict], tput: dict | None, btput: dict | None
) -> list[str]:
    done = [j for j in jobs if j["status"] == "Completed"]
    running = [v * 1000 for v in spans(done, None, "running")]
    job_first, job_wall = spans(done, None, "first_message"), spans(done, None, "wall")
    bare_first = [b["first_message"] for b in bares if b["first_message"] is not None]
    bare_wall = [b["wall"] for b in bares]
    overhead = (p50(job_wall) - p50(bare_wall)) / p50(bare_wall) if job_wall and bare_wall else None
    pairs = [(j["wall"] - b["wall"]) / b["wall"] for j, b in zip(jobs, bares, strict=False) if j in done]
    stop_job, stop_bare_ = spans(done, "log_max_duration", "wall"), [b["stop"] for b in bares]
    lines = [
        f"Run {meta['date']}; machine: {meta['machine']}; load average (1/5/15 min) before "
        f"{meta['load_before']}, after {meta['load_after']}; job isolation `{meta['isolation']}`; whole "
        f"bench {meta['bench_wall']:.0f} s.",
        "",
        f"**Minimal ROS 1 job vs the same `roslaunch` by hand**, {len(jobs)} runs each, interleaved: one "
        "simulation application (one rospy node), no robot application, no output location, "
        f"maxJobDurationInSeconds {args.duration}; bare: `roslaunch` starting its own master, Ctrl-C after "
        f"{args.duration} s. Job statuses {count(j['status'] for j in jobs)}; bare exit codes "
        f"{count(b['exit'] for b in bares)}; processes left behind: bare "
        f"{sum(b['leftovers'] for b in bares)}, jobs {meta.get('leftovers', 0)}.",
        "",
        "| measure | job p50 | job p90 | bare p50 | bare p90 |",
        "|---|---:|---:|---:|---:|",
        f"| create → Running, ms | **{fmt(p50(running), 1, 0)}** | {fmt(pct(running, 90), 1, 0)} | | |",
        f"| create (job) / process start (bare) → first message, s | {fmt(p50(job_first))} | "
        f"{fmt(pct(job_first, 90))} | {fmt(p50(bare_first))} | {fmt(pct(bare_first, 90))} |",
        f"| wall: create → terminal (job) / start → all exited (bare), s | **{fmt(p50(job_wall))}** | "
        f"{fmt(pct(job_wall, 90))} | **{fmt(p50(bare_wall))}** | {fmt(pct(bare_wall, 90))} |",
        f"| stop: max duration (job) / Ctrl-C (bare) → ended, s | {fmt(p50(stop_job))} | "
        f"{fmt(pct(stop_job, 90))} | {fmt(p50(stop_bare_))} | {fmt(pct(stop_bare_, 90))} |",
    ]
    add = lines.append
    if meta.get("cpu_job") is not None:
        add(
            "| CPU per run, s: job processes (runner, namespace, master, nodes) / the bare launch | "
            f"{fmt(meta['cpu_job'])} | | {fmt(meta['cpu_bare'])} | |"
        )
        add(f"| CPU per run, s: the server process (API, 20 ms polling) | {fmt(meta['cpu_server'])} | | | |")
    add("")
    add("| target | result | |")
    add("|---|---|---|")
    if overhead is not None:
        met = "met" if overhead < TARGET_OVERHEAD else "**not met**"
        add(
            f"| overhead (job wall p50 − bare wall p50) / bare wall p50 < 10 % | {overhead * 100:.0f} % "
            f"(median of per-pair ratios {fmt(p50(pairs), 100, 0)} %) | {met} |"
        )
    if running:
        met = "met" if p50(running) < TARGET_RUNNING_MS else "**not met**"
        add(f"| create → Running p50 < 300 ms | {p50(running):.0f} ms | {met} |")
    if tput is not None:
        lines.extend(throughput_lines(args, meta, tput, btput))
    lines.extend(phase_lines(done, tput))
    return lines


def phase_lines(done: list[dict], tput: dict | None) -> list[str]:
    loaded = [t for t in tput["timelines"] if t.get("wall") is not None] if tput else []
    n = tput["jobs"] if tput else 0
    lines = [
        "",
        "Where a job's time goes, seconds (from the store, runner.log, the application log, the node's "
        "stamp; "
        "the first rows add up to create → Running)"
        + (f"; alone (part 1) and among the {n} at once (part 3):" if tput else ":"),
        "",
        "| phase | what happens | alone p50 | alone p90 |"
        + (f" {n} at once p50 | {n} at once p90 |" if tput else ""),
        "|---|---|---:|---:|" + ("---:|---:|" if tput else ""),
    ]
    for name, a, b, what in PHASES + AFTER_RUNNING:
        alone = spans(done, a, b)
        row = f"| {name} | {what} | {fmt(p50(alone), 1, 3)} | {fmt(pct(alone, 90), 1, 3)} |"
        if tput:
            busy = spans(loaded, a, b)
            row += f" {fmt(p50(busy), 1, 3)} | {fmt(pct(busy, 90), 1, 3)} |"
        if alone or (tput and spans(loaded, a, b)):
            lines.append(row)
    return lines


def throughput_lines(args, meta: dict, tput: dict, btput: dict | None) -> list[str]:
    n = tput["jobs"]
    timelines = tput["timelines"]
    to_running = spans(timelines, None, "running")
    to_end = spans(timelines, None, "wall")
    lines = [
        "",
        f"**Throughput**: {n} tiny jobs created at once ({n} threads), `compute.simulationUnitLimit` 1, "
        f"server `limits.simulation_units` {meta['units']}; each node publishes, then exits 0 "
        f"{args.tiny_seconds:g} s "
        f"after its first message (the job ends Completed); BatchDescribe every {THROUGHPUT_POLL_SECONDS} s. "
        f"Time budget for this part {meta['tput_budget']:.0f} s.",
        "",
        "| measure | result |",
        "|---|---|",
        f"| all {n} CreateSimulationJob answered | {fmt(tput['submit'])} s |",
    ]
    add = lines.append
    if tput["wall"] is not None and not tput["unfinished"]:
        add(
            f"| total wall, first create → last terminal status | **{tput['wall']:.1f} s** (the server "
            f"recorded the last end at {fmt(tput['server_wall'], 1, 1)} s) |"
        )
        add(f"| jobs per minute | **{n / tput['wall'] * 60:.1f}** |")
    elif tput["wall"] is not None:
        budget = meta["tput_budget"]
        add(f"| finished within the budget | {n - tput['unfinished']} of {n}; last at {tput['wall']:.1f} s |")
        add(f"| jobs per minute (completed / budget) | **≥ {tput['completed'] / budget * 60:.1f}** |")
    unfinished = f"; unfinished (cancelled) {tput['unfinished']}" if tput["unfinished"] else ""
    add(f"| statuses | {tput['statuses']}{unfinished} |")
    for reason, times in tput["failures"].items():
        add(f"| failed ×{times} | {reason[:200]} |")
    add(f"| nodes that published | {tput['published']} / {n} |")
    add(
        f"| create → Running per job, p50 / p90 / max | {fmt(p50(to_running))} / "
        f"{fmt(pct(to_running, 90))} / {fmt(max(to_running, default=None))} s |"
    )
    add(
        f"| create → terminal per job, p50 / p90 / max | {fmt(p50(to_end))} / {fmt(pct(to_end, 90))} / "
        f"{fmt(max(to_end, default=None))} s |"
    )
    add(f"| most jobs Running at once | {tput['peak_running']} |")
    add(
        f"| the client's BatchDescribe of the unfinished jobs, p50 / max | {fmt(p50(tput['polls']), 1000, 0)}"
        f" / {fmt(max(tput['polls'], default=None), 1000, 0)} ms ({len(tput['polls'])} calls) |"
    )
    if meta.get("cpu_tput") is not None:
        cpu = meta["cpu_tput"]
        add(
            f"| CPU of everything the server started | {cpu:.0f} s = {cpu / n:.2f} s per job (a bare launch: "
            f"{fmt(meta.get('cpu_bare'))} s); on {meta['ncpu']} cores ≥ {cpu / meta['ncpu']:.0f} s of wall |"
        )
        add(f"| CPU of the server process itself | {meta['server_cpu_tput']:.1f} s |")
    if btput is not None:
        cpu = f"; CPU {meta['cpu_btput']:.0f} s" if meta.get("cpu_btput") is not None else ""
        add(
            f"| reference: {n} bare roslaunches at once | {btput['wall']:.1f} s = "
            f"{n / btput['wall'] * 60:.1f} per minute; exit codes {btput['exit_codes']}; "
            f"published {btput['published']}/{n}{cpu} |"
        )
    return lines


def print_runs(jobs: list[dict], bares: list[dict]) -> None:
    print(
        f"{'run':>3} {'job':>16} {'status':>9} {'Running ms':>10} {'1st msg s':>9} {'wall s':>7}"
        f" | {'bare 1st msg s':>14} {'bare wall s':>11}"
    )
    for i, (j, b) in enumerate(zip(jobs, bares, strict=False)):
        print(
            f"{i:>3} {j['job_id']:>16} {j['status']:>9} {fmt(j['running'], 1000, 0):>10} "
            f"{fmt(j['first_message']):>9} {fmt(j['wall']):>7} | "
            f"{fmt(b['first_message']):>14} {fmt(b['wall']):>11}"
        )
        if j["failure"]:
            print(f"    {j['failure']}")


def write_results(lines: list[str]) -> None:
    """Replace only this bench's section of RESULTS.md, read right before writing; keep its notes."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = text.find(START_MARK), text.find(END_MARK)
    present = start != -1 and end > start
    notes = f"{NOTES_MARK}\n"
    if present and NOTES_MARK in text[start:end]:
        notes = text[text.index(NOTES_MARK, start) : end].rstrip() + "\n"
    heading = "## Simulation job vs bare `roslaunch` (issue 3, item 10) — `bench/sim_job_bench.py`"
    section = f"{START_MARK}\n{heading}\n\n" + "\n".join(lines) + "\n\n" + notes + END_MARK
    if present:
        text = text[:start] + section + text[end + len(END_MARK) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=int, default=5, help="maxJobDurationInSeconds / bare run, s")
    parser.add_argument("--jobs", type=int, default=50, help="concurrent tiny jobs (0: skip part 3)")
    parser.add_argument("--tiny-seconds", type=float, default=2.0, help="how long a tiny job's node runs")
    parser.add_argument("--isolation", default="auto", choices=("auto", "netns", "userns", "none"))
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole bench")
    parser.add_argument(
        "--bare-throughput", action="store_true", help="also run --jobs bare launches at once"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server data, logs)")
    parser.add_argument(
        "--write-results", action="store_true", help=f"replace this bench's section of {RESULTS}"
    )
    args = parser.parse_args()
    if not Path("/usr/bin/roslaunch").exists():
        print("ROS 1 (Debian ros-base) is not installed: /usr/bin/roslaunch is missing", file=sys.stderr)
        return 2

    bench_start = time.time()
    ncpu = len(os.sched_getaffinity(0))
    meta: dict = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ncpu": ncpu,
        "machine": f"{ncpu} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "load_before": load_average(),
        "units": max(64, args.jobs),
        "isolation": args.isolation,
    }
    groups = {name: CpuGroup(name) for name in ("server", "bare", "warm", "btput")}
    jobs: list[dict] = []
    bares: list[dict] = []
    tput = btput = None
    try:
        with contextlib.ExitStack() as stack:
            if args.keep:
                tmp_dir = Path(tempfile.mkdtemp(prefix="orm-sim-job-bench-"))
                print(f"keeping {tmp_dir}", flush=True)
            else:
                tmp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orm-sim-job-bench-")))
            os.chmod(tmp_dir, 0o755)
            stamps = tmp_dir / "stamps"
            stamps.mkdir()
            stamps.chmod(0o777)
            bundle = build_bundle(tmp_dir / "orm_bench.tar.gz")
            bare_root = tmp_dir / "bare"
            extract_bundle(bundle, bare_root / "packages")
            config = {
                "isolation": args.isolation,
                "limits": {"simulation_units": meta["units"], "concurrent_simulation_jobs": meta["units"]},
            }
            (tmp_dir / "server").mkdir()
            with running_server(config, data_dir=tmp_dir / "server") as server:
                pid = server.process.pid
                groups["server"].add(pid)
                app_arn = create_application(server, bundle)
                rm = server.client()
                print("warm-up: one job (builds the ROS message cache) and one bare launch", flush=True)
                warm = run_job(server, rm, app_arn, 1, stamps)
                if warm["status"] != "Completed":
                    raise SystemExit(f"warm-up job ended {warm['status']}: {warm['failure']}")
                run_bare(bare_root, "bare-warm-up", None, stamps, groups["warm"])
                meta["isolation"] = warm.get("isolation_mode") or args.isolation
                cpu_job, cpu_server, cpu_bare = [], [], []
                for index in range(args.runs):
                    total, own = groups["server"].seconds(), own_cpu_seconds(pid)
                    jobs.append(run_job(server, rm, app_arn, args.duration, stamps))
                    time.sleep(0.2)  # the runner reports its end before it exits
                    if total is not None:
                        server_cpu = own_cpu_seconds(pid) - own
                        cpu_server.append(server_cpu)
                        cpu_job.append(groups["server"].seconds() - total - server_cpu)
                    before = groups["bare"].seconds()
                    bares.append(run_bare(bare_root, f"bare-{index}", args.duration, stamps, groups["bare"]))
                    if before is not None:
                        cpu_bare.append(groups["bare"].seconds() - before)
                    j, b = jobs[-1], bares[-1]
                    print(
                        f"run {index}: job {j['status']}, Running after {fmt(j['running'], 1000, 0)} ms, "
                        f"wall {fmt(j['wall'])} s; bare wall {fmt(b['wall'])} s",
                        flush=True,
                    )
                meta.update(cpu_job=p50(cpu_job), cpu_server=p50(cpu_server), cpu_bare=p50(cpu_bare))
                if args.jobs:
                    left = args.budget - (time.time() - bench_start) - 30
                    if args.bare_throughput:
                        left *= 0.6
                    meta["tput_budget"] = max(30.0, left)
                    print(
                        f"throughput: {args.jobs} tiny jobs at once (budget {meta['tput_budget']:.0f} s)",
                        flush=True,
                    )
                    total, own = groups["server"].seconds(), own_cpu_seconds(pid)
                    tput = run_throughput(
                        server, app_arn, args.jobs, args.tiny_seconds, stamps, meta["tput_budget"]
                    )
                    time.sleep(0.5)
                    meta["server_cpu_tput"] = own_cpu_seconds(pid) - own
                    if total is not None:
                        meta["cpu_tput"] = groups["server"].seconds() - total
                time.sleep(1.0)  # runners exit once their final report is acknowledged
            # Runners outlive a stopped server by design; anything of this bench still alive now is a leak.
            meta["leftovers"] = kill_all(processes_mentioning(str(tmp_dir).encode(), ("cmdline", "environ")))
            if meta["leftovers"]:
                print(f"warning: killed {meta['leftovers']} leftover processes of the jobs", flush=True)
            if args.jobs and args.bare_throughput:
                left = max(30.0, args.budget - (time.time() - bench_start) - 5)
                print(f"reference: {args.jobs} bare roslaunches at once (budget {left:.0f} s)", flush=True)
                group = groups["btput"]
                group.add(os.getpid())  # the launches inherit the group; this process only waits meanwhile
                try:
                    btput = run_bare_throughput(bare_root, args.jobs, args.tiny_seconds, stamps, left)
                    meta["cpu_btput"] = group.seconds()
                finally:
                    if group.path is not None:
                        with contextlib.suppress(OSError):
                            (CpuGroup.ROOT / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        for group in groups.values():
            group.close()
    meta["load_after"] = load_average()
    meta["bench_wall"] = time.time() - bench_start
    print()
    print_runs(jobs, bares)
    print()
    lines = build_report(args, meta, jobs, bares, tput, btput)
    print("\n".join(lines))
    if args.write_results:
        write_results(lines)
        print(f"\nwrote the sim_job_bench section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
