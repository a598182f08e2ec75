"""Deployment benchmark (issue 5): a 20 MB bundle to 200 simulated robots at concurrentDeploymentPercentage
25, against the ideal of copying the same bundle 200 times with the same parallelism, in the same run.

The simulated agents are the real agent protocol without ROS: each long-polls the agent channel with its
own robot credentials (SigV4), reports Validating, downloads the bundle through the server, checks its
MD5 against the ETag and reports Finished. Also measured: server memory and CPU per connected idle agent.

    python bench/deploy_bench.py [--robots 200] [--size-mb 20] [--percentage 25]
"""

from __future__ import annotations

import argparse
import asyncio
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


class SimulatedAgent:
    """One robot's agent, as the real one behaves on the wire: reports are retried until the server took
    them (the real agent's outbox) and an interrupted download resumes with a Range request."""

    def __init__(self, http: httpx.AsyncClient, endpoint: str, creds: dict, work: Path):
        self.http, self.endpoint, self.creds, self.work = http, endpoint, creds, work
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
            except httpx.TransportError as exc:
                error = exc
            self.errors.append(f"{what}: {error!r}")
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"{self.creds['robotArn']}: {what} kept failing: {self.errors[-3:]}")

    async def _report(self, job_id: str, step: str, **fields) -> None:
        self.seq += 1
        payload = {"jobId": job_id, "seq": self.seq, "step": step, **fields}
        await self._retrying(lambda: self._post_once("/_agent/v1/report", payload, 30), f"report {step}")

    async def _download(self, job_id: str) -> tuple[str, str]:
        from urllib.parse import quote, urlencode

        query = urlencode({"robot": self.creds["robotArn"], "jobId": job_id}, quote_via=quote, safe="")
        url = f"{self.endpoint}/_agent/v1/bundle?{query}"
        digest = hashlib.md5(usedforsecurity=False)
        received, etag = 0, ""

        async def once() -> None:
            nonlocal received, etag
            headers = self._headers("GET", url, b"")
            if received:
                headers["Range"] = f"bytes={received}-"
            async with self.http.stream("GET", url, headers=headers, timeout=120) as response:
                response.raise_for_status()
                self.marks.setdefault("headers", time.time())
                etag = response.headers["etag"].strip('"')
                with open(self.work / "bundle", "ab" if received else "wb") as out:
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        self.marks.setdefault("first_byte", time.time())
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)

        await self._retrying(once, "download")
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
            await self._report(job_id, "Validating")
            self.marks["validating_acked"] = time.time()
            etag, md5 = await self._download(job_id)
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
                "download": [x["downloaded"] - x["first_byte"] for x in m],
                "report": [finish[e["arn"]] - marks[e["arn"]]["finished_sent"] for e in entries],
                "ack": [x["finished_acked"] - x["finished_sent"] for x in m],
                "duration": end - start,
            }
        )
        previous_end = end
    return rows


def print_breakdown(rows: list[dict]) -> None:
    print("per wave (seconds, min/median/max over the wave's robots):")
    print(
        "wave robots  gap-before  start->assigned   Validating-rtt    start->1st-byte   download"
        "          Finished->recorded  Finished-rtt      wave"
    )
    for index, row in enumerate(rows):
        gap = "-" if row["gap"] is None else f"{row['gap']:.2f}"
        print(
            f"{index:>4} {row['robots']:>6}  {gap:>10}  {_stats(row['assigned']):<16}  "
            f"{_stats(row['validating']):<16}  {_stats(row['first_byte']):<16}  "
            f"{_stats(row['download']):<16}  {_stats(row['report']):<18}  {_stats(row['ack']):<16}  "
            f"{row['duration']:.2f}"
        )


def ideal_copy(source: Path, dest_root: Path, copies: int, parallel: int) -> float:
    """Copy the bundle `copies` times, `parallel` at a time, in waves like the deployment's."""
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        for wave_start in range(0, copies, parallel):
            wave = range(wave_start, min(copies, wave_start + parallel))
            list(pool.map(lambda i: shutil.copyfile(source, dest_root / f"copy-{i}"), wave))
    return time.perf_counter() - started


async def deploy(server, rm, robots: int, percentage: int, work: Path, deadline: float) -> dict:
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
    limits = httpx.Limits(max_connections=robots * 3, max_keepalive_connections=robots * 3)
    async with httpx.AsyncClient(limits=limits) as http:
        agents = []
        for index, cred in enumerate(creds):
            directory = work / f"agent-{index}"
            directory.mkdir()
            agents.append(SimulatedAgent(http, server.endpoint, cred, directory))
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
        while (described := await asyncio.to_thread(rm.describe_deployment_job, job=job))["status"] not in (
            "Succeeded",
            "Failed",
        ):
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise RuntimeError("a simulated agent died") from task.exception()
            if time.perf_counter() - started > deadline:
                states = [r["status"] for r in described["robotDeploymentSummary"]]
                counts = {state: states.count(state) for state in set(states)}
                raise TimeoutError(f"the deployment did not end within {deadline} s: {counts}")
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orm-deploy-bench-"))
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
                deploy(server, rm, args.robots, args.percentage, work / "agents", args.deadline)
            )
        copies = work / "copies"
        copies.mkdir()
        ideal = ideal_copy(bundle, copies, args.robots, parallel)
        per_agent_kib = (result["idle_rss_kib"] - result["baseline_rss_kib"]) / args.robots
        print(f"robots {args.robots}, bundle {args.size_mb} MB, {args.percentage}% -> waves of {parallel}")
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
