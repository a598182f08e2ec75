"""Deployment benchmark (issue 5): a 20 MB bundle to 200 simulated robots at concurrentDeploymentPercentage
25, against the ideal of copying the same bundle 200 times with the same parallelism, in the same run
(three times: before the deployment, after it and after the floor; the ratio uses the median).

The simulated agents are the real agent protocol without ROS: each long-polls the agent channel with its
own robot credentials (SigV4), reports Validating, downloads the bundle through the server (resuming with
`Range` after a dropped connection), checks its MD5 against the ETag, deletes it (the real agent deletes
the archive once extracted) and reports Finished; reports are retried until the server takes them, as the
real agent's outbox does. Also measured: server memory and CPU per connected idle agent, and where each
wave's time goes.

All 200 agents live in this one Python process, on the same cores as the server. Polls and reports go
through a minimal keep-alive HTTP/1.1 client (`--control lean`; `--control httpx` for httpx, ~2-3 ms of
this process's CPU per request). Downloads are the shipped agent's own code: `Deployer._download` of
`openrobomaker.agent` (agent/fetch.py: the poll answer's sendfile ticket or the channel's redirect,
each piece hashed and written as it arrives, `Range` resume, fallback to the server), one worker
thread per download as each robot downloads on its own.

Also reported: the transport+hash floor of this host (the same simulated downloads from a trivial static
sendfile server, no authorization or bookkeeping) and the CPU per MiB of the server, the agents and the
ideal copy.

    python bench/deploy_bench.py [--robots 200] [--size-mb 20] [--percentage 25] [--control lean|httpx]
        [--agent-nice 10] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import running_server  # noqa: E402
from openrobomaker.agent import fetch  # noqa: E402
from openrobomaker.agent.client import AgentClient, RobotCredentials, sign  # noqa: E402
from openrobomaker.agent.deployer import (  # noqa: E402
    Deployer,
    StepFailed,
    faster_digest,
    verification_digest,
)
from openrobomaker.agent.state import WorkDir  # noqa: E402
from openrobomaker.objectstore import ObjectStoreConfig, open_store  # noqa: E402
from openrobomaker.services.deployment_jobs import wave_size  # noqa: E402


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.new(algorithm, usedforsecurity=False)).hexdigest()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of `pid` (its event loop is the thread whose id is `pid`)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            times[int(task.name)] = cpu_seconds(pid, int(task.name))
    return times


def server_cpu_split(pid: int, before: dict[int, float], total: float) -> dict[str, float]:
    """Where the server's CPU went during the deployment: its event loop (HTTP, SigV4, the agent channel),
    its long-lived worker threads (store reads and writes, the controller), and threads that have ended
    since (the sendfile listener's, one per bundle fetch: the kernel's sending)."""
    after = thread_cpu(pid)
    loop = after.get(pid, 0.0) - before.get(pid, 0.0)
    workers = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid != pid)
    return {"event loop": loop, "worker threads": workers, "ended threads": max(0.0, total - loop - workers)}


RETRIES = 10


class DownloadStatusError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


# On a real fleet each robot downloads and hashes on its own CPU and never slows the server. Here a wave's
# 50 downloads share 2 cores with the server, and Linux shares CPU per thread: the server's event loop would
# get ~1/50 of it, and each robot's polls and reports would crawl behind the bulk work. With `--agent-nice`
# (default 10) the downloads run at a lower priority than the server and the agents' control traffic; they
# still do all the work (the CPU they use is measured and reported), only later in line.
AGENT_NICE = 10


def _lower_priority() -> None:
    if AGENT_NICE:
        os.setpriority(os.PRIO_PROCESS, 0, AGENT_NICE)  # Linux: 0 is the calling thread


def _start_worker() -> None:
    """A download worker stands in for robots whose agents are already running: lower priority (above),
    and the agent's start-up measurement of its faster digest done, as each agent does when it starts."""
    _lower_priority()
    faster_digest()


class Downloads:
    """Where the simulated robots' downloads run: each is the agent's own `Deployer._download`, one per
    worker at a time.

    `process` (default): worker processes forked before anything is timed. Real robots are separate
    machines; as threads of this one process (`thread`), a wave's 50 downloads and the event loop that
    serves all 200 agents' polls and reports take turns on one GIL, so robots wait on each other in a
    way no fleet does (and the floor, which has no control traffic, does not)."""

    def __init__(self, kind: str, count: int):
        self.kind, self.cpu = kind, 0.0  # cpu: the workers' CPU seconds (processes only; threads are ours)
        if kind == "process":
            self.pool = multiprocessing.get_context("fork").Pool(count, initializer=_start_worker)
        else:
            self.threads = ThreadPoolExecutor(
                count, thread_name_prefix="agent-download", initializer=_lower_priority
            )
            self._start_threads(count)

    def _start_threads(self, count: int) -> None:
        """Start `count` threads now, before the deployment is timed: `Thread.start` waits for the new
        thread to run, which in the first wave held this process's event loop for up to a second."""
        barrier = threading.Barrier(count + 1)
        for _ in range(count):
            self.threads.submit(barrier.wait)
        barrier.wait()

    async def run(self, function, *args) -> dict:
        loop = asyncio.get_running_loop()
        if self.kind == "thread":
            return await loop.run_in_executor(self.threads, function, *args)
        future = loop.create_future()

        def settle(result=None, error=None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.pool.apply_async(
            function,
            args,
            callback=lambda result: loop.call_soon_threadsafe(settle, result),
            error_callback=lambda error: loop.call_soon_threadsafe(settle, None, error),
        )
        result = await future
        self.cpu += result["cpu"]
        return result

    def run_wave(self, function, arguments: list[tuple]) -> list[dict]:
        if self.kind == "thread":
            return list(self.threads.map(lambda args: function(*args), arguments))
        results = self.pool.starmap(function, arguments)
        self.cpu += sum(result["cpu"] for result in results)
        return results

    def close(self) -> None:
        if self.kind == "process":
            self.pool.terminate()
            self.pool.join()
        else:
            self.threads.shutdown()


_DEPLOYERS: dict[str, Deployer] = {}  # a worker's deployers, by robot: built once, like a robot's agent
_FIRST_BYTE: dict[str, float] = {}


def download_as_robot(endpoint: str, creds: dict, work: str, deployment: dict) -> dict:
    """One robot's bundle download and check by the agent's own code, in a worker. Returns the failure
    code (None: the bundle is the version's), when the first MiB was in the file, and the worker's CPU."""
    cpu = time.thread_time()
    robot = creds["robotArn"]
    deployer = _DEPLOYERS.get(robot)
    if deployer is None:
        client = AgentClient(
            endpoint, RobotCredentials(robot, creds["region"], creds["accessKeyId"], creds["secretAccessKey"])
        )

        def report(job_id: str, step: str, **fields) -> None:
            # The deployer's DownloadingExtracting progress (the first comes with the first MiB in the
            # file). The real agent sends these through its outbox; the simulated agents report only
            # Validating and Finished, so the server sees the same load as before.
            _FIRST_BYTE.setdefault(robot, time.time())

        deployer = _DEPLOYERS[robot] = Deployer(WorkDir(Path(work)), client, None, report, lambda job: False)
    _FIRST_BYTE.pop(robot, None)
    path = Path(work) / "bundle"
    failure = None
    try:
        deployer._fetch_bundle(deployment, path)
    except StepFailed as exc:
        failure = exc.code
    finally:
        path.unlink(missing_ok=True)  # the real agent deletes the archive once extracted
    return {"failure": failure, "first_byte": _FIRST_BYTE.get(robot), "cpu": time.thread_time() - cpu}


def download_from_static(url: str, path: str, algorithm: str, expected: str) -> dict:
    """The floor's download: the agent's fetch and the hash the deployment's agents used, no channel, no
    reports."""
    cpu = time.thread_time()
    digest = hashlib.new(algorithm, usedforsecurity=False)
    answer = fetch.get(url, {}, Path(path), digest=lambda offset: digest)
    Path(path).unlink()
    if answer.status != 200 or digest.hexdigest() != expected:
        raise RuntimeError(f"static server: HTTP {answer.status}, {algorithm} {digest.hexdigest()}")
    return {"cpu": time.thread_time() - cpu}


class LeanControl:
    """One agent's keep-alive HTTP/1.1 connection for its polls and reports (SigV4-signed JSON POSTs), with
    no more work per request than the protocol needs; `--control httpx` sends them with httpx instead
    (~2-3 ms of this process's CPU per request). One request at a time; a connection idle for IDLE seconds
    is replaced first, so the server's 5 s keep-alive never closes one under a request."""

    IDLE = 2.0

    def __init__(self, endpoint: str):
        parts = urlsplit(endpoint)
        self.host, self.port, self.netloc = parts.hostname, parts.port, parts.netloc
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last = 0.0
        self.lock = asyncio.Lock()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict, timeout: float) -> tuple[int, bytes]:
        async with self.lock:
            try:
                return await asyncio.wait_for(self._post(path, body, headers), timeout)
            except BaseException:
                self.close()  # a request cut short leaves the connection in an unknown state
                raise

    async def _post(self, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        if self.writer is None or time.monotonic() - self.last > self.IDLE:
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("the server closed the connection") from exc
        lines = head[:-4].decode("latin-1").split("\r\n")
        answer = {
            name.strip().lower(): value.strip() for name, value in (ln.split(":", 1) for ln in lines[1:])
        }
        data = await self.reader.readexactly(int(answer.get("content-length", "0")))
        if answer.get("connection", "").lower() == "close":
            self.close()
        self.last = time.monotonic()
        return int(lines[0].split()[1]), data


class HttpxControl:
    """Polls and reports through httpx, as before the lean client (`--control httpx`)."""

    def __init__(self, http: httpx.AsyncClient, endpoint: str):
        self.http, self.endpoint = http, endpoint

    async def post(self, path: str, body: bytes, headers: dict, timeout: float) -> tuple[int, bytes]:
        try:
            response = await self.http.post(
                self.endpoint + path, content=body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise ConnectionError(repr(exc)) from exc
        return response.status_code, response.content


class SimulatedAgent:
    """One robot's agent, as the real one behaves on the wire: reports are retried until the server took
    them (the real agent's outbox) and an interrupted download resumes with a Range request."""

    def __init__(self, control, downloads: Downloads, endpoint: str, creds: dict, work: Path):
        self.control, self.downloads, self.endpoint, self.creds = control, downloads, endpoint, creds
        self.work = work
        self.current: str | None = None
        self.seq = 0
        self.stop = False
        self.errors: list[str] = []  # transport errors / 5xx retried, for the report
        # this agent's clock (time.time()) at each step of its last deployment: where the time goes
        self.marks: dict[str, float] = {}
        self.algorithm = ""  # how its last bundle was verified (agent/deployer.py verification_digest)

    def _headers(self, method: str, url: str, body: bytes) -> dict:
        c = self.creds
        return sign(method, url, body, c["accessKeyId"], c["secretAccessKey"], c["region"])

    async def _post_once(self, path: str, payload: dict, timeout: float) -> dict:
        body = json.dumps({"robot": self.creds["robotArn"], **payload}).encode()
        headers = self._headers("POST", self.endpoint + path, body)
        status, data = await self.control.post(path, body, headers, timeout)
        if status >= 300:
            raise DownloadStatusError(status, data)
        return json.loads(data)

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

    async def _download(self, deployment: dict) -> str | None:
        """The real agent's download and check (Deployer._fetch_bundle) in a worker: the poll answer's
        `bundleUrl` (a sendfile ticket) if it offered one, else the channel with `direct=1` and its
        redirect; the server itself if the redirect's target fails; `Range` resume after a dropped
        connection; the ETag, and the bytes' SHA-256 (or MD5). Returns the failure code, if any."""
        self.marks.setdefault("requested", time.time())
        result = await self.downloads.run(
            download_as_robot, self.endpoint, self.creds, str(self.work), deployment
        )
        if result["first_byte"] is not None:
            self.marks["first_byte"] = result["first_byte"]
        self.marks["downloaded"] = time.time()
        return result["failure"]

    async def run(self) -> None:
        while not self.stop:
            try:
                answer = await self._post_once(
                    "/_agent/v1/poll", {"current": self.current, "wait": 20}, timeout=40
                )
            except (DownloadStatusError, httpx.HTTPError, OSError) as exc:
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
            self.algorithm = verification_digest(deployment["source"])
            failure = await self._download(deployment)
            await validating
            outcome = {"outcome": "Failed", "failureCode": failure} if failure else {"outcome": "Succeeded"}
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


def in_waves(work, copies: int, parallel: int, initializer=None) -> float:
    """`work(i)` for i in range(copies), `parallel` at a time, in waves like the deployment's."""
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel, initializer=initializer) as pool:
        for wave_start in range(0, copies, parallel):
            list(pool.map(work, range(wave_start, min(copies, wave_start + parallel))))
    return time.perf_counter() - started


def ideal_copy_once(work: Path, source: Path, copies: int, parallel: int) -> tuple[float, float]:
    """One measurement of the ideal, in a fresh folder removed afterwards."""
    dest_root = work / "copies"
    dest_root.mkdir()
    try:
        return ideal_copy(source, dest_root, copies, parallel)
    finally:
        shutil.rmtree(dest_root)


def ideal_copy(source: Path, dest_root: Path, copies: int, parallel: int) -> tuple[float, float]:
    """Copy the bundle `copies` times, `parallel` at a time, in waves like the deployment's (the issue's
    baseline). Returns (seconds, CPU seconds of this process: the kernel's copy into the page cache)."""
    cpu = time.process_time()
    seconds = in_waves(lambda i: shutil.copyfile(source, dest_root / f"copy-{i}"), copies, parallel)
    return seconds, time.process_time() - cpu


# A static file server with nothing of ours in it: any GET gets the whole file by sendfile, no signature, no
# agent channel, no store, no reports. Run in its own process, like our server.
STATIC_SERVER = """
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
path, etag = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("ETag", '"' + etag + '"')
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        with open(path, "rb") as f:
            self.connection.sendfile(f, 0, size)
class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def transport_floor(
    bundle: Path, etag: str, work: Path, copies: int, parallel: int, downloads: Downloads, algorithm: str
) -> dict:
    """The floor of this host for the deployment's data path: the agent's own download (agent/fetch.py:
    fresh connection, each piece hashed with `algorithm` as the deployment's agents did and written as it
    arrives, digest check, delete) from STATIC_SERVER, in the same waves and the same workers, with no
    authorization or bookkeeping at all."""
    process = subprocess.Popen(
        [sys.executable, "-c", STATIC_SERVER, str(bundle), etag], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{int(process.stdout.readline())}/bundle"
        digest = (algorithm, file_digest(bundle, algorithm))

        server_cpu, own_cpu, workers_cpu = cpu_seconds(process.pid), time.process_time(), downloads.cpu
        started = time.perf_counter()
        for wave_start in range(0, copies, parallel):
            wave = range(wave_start, min(copies, wave_start + parallel))
            downloads.run_wave(
                download_from_static, [(url, str(work / f"floor-{index}"), *digest) for index in wave]
            )
        return {
            "seconds": time.perf_counter() - started,
            "server_cpu": cpu_seconds(process.pid) - server_cpu,
            "agents_cpu": time.process_time() - own_cpu + downloads.cpu - workers_cpu,
        }
    finally:
        process.terminate()
        process.wait()


async def deploy(
    server,
    rm,
    robots: int,
    percentage: int,
    work: Path,
    deadline: float,
    profile: str | None,
    control: str,
    downloads: Downloads,
) -> dict:
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
            if control == "lean":
                channel = LeanControl(server.endpoint)
            else:
                http = await clients.enter_async_context(httpx.AsyncClient(limits=limits))
                channel = HttpxControl(http, server.endpoint)
            agents.append(SimulatedAgent(channel, downloads, server.endpoint, cred, directory))
        tasks = [asyncio.create_task(agent.run()) for agent in agents]
        await asyncio.sleep(3)  # every agent connected and long-polling
        idle_rss = rss_kib(pid)
        spy = None
        if profile:  # the server's stacks during the deployment only (py-spy must be installed)
            # FILE.json: speedscope format, which keeps the samples in time order (a wave's start can be
            # looked at alone); anything else: raw folded stacks
            form = "speedscope" if profile.endswith(".json") else "raw"
            command = ["py-spy", "record", "-p", str(pid), "-r", "500", "-f", form, "-o", profile]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1)
        server_cpu, bench_cpu, threads_before = cpu_seconds(pid), time.process_time(), thread_cpu(pid)
        workers_cpu = downloads.cpu
        started = time.perf_counter()
        # In a worker thread: a blocking call on this event loop would hold every simulated agent's poll
        # answer and first report until the API answer is parsed (real robots are not blocked by it).
        job = await asyncio.to_thread(
            rm.create_deployment_job,
            fleet=fleet,
            deploymentApplicationConfigs=[
                {
                    "application": app,
                    "applicationVersion": "1",
                    "launchConfig": {"packageName": "p", "launchFile": "l.launch"},
                }
            ],
            deploymentConfig={"concurrentDeploymentPercentage": percentage, "failureThresholdPercentage": 10},
        )
        job = job["arn"]
        # Watch the job with ListDeploymentJobs (its status only), often once the last robot has its
        # Finished acknowledged and every second before: 5 lists a second for the whole rollout cost the
        # server and this process ~5 ms each, more than some of the rollout's own bookkeeping.
        fleet_filter = [{"name": "fleetName", "values": ["bench"]}]
        last_listed = float("-inf")
        while True:
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError("a simulated agent died") from task.exception()
            if time.perf_counter() - started > deadline:
                states = [r["status"] for r in rm.describe_deployment_job(job=job)["robotDeploymentSummary"]]
                counts = {state: states.count(state) for state in set(states)}
                raise TimeoutError(f"the deployment did not end within {deadline} s: {counts}")
            all_acked = all("finished_acked" in agent.marks for agent in agents)
            if all_acked or time.perf_counter() - last_listed >= 1.0:
                last_listed = time.perf_counter()
                listed = await asyncio.to_thread(rm.list_deployment_jobs, filters=fleet_filter)
                if listed["deploymentJobs"][0]["status"] in ("Succeeded", "Failed"):
                    break
            await asyncio.sleep(0.02 if all_acked else 0.05)
        elapsed = time.perf_counter() - started
        server_cpu, bench_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - bench_cpu
        workers_cpu = downloads.cpu - workers_cpu  # the download workers' (processes) part
        bench_cpu += workers_cpu
        server_split = server_cpu_split(pid, threads_before, server_cpu)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        described = await asyncio.to_thread(rm.describe_deployment_job, job=job)
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
        "server_split": server_split,
        "bench_cpu": bench_cpu,
        "workers_cpu": workers_cpu,
        "algorithms": {agent.algorithm for agent in agents},
        "waves": waves,
        "errors": [error for agent in agents for error in agent.errors],
    }


def main() -> int:
    global AGENT_NICE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robots", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--percentage", type=int, default=25)
    parser.add_argument("--deadline", type=float, default=600, help="give up on the deployment after this")
    parser.add_argument(
        "--control", choices=("lean", "httpx"), default="lean", help="how agents send polls and reports"
    )
    parser.add_argument("--profile", help="py-spy the server during the deployment into this raw file")
    parser.add_argument(
        "--agent-nice",
        type=int,
        default=AGENT_NICE,
        help="nice of the simulated downloads (0: same as server)",
    )
    parser.add_argument(
        "--downloads",
        choices=("process", "thread"),
        default="process",
        help="run the simulated robots' downloads in worker processes (as separate robots) or threads",
    )
    args = parser.parse_args()
    AGENT_NICE = args.agent_nice
    # forked first, while this process has no other threads
    downloads = Downloads(args.downloads, min(args.robots, 2 * wave_size(args.robots, args.percentage)))
    work = Path(tempfile.mkdtemp(prefix="orm-deploy-bench-"))
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        bundle = work / "bundle.tar.gz"
        bundle.write_bytes(os.urandom(args.size_mb * 1024 * 1024))
        parallel = wave_size(args.robots, args.percentage)
        config = {"limits": {"fleets": 20}}
        # The ideal swings by +-12 % from run to run on this host: measured three times (before the
        # deployment, after it, after the floor) and compared by its median.
        ideals = [ideal_copy_once(work, bundle, args.robots, parallel)]
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
                deploy(
                    server,
                    rm,
                    args.robots,
                    args.percentage,
                    work / "agents",
                    args.deadline,
                    args.profile,
                    args.control,
                    downloads,
                )
            )
        ideals.append(ideal_copy_once(work, bundle, args.robots, parallel))
        (algorithm,) = result["algorithms"]
        floor = transport_floor(
            bundle, file_digest(bundle, "md5"), work, args.robots, parallel, downloads, algorithm
        )
        ideals.append(ideal_copy_once(work, bundle, args.robots, parallel))
        ideal, ideal_cpu = sorted(ideals)[len(ideals) // 2]
        mib = args.robots * args.size_mb  # MiB delivered (the bundle is size_mb MiB)
        per_agent_kib = (result["idle_rss_kib"] - result["baseline_rss_kib"]) / args.robots
        print(
            f"robots {args.robots}, bundle {args.size_mb} MB, {args.percentage}% -> waves of {parallel}; "
            f"agents download with the agent's code in {args.downloads}es (nice {AGENT_NICE}) and verify "
            f"with {algorithm}, poll and report with {args.control}; "
            f"load average before {load_before}"
        )
        print(f"deployment: {result['status']} ({result['insync']} InSync) in {result['seconds']:.2f} s")
        each = ", ".join(f"{seconds:.2f}" for seconds, _ in ideals)
        print(
            f"ideal copy {args.robots}x with parallelism {parallel}: {ideal:.2f} s "
            f"(median of {each} s: before the deployment, after it, after the floor)"
        )
        fastest, slowest = min(s for s, _ in ideals), max(s for s, _ in ideals)
        print(
            f"ratio deployment / ideal: {result['seconds'] / ideal:.2f} (target <= 1.5; "
            f"{result['seconds'] / slowest:.2f}-{result['seconds'] / fastest:.2f} against each ideal)"
        )
        print(
            f"transport+hash floor (the same simulated downloads from a static sendfile server, no auth or "
            f"bookkeeping): {floor['seconds']:.2f} s -> floor / ideal {floor['seconds'] / ideal:.2f}, "
            f"deployment / floor {result['seconds'] / floor['seconds']:.2f}"
        )
        print(
            f"CPU during the deployment: server {result['server_cpu']:.1f} s, simulated agents "
            f"{result['bench_cpu']:.1f} s (downloads in worker processes {result['workers_cpu']:.1f} s, polls "
            f"and reports {result['bench_cpu'] - result['workers_cpu']:.1f} s), over {result['seconds']:.1f} s "
            f"on {os.cpu_count()} cores"
        )
        split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["server_split"].items())
        print(f"server CPU by thread: {split}")
        print(
            "CPU per MiB delivered, ms: "
            f"deployment server {1000 * result['server_cpu'] / mib:.2f} + agents {1000 * result['bench_cpu'] / mib:.2f}; "
            f"floor static server {1000 * floor['server_cpu'] / mib:.2f} + agents {1000 * floor['agents_cpu'] / mib:.2f}; "
            f"ideal copy {1000 * ideal_cpu / mib:.2f}"
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
        downloads.close()
        if not os.environ.get("KEEP_BENCH"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
