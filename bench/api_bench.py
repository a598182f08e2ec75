#!/usr/bin/env python3
"""API throughput and latency: OpenRoboMaker vs moto_server, side by side in one run.

    python bench/api_bench.py [--seconds 5] [--concurrency 1 16] [--no-write] [--client raw|http.client]

Starts `openrobomaker serve` (temp data dir: SQLite + local object store, dev key) and `moto_server`
(moto 5.1.15, the last release with RoboMaker) on free loopback ports, then runs the same workload against
both: CreateRobotApplication, DescribeRobotApplication and ListRobotApplications at each concurrency, for
--seconds per cell. Requests are signed by botocore's own SigV4Auth before a cell starts (one signed request
per call for creates; a pool of signed requests, replayed, for describe and list), so signing costs neither
peer anything; each client thread keeps one HTTP/1.1 keep-alive connection and writes each request as
pre-encoded bytes, reading back only the status line, headers and body (`RawConnection`; `--client
http.client` uses http.client as runs before 2026-11-28 21:20 UTC did). Both peers get the same client;
connections are opened before a cell's clock starts.
Both peers hold the same 20 applications while describe and list run; creates run last.

Differences the workload has to respect: moto's DescribeRobotApplication looks the application up by name
(its dict key), not by ARN, so moto gets the name; ours gets the ARN, as boto3 users send it. moto does not
check that the bundle exists; ours does (a HEAD on the local store per create).

Prints a table with both peers and the ratios, and writes the section between the api_bench markers in
bench/RESULTS.md (date, machine, load, numbers, targets). Targets at concurrency 16: describe throughput
>= 3x moto's and p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
START_MARK, END_MARK = "<!-- api_bench:start -->", "<!-- api_bench:end -->"
NOTES_MARK = "<!-- api_bench:notes (kept when the numbers above are rewritten) -->"
SUITE = {"name": "ROS", "version": "Melodic"}
BUCKET, KEY = "bench-bundles", "robot.tar.gz"
SOURCE = {"s3Bucket": BUCKET, "s3Key": KEY, "architecture": "X86_64"}
APPS = 20
REPLAY_POOL = 256
CREATE_RATE_CAP = 4000  # signed create requests prepared per second of a cell
OPERATIONS = ("DescribeRobotApplication", "ListRobotApplications", "CreateRobotApplication")
PATHS = {op: "/" + op[0].lower() + op[1:] for op in OPERATIONS}


# --- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", parts.path)
            if conn.getresponse().status < 500:
                conn.close()
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def executable(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found (pip install -e '.[test]')")
    return found


@contextlib.contextmanager
def running(command: list[str], health: str, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(health, process)
        yield process
    finally:
        stop(process)


# --- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def wire(self) -> bytes:
        """The request exactly as http.client puts it on the socket (request line, headers, body)."""
        lines = [f"{self.method} {self.path} HTTP/1.1", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if not any(name.lower() == "content-length" for name in self.headers):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class RawConnection:
    """One keep-alive HTTP/1.1 connection that writes pre-encoded requests and reads each response only as
    far as it must (status line, headers, a Content-Length or chunked body).

    http.client parses every response header through the email package: 0.30-0.33 ms of client CPU per
    Describe at concurrency 16 (measured 2026-11-28), and with 16 client threads on one GIL that becomes
    queueing in the measured latency of both peers. This client takes 0.08-0.10 ms; both peers get the
    same one (--client http.client measures with the old one).
    """

    def __init__(self, host: str, port: int, timeout: float):
        self.address, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.connect()

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, wire: bytes) -> int:
        """Send one request, read its whole response; return the status code."""
        if self.sock is None:
            self.connect()  # the server closed the last one (moto does after some responses)
        self.sock.sendall(wire)
        head = self._read_until(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        version, status = status_line.split(b" ", 2)[:2]
        length, chunked, keep_alive = None, False, version == b"HTTP/1.1"
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = b"keep-alive" in value or (keep_alive and b"close" not in value)
        if chunked:
            self._read_chunked()
        elif length is not None:
            self._read_exact(length)
        else:
            keep_alive = False  # the body runs to the end of the connection
        if not keep_alive:
            self.close()
        return int(status)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        self.buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return head

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_chunked(self) -> None:
        while size := int(self._read_until(b"\r\n").split(b";", 1)[0], 16):
            self._read_exact(size + 2)
        while self._read_until(b"\r\n"):  # trailers, then the empty line
            pass


@dataclass
class Peer:
    name: str
    endpoint: str
    key: tuple[str, str]
    by_name: bool  # moto describes by name
    pid: int = 0  # the server process, for its CPU time
    apps: list[tuple[str, str]] = field(default_factory=list)  # (name, arn)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.endpoint)
        return parts.hostname, parts.port

    def sign(self, operation: str, params: dict) -> Signed:
        body = json.dumps(params).encode()
        request = AWSRequest(
            method="POST",
            url=self.endpoint + PATHS[operation],
            data=body,
            headers={"Content-Type": "application/json"},
        )
        SigV4Auth(Credentials(*self.key), "robomaker", "us-east-1").add_auth(request)
        prepared = request.prepare()
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in prepared.headers.items()}
        headers["Host"] = urlsplit(self.endpoint).netloc
        return Signed("POST", PATHS[operation], headers, body)

    def call(self, operation: str, params: dict) -> dict:
        conn = http.client.HTTPConnection(*self.host_port, timeout=30)
        try:
            signed = self.sign(operation, params)
            conn.request(signed.method, signed.path, body=signed.body, headers=signed.headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.name} {operation}: {response.status} {payload[:300]!r}")
            return json.loads(payload or b"{}")
        finally:
            conn.close()

    def prepare(self, operation: str, count: int, cell: str) -> list[Signed]:
        if operation == "CreateRobotApplication":
            return [
                self.sign(
                    operation, {"name": f"{cell}-{i}", "sources": [SOURCE], "robotSoftwareSuite": SUITE}
                )
                for i in range(count)
            ]
        if operation == "DescribeRobotApplication":
            targets = [name if self.by_name else arn for name, arn in self.apps]
            return [
                self.sign(operation, {"application": targets[i % len(targets)]}) for i in range(REPLAY_POOL)
            ]
        return [self.sign(operation, {}) for _ in range(REPLAY_POOL)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    operation: str
    concurrency: int
    peer: str
    completed: int
    errors: int
    elapsed: float
    latencies: list[float]
    server_cpu: float = 0.0  # CPU seconds the server process used during the cell

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.server_cpu / self.completed if self.completed else float("nan")

    @property
    def throughput(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class HttpClientConnection:
    """The same exchange through http.client (the client of runs before 2026-11-28 21:20 UTC)."""

    def __init__(self, host: str, port: int, timeout: float):
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.connect()

    def send(self, signed: Signed) -> int:
        self.conn.request(signed.method, signed.path, body=signed.body, headers=signed.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.conn.close()


CLIENTS = ("raw", "http.client")
CLIENT_NOTES = {
    "raw": "pre-encoded requests on raw sockets, the same for both peers",
    "http.client": "http.client",
}


def run_cell(
    peer: Peer,
    operation: str,
    concurrency: int,
    seconds: float,
    requests: list[Signed],
    replay: bool,
    client: str = "raw",
) -> Cell:
    """`concurrency` threads, one keep-alive connection each, for `seconds` (or until creates run out)."""
    wires = [signed.wire for signed in requests] if client == "raw" else []
    cursor = iter(range(len(requests) * (10**6 if replay else 1)))
    cursor_lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    deadline_box: list[float] = []
    results: list[tuple[list[float], int]] = []

    def next_index() -> int | None:
        with cursor_lock:
            index = next(cursor, None)
        return None if index is None else index % len(requests)

    def connect() -> RawConnection | HttpClientConnection:
        factory = RawConnection if client == "raw" else HttpClientConnection
        return factory(*peer.host_port, timeout=60)

    def worker() -> None:
        latencies: list[float] = []
        errors = 0
        conn = connect()  # before the clock starts: the cell measures requests, not TCP handshakes
        start_barrier.wait()
        deadline = deadline_box[0]
        while time.perf_counter() < deadline:
            index = next_index()
            if index is None:
                break
            began = time.perf_counter()
            try:
                if client == "raw":
                    ok = conn.exchange(wires[index]) == 200
                else:
                    ok = conn.send(requests[index]) == 200
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()  # both reconnect on their next request
            latencies.append(time.perf_counter() - began)
            errors += 0 if ok else 1
        conn.close()
        results.append((latencies, errors))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu_before = cpu_seconds(peer.pid) if peer.pid else 0.0
    began = time.perf_counter()
    deadline_box.append(began + seconds)
    start_barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(peer.pid) - cpu_before if peer.pid else 0.0
    latencies = [value for thread_latencies, _ in results for value in thread_latencies]
    errors = sum(e for _, e in results)
    return Cell(operation, concurrency, peer.name, len(latencies) - errors, errors, elapsed, latencies, cpu)


# --- setup ------------------------------------------------------------------------------------------------


def setup_apps(peer: Peer) -> None:
    for i in range(APPS):
        name = f"bench-app-{i}"
        created = peer.call(
            "CreateRobotApplication", {"name": name, "sources": [SOURCE], "robotSoftwareSuite": SUITE}
        )
        peer.apps.append((name, created["arn"]))
    # Both peers answer describe for every app before measuring.
    for name, arn in peer.apps:
        peer.call("DescribeRobotApplication", {"application": name if peer.by_name else arn})


def warm_up(peer: Peer, client: str) -> None:
    for operation in ("DescribeRobotApplication", "ListRobotApplications"):
        requests = peer.prepare(operation, 0, "warm")
        run_cell(peer, operation, 4, 1.0, requests, replay=True, client=client)


# --- report -----------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "uvicorn",
        "starlette",
        "httptools",
        "uvloop",
        "orjson",
        "sqlalchemy",
        "moto",
        "werkzeug",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpus": str(os.cpu_count()),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or "?",
        "model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


LABELS = {
    "DescribeRobotApplication": "Describe",
    "ListRobotApplications": "List",
    "CreateRobotApplication": "Create",
}


def table(cells: dict[tuple[str, int, str], Cell], concurrencies: list[int]) -> list[str]:
    lines = [
        "| operation | conc | ours req/s | ours p50 ms | ours p99 ms | ours CPU ms/req | moto req/s | moto p50 ms "
        "| moto p99 ms | moto CPU ms/req | req/s ours/moto | p99 ours/moto |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for operation in OPERATIONS:
        for concurrency in concurrencies:
            ours, moto = cells[(operation, concurrency, "ours")], cells[(operation, concurrency, "moto")]
            ratio = ours.throughput / moto.throughput if moto.throughput else float("inf")
            p99_ratio = ours.percentile(0.99) / moto.percentile(0.99)
            errors = ""
            if ours.errors or moto.errors:
                errors = f" (errors: ours {ours.errors}, moto {moto.errors})"
            lines.append(
                f"| {LABELS[operation]}{errors} | {concurrency} "
                f"| {ours.throughput:.0f} | {ours.percentile(0.5):.1f} | {ours.percentile(0.99):.1f} "
                f"| {ours.cpu_ms_per_request:.2f} "
                f"| {moto.throughput:.0f} | {moto.percentile(0.5):.1f} | {moto.percentile(0.99):.1f} "
                f"| {moto.cpu_ms_per_request:.2f} | **{ratio:.2f}** | {p99_ratio:.2f} |"
            )
    return lines


def targets(cells: dict[tuple[str, int, str], Cell], concurrency: int) -> list[tuple[str, str, bool]]:
    ours = cells.get(("DescribeRobotApplication", concurrency, "ours"))
    moto = cells.get(("DescribeRobotApplication", concurrency, "moto"))
    if ours is None or moto is None:
        return []
    ratio = ours.throughput / moto.throughput
    p99 = ours.percentile(0.99)
    return [
        (f"describe throughput at concurrency {concurrency} ≥ 3× moto", f"{ratio:.2f}×", ratio >= 3),
        (f"describe p99 at concurrency {concurrency} ≤ 20 ms", f"{p99:.1f} ms", p99 <= 20),
    ]


def write_results(section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (appended the first time); hand-written notes after
    NOTES_MARK are kept; other benchmarks' sections are left alone."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    notes = f"{NOTES_MARK}\n"
    head, tail = (text.rstrip() + "\n\n" if text.strip() else ""), ""
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        old, tail = rest.split(END_MARK, 1)
        if NOTES_MARK in old:
            notes = NOTES_MARK + old.split(NOTES_MARK, 1)[1]
    block = f"{START_MARK}\n{section.rstrip()}\n\n{notes.rstrip()}\n{END_MARK}\n"
    RESULTS.write_text(head + block + tail.lstrip("\n"))


# --- main -------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="load generator for both peers: pre-encoded requests on raw sockets (default) or http.client",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from openrobomaker.objectstore import ObjectStoreConfig, open_store

    work = Path(tempfile.mkdtemp(prefix="orm-api-bench-"))
    ours_port, moto_port = free_port(), free_port()
    load_before = os.getloadavg()
    cells: dict[tuple[str, int, str], Cell] = {}
    try:
        data_dir = work / "data"
        store = open_store(ObjectStoreConfig(kind="local", root=str(data_dir / "objects")))
        store.create_bucket(BUCKET)
        store.put_bytes(BUCKET, KEY, os.urandom(64 * 1024))
        ours_cmd = [
            executable("openrobomaker"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(ours_port),
            "--data-dir",
            str(data_dir),
        ]
        moto_cmd = [executable("moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)]
        with (
            running(ours_cmd, f"http://127.0.0.1:{ours_port}/health", work / "ours.log") as ours_process,
            running(moto_cmd, f"http://127.0.0.1:{moto_port}/moto-api/", work / "moto.log") as moto_process,
        ):
            peers = [
                Peer("ours", f"http://127.0.0.1:{ours_port}", ("test", "test"), False, ours_process.pid),
                Peer("moto", f"http://127.0.0.1:{moto_port}", ("bench", "bench"), True, moto_process.pid),
            ]
            for peer in peers:
                setup_apps(peer)
                warm_up(peer, args.client)
            for operation in OPERATIONS:
                for concurrency in args.concurrency:
                    for peer in peers:
                        cell_id = f"c{concurrency}"
                        replay = operation != "CreateRobotApplication"
                        count = int(args.seconds * CREATE_RATE_CAP)
                        requests = peer.prepare(operation, count, cell_id)
                        cell = run_cell(
                            peer, operation, concurrency, args.seconds, requests, replay, args.client
                        )
                        cells[(operation, concurrency, peer.name)] = cell
                        print(
                            f"{operation:28} c={concurrency:<3} {peer.name:5} {cell.throughput:8.0f} req/s "
                            f"p50 {cell.percentile(0.5):6.1f} ms  p99 {cell.percentile(0.99):6.1f} ms"
                            f"  server CPU {cell.cpu_ms_per_request:5.2f} ms/req  errors {cell.errors}",
                            flush=True,
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    info = machine()
    lines = table(cells, args.concurrency)
    verdicts = targets(cells, max(args.concurrency))
    print()
    print("\n".join(lines))
    for name, value, ok in verdicts:
        print(f"target: {name}: {value} — {'met' if ok else 'NOT MET'}")

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        "## API server vs moto_server (issue 2) — `bench/api_bench.py`",
        "",
        f"Run {now}; {args.seconds:g} s per cell; machine: {info['nproc']} CPUs ({info['model']}), "
        f"Linux {info['kernel']}, Python {info['python']}; load average before/after "
        f"{load_before[0]:.1f}/{load_after[0]:.1f} (other work on the machine shares the cores).",
        f"Packages: {info['versions']}.",
        "",
        "Both servers on loopback, client threads on the same machine (one keep-alive connection each,"
        f" requests pre-signed with botocore's SigV4Auth; client: {CLIENT_NOTES[args.client]}). Ours: `openrobomaker serve` defaults (SQLite WAL +"
        " local object store, one log line per request). moto describes by name (its lookup key), ours by ARN."
        " 20 applications exist during describe/list; creates run last.",
        "",
        *lines,
        "",
        "| target | result | |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'met' if ok else '**not met**'} |" for name, value, ok in verdicts],
        "",
    ]
    if not args.no_write:
        write_results("\n".join(section))
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
