"""Deployment benchmark (issue 5): a 20 MB bundle to 200 simulated robots at concurrentDeploymentPercentage
25, against the ideal of copying the same bundle 200 times with the same parallelism, in the same run.

The simulated agents are the real agent protocol without ROS: each long-polls the agent channel with its
own robot credentials (SigV4), reports Validating, downloads the bundle through the server (resuming with
`Range` after a dropped connection), checks its MD5 against the ETag, deletes it (the real agent deletes
the archive once extracted) and reports Finished; reports are retried until the server takes them, as the
real agent's outbox does. Also measured: server memory and CPU per connected idle agent, and where each
wave's time goes.

All 200 agents live in this one Python process, on the same cores as the server. Downloads are read with a
minimal HTTP/1.1 reader (`--client lean`: one reusable buffer per connection, hashed and written as it
arrives, ~3 ms of CPU per MiB, most of it MD5) rather than httpx (`--client httpx`: ~6-9 ms per MiB, 25-35 s
of this process's CPU for the 4 GB), which would otherwise measure httpx more than the server. Polls and
reports go through httpx either way.

    python bench/deploy_bench.py [--robots 200] [--size-mb 20] [--percentage 25] [--client lean|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import running_server  # noqa: E402
from openrobomaker.agent.client import sign  # noqa: E402
from openrobomaker.objectstore import ObjectStoreConfig, open_store  # noqa: E402
from openrobomaker.services.deployment_jobs import wave_size  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


RETRIES = 10


class DownloadStatusError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


# Hashing and writing the received bytes runs in these threads (MD5 and file writes release the GIL), as
# each real agent hashes on its own robot: 200 agents' MD5 on this process's one event-loop thread would
# make the simulation, not the server, the bottleneck.
HASHERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="agent-md5")
HANDOFF_BYTES = 256 * 1024


class _BodyReader(asyncio.BufferedProtocol):
    """One GET's answer read straight into a buffer: status line and headers, then the body, hashed and
    written to `out` in a worker thread every HANDOFF_BYTES (reading pauses meanwhile; the kernel's socket
    buffer keeps receiving)."""

    def __init__(self, out, digest, on_first_byte, size: int = 1 << 20):
        self.view = memoryview(bytearray(size))
        self.filled = 0
        self.out, self.digest, self.on_first_byte = out, digest, on_first_byte
        self.head = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.remaining = -1
        self.error_body = b""
        self.transport = None
        self.pending: asyncio.Future | None = None  # a hand-off in progress
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.status is None:
            self.head += bytes(self.view[:nbytes])
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.head[:end].decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {
                name.strip().lower(): value.strip() for name, value in (ln.split(":", 1) for ln in lines[1:])
            }
            self.remaining = int(self.headers.get("content-length", "0"))
            body = self.head[end + 4 :]
            nbytes = len(body)
            self.view[:nbytes] = body
        if nbytes and self.status >= 300:
            self.error_body += bytes(self.view[:nbytes])
        elif nbytes:
            if not self.filled and self.pending is None:
                self.on_first_byte()
            self.filled += nbytes
        self.remaining -= nbytes
        if self.filled >= HANDOFF_BYTES or (self.remaining <= 0 and self.filled):
            self._hand_off()
        elif self.remaining <= 0 and self.pending is None and not self.done.done():
            self.done.set_result(None)

    def _hand_off(self) -> None:
        filled, self.filled = self.filled, 0
        self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self.pending = loop.run_in_executor(HASHERS, self._consume, self.view[:filled])
        self.pending.add_done_callback(self._handed_off)

    def _consume(self, data: memoryview) -> None:
        self.digest.update(data)
        self.out.write(data)

    def _handed_off(self, future: asyncio.Future) -> None:
        self.pending = None
        if future.exception() is not None:
            if not self.done.done():
                self.done.set_exception(future.exception())
            return
        if self.remaining <= 0:
            if not self.done.done():
                self.done.set_result(None)
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done() and (self.remaining > 0 or self.status is None):
            self.done.set_exception(
                ConnectionError(f"connection lost with {self.remaining} bytes to go ({exc!r})")
            )


async def lean_get(url: str, headers: dict, out, digest, on_first_byte, timeout: float) -> _BodyReader:
    parts = urlsplit(url)
    reader = _BodyReader(out, digest, on_first_byte)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(lambda: reader, parts.hostname, parts.port)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.wait_for(reader.done, timeout)
    finally:
        transport.close()
        if reader.pending is not None:
            await asyncio.wait([reader.pending])  # the file is not touched after this returns
    if reader.status >= 300:
        raise DownloadStatusError(reader.status, reader.error_body)
    return reader


class SimulatedAgent:
    """One robot's agent, as the real one behaves on the wire: reports are retried until the server took
    them (the real agent's outbox) and an interrupted download resumes with a Range request."""

    def __init__(self, http: httpx.AsyncClient, endpoint: str, creds: dict, work: Path, client: str = "lean"):
        self.http, self.endpoint, self.creds, self.work, self.client = http, endpoint, creds, work, client
        self.current: str | None = None
        self.seq = 0
        self.stop = False
        self.errors: list[str] = []  # transport errors / 5xx retried, for the report
        # this agent's clock (time.time()) at each step of its last deployment: where the time goes
        self.marks: dict[str, float] = {}

    def _headers(self, method: str, url: str, body: bytes) -> dict:
        c = self.creds
        return sign(method, url, body, c["accessKeyId"], c["secretAccessKey"], c["region"])

    async def _post_once(self, path: str, payload: dict, timeout: float) -> dict:
        url = self.endpoint + path
        body = json.dumps({"robot": self.creds["robotArn"], **payload}).encode()
        response = await self.http.post(
            url, content=body, headers=self._headers("POST", url, body), timeout=timeout
        )
        response.raise_for_status()
        return response.json()

    async def _retrying(self, attempt_once, what: str):
        for attempt in range(RETRIES + 1):
            try:
                return await attempt_once()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500 and exc.response.status_code != 429:
                    raise
                error = exc
            except DownloadStatusError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                error = exc
            except (httpx.TransportError, OSError) as exc:  # OSError: TimeoutError, ConnectionError
                error = exc
            self.errors.append(f"{what}: {error!r}")
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"{self.creds['robotArn']}: {what} kept failing: {self.errors[-3:]}")

    async def _report(self, job_id: str, step: str, **fields) -> None:
        self.seq += 1
        payload = {"jobId": job_id, "seq": self.seq, "step": step, **fields}
        await self._retrying(lambda: self._post_once("/_agent/v1/report", payload, 30), f"report {step}")

    async def _download(self, job_id: str) -> tuple[str, str]:
        query = urlencode({"robot": self.creds["robotArn"], "jobId": job_id}, quote_via=quote, safe="")
        url = f"{self.endpoint}/_agent/v1/bundle?{query}"
        digest = hashlib.md5(usedforsecurity=False)
        received, etag = 0, ""
        path = self.work / "bundle"

        def first_byte() -> None:
            self.marks.setdefault("first_byte", time.time())

        async def once() -> None:
            nonlocal received, etag
            self.marks.setdefault("requested", time.time())
            headers = self._headers("GET", url, b"")
            if received:
                headers["Range"] = f"bytes={received}-"
            with open(path, "ab" if received else "wb") as out:
                if self.client == "lean":
                    reader = None
                    try:
                        reader = await lean_get(url, headers, out, digest, first_byte, 120)
                    finally:
                        # what arrived before a dropped connection is kept: the retry resumes after it
                        received = out.tell()
                    etag = reader.headers["etag"].strip('"')
                    return
                async with self.http.stream("GET", url, headers=headers, timeout=120) as response:
                    response.raise_for_status()
                    etag = response.headers["etag"].strip('"')
                    async for chunk in response.aiter_raw():
                        first_byte()
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)

        try:
            await self._retrying(once, "download")
        finally:
            path.unlink(missing_ok=True)  # the real agent deletes the archive once extracted
        self.marks["downloaded"] = time.time()
        return etag, digest.hexdigest()

    async def run(self) -> None:
        while not self.stop:
            try:
                answer = await self._post_once(
                    "/_agent/v1/poll", {"current": self.current, "wait": 20}, timeout=40
                )
            except httpx.HTTPError as exc:
                self.errors.append(f"poll: {exc!r}")
                await asyncio.sleep(1)
                continue
            deployment = answer.get("deployment")
            if not deployment or deployment["jobId"] == self.current:
                continue
            job_id = deployment["jobId"]
            self.current = job_id
            self.marks = {"assigned": time.time()}
            # As the real agent: reports leave through the outbox, in order, while the deployment goes on.
            validating = asyncio.create_task(self._report(job_id, "Validating"))
            validating.add_done_callback(lambda _: self.marks.setdefault("validating_acked", time.time()))
            etag, md5 = await self._download(job_id)
            await validating
            ok = etag == md5 == deployment["source"]["etag"]
            outcome = {"outcome": "Succeeded"} if ok else {"outcome": "Failed", "failureCode": "EtagMismatch"}
            self.marks["finished_sent"] = time.time()
            await self._report(job_id, "Finished", **outcome)
            self.marks["finished_acked"] = time.time()


def _stats(values: list[float]) -> str:
    values = sorted(values)
    if not values:
        return "-"
    return f"{values[0]:.2f}/{statistics.median(values):.2f}/{values[-1]:.2f}"


def wave_breakdown(summary: list[dict], agents: list[SimulatedAgent]) -> list[dict]:
    """Per wave, from the server's robot deployment times and the agents' own clocks (same machine)."""
    marks = {agent.creds["robotArn"]: agent.marks for agent in agents}
    waves: dict[float, list[dict]] = {}
    for entry in summary:
        waves.setdefault(entry["deploymentStartTime"].timestamp(), []).append(entry)
    rows, previous_end = [], None
    for start in sorted(waves):
        entries = waves[start]
        m = [marks[e["arn"]] for e in entries]
        end = max(e["deploymentFinishTime"].timestamp() for e in entries)
        finish = {e["arn"]: e["deploymentFinishTime"].timestamp() for e in entries}
        rows.append(
            {
                "robots": len(entries),
                "gap": None if previous_end is None else start - previous_end,
                "assigned": [x["assigned"] - start for x in m],
                "validating": [x["validating_acked"] - x["assigned"] for x in m],
                "first_byte": [x["first_byte"] - start for x in m],
                "request": [x["first_byte"] - x["requested"] for x in m],
                "download": [x["downloaded"] - x["first_byte"] for x in m],
                "report": [finish[e["arn"]] - marks[e["arn"]]["finished_sent"] for e in entries],
                "ack": [x["finished_acked"] - x["finished_sent"] for x in m],
                "duration": end - start,
            }
        )
        previous_end = end
    return rows


BREAKDOWN_COLUMNS = (
    ("assigned", "start->assigned"),  # wave started (server) -> the agent's long poll answered with it
    ("request", "GET->1st-byte"),  # bundle GET sent -> first body byte
    ("first_byte", "start->1st-byte"),
    ("download", "download"),  # first -> last byte
    ("validating", "Validating-rtt"),  # sent beside the download, as the real agent's outbox does
    ("report", "Finished->recorded"),  # agent sent Finished -> server recorded it
    ("ack", "Finished-rtt"),
)


def print_breakdown(rows: list[dict]) -> None:
    print("per wave, seconds, min/median/max over the wave's robots (gap: previous wave's last robot")
    print("recorded Finished -> this wave started; wave: start -> its last robot recorded Finished):")
    print("wave robots    gap  " + "".join(f"{title:<20}" for _, title in BREAKDOWN_COLUMNS) + "wave")
    for index, row in enumerate(rows):
        gap = "-" if row["gap"] is None else f"{row['gap']:.2f}"
        cells = "".join(f"{_stats(row[key]):<20}" for key, _ in BREAKDOWN_COLUMNS)
        print(f"{index:>4} {row['robots']:>6} {gap:>6}  {cells}{row['duration']:.2f}")


def ideal_copy(source: Path, dest_root: Path, copies: int, parallel: int) -> float:
    """Copy the bundle `copies` times, `parallel` at a time, in waves like the deployment's."""
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        for wave_start in range(0, copies, parallel):
            wave = range(wave_start, min(copies, wave_start + parallel))
            list(pool.map(lambda i: shutil.copyfile(source, dest_root / f"copy-{i}"), wave))
    return time.perf_counter() - started


async def deploy(server, rm, robots: int, percentage: int, work: Path, deadline: float, client: str) -> dict:
    store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
    app = rm.list_robot_applications()["robotApplicationSummaries"][0]["arn"]
    fleet = rm.list_fleets()["fleetDetails"][0]["arn"]
    creds = []
    for index in range(robots):
        robot = rm.create_robot(name=f"bench-{index}", architecture="X86_64", greengrassGroupId=f"g-{index}")[
            "arn"
        ]
        rm.register_robot(fleet=fleet, robot=robot)
        url = server.endpoint + "/_agent/v1/credentials"
        body = json.dumps({"robot": robot}).encode()
        creds.append(
            httpx.post(url, content=body, headers=sign("POST", url, body, "test", "test", "us-east-1")).json()
        )
    del store
    pid = server.process.pid
    baseline_rss = rss_kib(pid)
    # Each agent has its own HTTP client, as each real agent does (one shared pool of 200+ connections
    # spends its time scanning them on every request). Idle connections are dropped before the server's
    # 5 s keep-alive would close them under a request.
    limits = httpx.Limits(max_connections=4, keepalive_expiry=2.0)
    async with contextlib.AsyncExitStack() as clients:
        agents = []
        for index, cred in enumerate(creds):
            directory = work / f"agent-{index}"
            directory.mkdir()
            http = await clients.enter_async_context(httpx.AsyncClient(limits=limits))
            agents.append(SimulatedAgent(http, server.endpoint, cred, directory, client))
        tasks = [asyncio.create_task(agent.run()) for agent in agents]
        await asyncio.sleep(3)  # every agent connected and long-polling
        idle_rss = rss_kib(pid)
        server_cpu, bench_cpu = cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        job = rm.create_deployment_job(
            fleet=fleet,
            deploymentApplicationConfigs=[
                {
                    "application": app,
                    "applicationVersion": "1",
                    "launchConfig": {"packageName": "p", "launchFile": "l.launch"},
                }
            ],
            deploymentConfig={"concurrentDeploymentPercentage": percentage, "failureThresholdPercentage": 10},
        )["arn"]
        # Watch the job with ListDeploymentJobs (its status only): describing 200 robots 5 times a second
        # would cost the server and this process more than the rollout's own bookkeeping.
        fleet_filter = [{"name": "fleetName", "values": ["bench"]}]
        while (await asyncio.to_thread(rm.list_deployment_jobs, filters=fleet_filter))["deploymentJobs"][0][
            "status"
        ] not in ("Succeeded", "Failed"):
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError("a simulated agent died") from task.exception()
            if time.perf_counter() - started > deadline:
                states = [r["status"] for r in rm.describe_deployment_job(job=job)["robotDeploymentSummary"]]
                counts = {state: states.count(state) for state in set(states)}
                raise TimeoutError(f"the deployment did not end within {deadline} s: {counts}")
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        described = await asyncio.to_thread(rm.describe_deployment_job, job=job)
        server_cpu, bench_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - bench_cpu
        waves = wave_breakdown(described["robotDeploymentSummary"], agents)
        await asyncio.sleep(3)
        cpu_before, t_before = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(10)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - t_before)
        idle_after_rss = rss_kib(pid)
        for agent in agents:
            agent.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "status": described["status"],
        "seconds": elapsed,
        "baseline_rss_kib": baseline_rss,
        "idle_rss_kib": idle_rss,
        "idle_after_rss_kib": idle_after_rss,
        "idle_cpu_fraction": idle_cpu,
        "insync": sum(r["status"] == "InSync" for r in described["robotDeploymentSummary"]),
        "server_cpu": server_cpu,
        "bench_cpu": bench_cpu,
        "waves": waves,
        "errors": [error for agent in agents for error in agent.errors],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robots", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--percentage", type=int, default=25)
    parser.add_argument("--deadline", type=float, default=600, help="give up on the deployment after this")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean", help="how agents download")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orm-deploy-bench-"))
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        bundle = work / "bundle.tar.gz"
        bundle.write_bytes(os.urandom(args.size_mb * 1024 * 1024))
        parallel = wave_size(args.robots, args.percentage)
        config = {"limits": {"fleets": 20}}
        (work / "server").mkdir()
        with running_server(config=config, data_dir=work / "server") as server:
            rm = server.client()
            store = open_store(ObjectStoreConfig(kind="local", root=str(server.data_dir / "objects")))
            store.create_bucket("bench")
            store.upload(bundle, "bench", "bundle.tar.gz")
            app = rm.create_robot_application(
                name="bench",
                sources=[{"s3Bucket": "bench", "s3Key": "bundle.tar.gz", "architecture": "X86_64"}],
                robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
            )
            rm.create_robot_application_version(application=app["arn"])
            rm.create_fleet(name="bench")
            (work / "agents").mkdir()
            result = asyncio.run(
                deploy(server, rm, args.robots, args.percentage, work / "agents", args.deadline, args.client)
            )
        copies = work / "copies"
        copies.mkdir()
        ideal = ideal_copy(bundle, copies, args.robots, parallel)
        per_agent_kib = (result["idle_rss_kib"] - result["baseline_rss_kib"]) / args.robots
        print(
            f"robots {args.robots}, bundle {args.size_mb} MB, {args.percentage}% -> waves of {parallel}; "
            f"agents download with {args.client}; load average before {load_before}"
        )
        print(f"deployment: {result['status']} ({result['insync']} InSync) in {result['seconds']:.2f} s")
        print(f"ideal copy {args.robots}x with parallelism {parallel}: {ideal:.2f} s")
        print(f"ratio deployment / ideal: {result['seconds'] / ideal:.2f} (target <= 1.5)")
        print(
            f"CPU during the deployment: server {result['server_cpu']:.1f} s, simulated agents (this "
            f"process) {result['bench_cpu']:.1f} s, over {result['seconds']:.1f} s on {os.cpu_count()} cores"
        )
        print_breakdown(result["waves"])
        errors = result["errors"]
        print(f"agent requests retried: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        print(
            f"server RSS: {result['baseline_rss_kib'] / 1024:.1f} MiB before agents, "
            f"{result['idle_rss_kib'] / 1024:.1f} MiB with {args.robots} idle agents connected "
            f"-> {per_agent_kib:.1f} KiB per idle agent (target < 1024 KiB); "
            f"{result['idle_after_rss_kib'] / 1024:.1f} MiB idle after the deployment"
        )
        print(
            f"server CPU while {args.robots} agents idle (long-polling): {100 * result['idle_cpu_fraction']:.1f}% of a core"
        )
    finally:
        if not os.environ.get("KEEP_BENCH"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
