#!/usr/bin/env python3
"""Batch throughput: N short jobs in one simulation job batch at maxConcurrency C, against the ideal of the
same N processes run by `xargs -P C`, in the same run on the same host.

    python bench/batch_bench.py [--jobs 200] [--concurrency 20] [--seconds 1] [--isolation auto] [--repeat 3]

Each member job is a simulation application whose launch `command` is one short shell process: it stamps
its start, sleeps --seconds, stamps its end and exits 0 (which ends the job Completed). xargs runs exactly
that command line, and each of --repeat pairs runs `xargs` and then the batch on a fresh server: one pair's
ratio varies by about +-0.03 on a busy 2-core VM, so the median pair is reported in full, with every
pair's ratio. The script prints the wall-time ratio (target <= 1.15), the scheduling cost per job, and
where each member's time went, read from the server's store and the processes' own stamps:

    refill     a member of the batch ended -> the batch controller created the next member
    admit      member created -> the job controller started its runner process
    boot       runner started -> job Running (namespaces, bundle, ROS master, service node)
    launch     Running -> the application's process started
    work       the process itself (--seconds)
    wind_down  the process ended -> the job's end recorded (exit noticed, teardown, uploads, final report)

and how many of the processes ran, on average per 0.25 s from the first start: slots that start and end in
step show as dips every cycle (their set-ups contending), a run-out of work as the falling tail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cpu import CpuGroup, own_cpu_seconds  # noqa: E402

from helpers import most_at_once, running_server  # noqa: E402
from openrobomaker.objectstore import ObjectStoreConfig, open_store  # noqa: E402

ROLE = "arn:aws:iam::000000000000:role/BenchRole"
TERMINAL = {"Completed", "Failed", "Canceled", "TimedOut"}
RUNNING_BUCKET_SECONDS = 0.25
POLL_SECONDS = 1.0  # how often the script asks DescribeSimulationJobBatch (the timings come from the store)
PHASES = ("refill", "admit", "boot", "launch", "work", "wind_down")
TARGET_RATIO = 1.15  # issue 4: batch wall time <= 1.15 x the xargs time


def work_command(seconds: float) -> str:
    """The one process each job (and each xargs slot) runs; $JOB names it in the stamp file."""
    stamp = 'echo "$JOB $1 $(date +%s.%N)" >> "$STAMP_FILE"'
    return f"s() {{ {stamp}; }}; s start; sleep {seconds}; s end"


def tiny_bundle() -> bytes:
    """The application's bundle: the command needs nothing from it, but every application has one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"# nothing to set up\n"
        info = tarfile.TarInfo("setup.sh")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_stamps(path: Path) -> dict[str, dict[str, float]]:
    runs: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        job, what, when = line.split()
        runs.setdefault(job, {})[what] = float(when)
    return runs


# --- the ideal: xargs ------------------------------------------------------------------------------------


def run_xargs(jobs: int, concurrency: int, seconds: float, stamps: Path) -> float:
    inner = work_command(seconds).replace('"$JOB', '"xargs-$0')
    command = f"seq {jobs} | xargs -P {concurrency} -I{{}} sh -c {shlex.quote(inner)} {{}}"
    started = time.monotonic()
    subprocess.run(["sh", "-c", command], check=True, env={**os.environ, "STAMP_FILE": str(stamps)})
    return time.monotonic() - started


# --- the batch -------------------------------------------------------------------------------------------


def create_app(server) -> str:
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    store.create_bucket("bundles")
    store.put_bytes("bundles", "bench.tar.gz", tiny_bundle())
    app = server.client().create_simulation_application(
        name="bench-sleeper",
        robotSoftwareSuite={"name": "General"},
        simulationSoftwareSuite={"name": "SimulationRuntime"},
        sources=[{"s3Bucket": "bundles", "s3Key": "bench.tar.gz", "architecture": "X86_64"}],
    )
    return app["arn"]


def job_request(app_arn: str, seconds: float, stamps: Path) -> dict:
    command = work_command(seconds).replace("$JOB", "$AWS_ROBOMAKER_SIMULATION_JOB_ID")
    return {
        "maxJobDurationInSeconds": 600,
        "iamRole": ROLE,
        "simulationApplications": [
            {
                "application": app_arn,
                "launchConfig": {
                    "command": ["/bin/sh", "-c", command],
                    "environmentVariables": {"STAMP_FILE": str(stamps)},
                },
            }
        ],
        "compute": {"simulationUnitLimit": 1},
    }


def warm_up(server, app_arn: str, seconds: float, stamps: Path) -> None:
    """One job first: the first run on a host builds ROS message packages into the cache."""
    rm = server.client()
    arn = rm.create_simulation_job(**job_request(app_arn, seconds, stamps))["arn"]
    while (job := rm.describe_simulation_job(job=arn))["status"] not in {"Completed", "Failed", "Terminated"}:
        time.sleep(0.2)
    if job["status"] != "Completed":
        raise SystemExit(f"warm-up job ended {job['status']}: {job.get('failureReason')}")


def run_batch(server, app_arn: str, jobs: int, concurrency: int, seconds: float, stamps: Path) -> dict:
    rm = server.client()
    requests = [job_request(app_arn, seconds, stamps) for _ in range(jobs)]
    started = time.monotonic()
    batch = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": concurrency, "timeoutInSeconds": 3600},
        createSimulationJobRequests=requests,
    )
    while (batch := rm.describe_simulation_job_batch(batch=batch["arn"]))["status"] not in TERMINAL:
        time.sleep(POLL_SECONDS)
    batch["clientWall"] = time.monotonic() - started
    return batch


def member_rows(server, batch_arn: str) -> list[dict]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "openrobomaker.db")) as db:
        rows = db.execute(
            "SELECT job_id, status, created_at, runner_started_at, last_started_at, last_updated_at "
            "FROM simulation_jobs WHERE batch_arn = ? ORDER BY created_at",
            (batch_arn,),
        ).fetchall()
    keys = ("job_id", "status", "created", "runner", "running", "ended")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def phases(members: list[dict], stamps: dict[str, dict[str, float]], concurrency: int) -> dict[str, list]:
    """Per-member durations of each phase (seconds)."""
    ends = sorted(m["ended"] for m in members)
    out: dict[str, list[float]] = {name: [] for name in PHASES}
    for index, member in enumerate(members):
        stamp = stamps.get(member["job_id"], {})
        if index >= concurrency:
            # The (index - C)-th end freed the slot this member took.
            out["refill"].append(member["created"] - ends[index - concurrency])
        out["admit"].append(member["runner"] - member["created"])
        out["boot"].append(member["running"] - member["runner"])
        if "start" in stamp and "end" in stamp:
            out["launch"].append(stamp["start"] - member["running"])
            out["work"].append(stamp["end"] - stamp["start"])
            out["wind_down"].append(member["ended"] - stamp["end"])
    return out


def describe(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"mean {statistics.fmean(values):6.3f}  median {statistics.median(values):6.3f}  p95 {p95:6.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--isolation", default="auto", choices=("auto", "netns", "userns", "none"))
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="pairs measured one after the other; the median pair is reported",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    pairs = []
    with tempfile.TemporaryDirectory(prefix="orm-batch-bench-") as tmp:
        os.chmod(tmp, 0o755)
        for number in range(1, args.repeat + 1):
            pair_dir = Path(tmp) / f"pair-{number}"
            pair_dir.mkdir()
            pairs.append(measure_pair(args, pair_dir))
            print(f"pair {number}: ratio {pairs[-1].ratio:.3f}", file=sys.stderr, flush=True)
    median = sorted(pairs, key=lambda pair: pair.ratio)[len(pairs) // 2]
    if len(pairs) > 1:
        print(f"{len(pairs)} pairs (xargs, then the batch, each on a fresh server); the median pair in full:")
    report(args, median)
    each = " ".join(f"{pair.ratio:.3f}" for pair in pairs)
    verdict = "met" if median.ratio <= TARGET_RATIO else "NOT met"
    print(
        f"ratio, median of {len(pairs)} pair(s) {median.ratio:6.3f}   target <= {TARGET_RATIO}: {verdict}"
        f"   (each, in order: {each})"
    )
    return 0


@dataclass
class Pair:
    """One measurement: `xargs` and then the batch, in the same folder."""

    xargs_wall: float
    xargs_cpu: float
    batch: dict
    members: list[dict]
    stamps: dict[str, dict[str, float]]

    @property
    def ratio(self) -> float:
        return server_wall(self.batch) / self.xargs_wall


def server_wall(batch: dict) -> float:
    return batch["lastUpdatedAt"].timestamp() - batch["createdAt"].timestamp()


def measure_pair(args, tmp_dir: Path) -> Pair:
    config = {
        "isolation": args.isolation,
        "limits": {
            "simulation_units": args.concurrency,
            "concurrent_simulation_jobs": args.concurrency * 2,
        },
    }
    xargs_stamps, batch_stamps = tmp_dir / "xargs.txt", tmp_dir / "batch.txt"
    cpu_before = children_cpu_seconds()
    xargs_wall = run_xargs(args.jobs, args.concurrency, args.seconds, xargs_stamps)
    xargs_cpu = children_cpu_seconds() - cpu_before
    (tmp_dir / "server").mkdir()
    meter = CpuGroup("batch")
    try:
        with running_server(config, data_dir=tmp_dir / "server") as server:
            meter.add(server.process.pid)
            app_arn = create_app(server)
            warm_up(server, app_arn, args.seconds, tmp_dir / "warmup.txt")
            cpu_before, server_before = meter.seconds(), own_cpu_seconds(server.process.pid)
            batch = run_batch(server, app_arn, args.jobs, args.concurrency, args.seconds, batch_stamps)
            cpu_after = meter.seconds()
            batch["serverCpuSeconds"] = own_cpu_seconds(server.process.pid) - server_before
            batch["cpuSeconds"] = None if cpu_before is None else cpu_after - cpu_before
            members = member_rows(server, batch["arn"])
    except Exception:
        # The server's own log says why a call failed; the temporary directory is about to go.
        log_path = tmp_dir / "server" / "server.log"
        if log_path.exists():
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        meter.close()
    return Pair(xargs_wall, xargs_cpu, batch, members, read_stamps(batch_stamps))


def running_over_time(intervals: list[tuple[float, float]], bucket: float) -> list[float]:
    """How many processes ran, on average, in each `bucket` seconds from the first start: a batch whose slots
    start and end in step shows as dips every cycle; `xargs` shows flat tops."""
    if not intervals:
        return []
    origin = min(start for start, _ in intervals)
    last = max(end for _, end in intervals)
    busy = [0.0] * (int((last - origin) / bucket) + 1)
    for start, end in intervals:
        index = int((start - origin) / bucket)
        while index * bucket < end - origin:
            low, high = max(start - origin, index * bucket), min(end - origin, (index + 1) * bucket)
            busy[index] += max(0.0, high - low) / bucket
            index += 1
    return busy


def report(args, pair: Pair) -> None:
    xargs_wall, xargs_cpu, batch, members, stamps = (
        pair.xargs_wall,
        pair.xargs_cpu,
        pair.batch,
        pair.members,
        pair.stamps,
    )
    wall = server_wall(batch)
    statuses = {}
    for member in members:
        statuses[member["status"]] = statuses.get(member["status"], 0) + 1
    durations = phases(members, stamps, args.concurrency)
    ideal_per_job = xargs_wall * args.concurrency / args.jobs
    batch_per_job = wall * args.concurrency / args.jobs
    control_plane = [
        a + r for a, r in zip(durations["admit"][args.concurrency :], durations["refill"], strict=True)
    ]
    intervals = [(s["start"], s["end"]) for s in stamps.values() if "start" in s and "end" in s]
    peak = most_at_once(intervals)
    print(
        f"jobs {args.jobs}, maxConcurrency {args.concurrency}, work {args.seconds}s, isolation {args.isolation}"
    )
    print(
        f"batch status {batch['status']}; members {statuses}; failed requests {len(batch['failedRequests'])}"
    )
    print(f"xargs -P {args.concurrency} wall      {xargs_wall:8.2f} s")
    print(f"batch wall (server)      {wall:8.2f} s   (client-observed {batch['clientWall']:.2f} s)")
    print(f"ratio batch / xargs      {wall / xargs_wall:8.3f}   (target <= {TARGET_RATIO})")
    print(f"slot time per job        {batch_per_job:8.3f} s   (xargs {ideal_per_job:.3f} s)")
    print(f"overhead per job         {batch_per_job - ideal_per_job:8.3f} s   (batch - xargs, per slot)")
    print(
        f"scheduling cost per job  {statistics.fmean(control_plane) if control_plane else 0:8.3f} s   "
        "(refill + admit: the control plane's share)"
    )
    print(f"most processes at once   {peak:8d}")
    busy = running_over_time(intervals, RUNNING_BUCKET_SECONDS)
    if busy:
        print(
            f"processes running        {statistics.fmean(busy):8.1f}     on average (of {args.concurrency}); "
            f"per {RUNNING_BUCKET_SECONDS} s from the first start:"
        )
        print("  " + " ".join(f"{value:.0f}" for value in busy))
    starts = sorted(s["start"] for s in stamps.values() if "start" in s)
    if starts and members:
        ramp_up = starts[0] - batch["createdAt"].timestamp()
        wind_up = batch["lastUpdatedAt"].timestamp() - max(m["ended"] for m in members)
        print(
            f"batch ramp-up / wind-up  {ramp_up:8.3f} s / {wind_up:.3f} s"
            "   (batch created -> first process; last member ended -> batch Completed)"
        )
    print(
        f"control-plane CPU per job{batch['serverCpuSeconds'] / args.jobs:8.3f} s   "
        "(the server process: API incl. this script's polling, both controllers, runner reports)"
    )
    if batch["cpuSeconds"] is not None:
        per_job = batch["cpuSeconds"] / args.jobs
        print(
            f"CPU per job              {per_job:8.3f} s   (server + runners + job processes; "
            f"xargs {xargs_cpu / args.jobs:.3f} s)"
        )
        print(
            f"  of which not server    {per_job - batch['serverCpuSeconds'] / args.jobs:8.3f} s   "
            "(zygote forks, runners, namespace holders, nsenter, the job's own processes)"
        )
        floor = batch["cpuSeconds"] / (os.cpu_count() or 1)
        print(f"CPU-bound floor          {floor:8.2f} s   (that CPU spread over {os.cpu_count()} cores)")
    print("where a member's time went (s):")
    for name in PHASES:
        print(f"  {name:10s} {describe(durations[name])}")


if __name__ == "__main__":
    sys.exit(main())
