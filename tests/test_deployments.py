"""Deployments to fleets of real agent processes running a real ROS 1 application (issue 5)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import httpx
import pytest

from deploy_helpers import (
    AgentProcess,
    add_robot,
    app_config,
    deploying_intervals,
    fleet_of_agents,
    hello_bundle,
    job_id,
    object_store,
    robot_application,
    robot_credentials,
    signed_get,
    signed_post,
    wait_for_job,
    wait_until,
)
from helpers import REGION, most_at_once, running_server
from openrobomaker.agent import deployer as deployer_module
from openrobomaker.agent.client import AgentClient, RobotCredentials
from openrobomaker.agent.deployer import Deployer, StepFailed
from openrobomaker.agent.state import WorkDir
from openrobomaker.api import agent_blobs
from openrobomaker.config import ConfigError, build_settings

pytestmark = pytest.mark.timeout(240)

FAST = {"robotDeploymentTimeoutInSeconds": 60}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    with running_server(data_dir=tmp_path_factory.mktemp("server")) as server:
        rm = server.client()
        store = object_store(server)
        app = robot_application(rm, store, tmp, "hello")
        yield {"server": server, "rm": rm, "store": store, "app": app, "tmp": tmp}


@pytest.fixture(scope="module")
def killed_agent(env):
    """Started first, checked last: an agent killed mid-deploy times out after the 60 s minimum."""
    rm, tmp = env["rm"], env["tmp"]
    fleet = rm.create_fleet(name="killed")["arn"]
    agent = add_robot(env["server"], rm, tmp, fleet, "killed-r0")
    job = rm.create_deployment_job(
        fleet=fleet,
        deploymentApplicationConfigs=app_config(env["app"], environmentVariables={"PRE_SLEEP": "30"}),
        deploymentConfig={"concurrentDeploymentPercentage": 100, "failureThresholdPercentage": 100, **FAST},
    )["arn"]
    deadline = time.monotonic() + 30
    while not any(r["step"] == "ExecutingPreLaunch" for r in agent.reports(job_id(job))):
        assert time.monotonic() < deadline, "the agent never reached ExecutingPreLaunch"
        time.sleep(0.2)
    agent.kill()
    yield {"job": job, "agent": agent, "killed_at": time.time()}
    agent.stop()


def deploy(rm, fleet, app, **config):
    deployment_config = {"failureThresholdPercentage": 100, **FAST, **config}
    return rm.create_deployment_job(
        fleet=fleet,
        deploymentApplicationConfigs=app.pop("_configs", None) or app_config(app),
        deploymentConfig=deployment_config,
    )["arn"]


def test_full_rollout_in_waves(env, killed_agent):
    rm, server = env["rm"], env["server"]
    with fleet_of_agents(server, rm, env["tmp"], "waves", 4) as (fleet, agents):
        started = time.time()
        job = deploy(rm, fleet, dict(env["app"]), concurrentDeploymentPercentage=50)
        seen_steps = set()
        while (described := rm.describe_deployment_job(job=job))["status"] not in ("Succeeded", "Failed"):
            for entry in described["robotDeploymentSummary"]:
                seen_steps.add(entry["progressDetail"].get("currentProgress"))
            assert time.time() - started < 90
            time.sleep(0.2)
        assert described["status"] == "Succeeded", described
        summary = described["robotDeploymentSummary"]
        assert [r["status"] for r in summary] == ["InSync"] * 4
        assert {r["progressDetail"]["currentProgress"] for r in summary} == {"Finished"}
        assert "ExecutingPreLaunch" in seen_steps or "Launching" in seen_steps
        # waves of 50% of 4 = 2: never more than 2 robots deploying at once, by the robots' own clocks
        intervals = deploying_intervals(agents, job_id(job))
        assert len(intervals) == 4 and most_at_once(list(intervals.values())) == 2
        starts = sorted(r["deploymentStartTime"].timestamp() for r in summary)
        finishes = sorted(r["deploymentFinishTime"].timestamp() for r in summary)
        assert starts[2] >= finishes[1] - 0.01  # wave 2 starts after wave 1 ended
        fleet_view = rm.describe_fleet(fleet=fleet)
        assert fleet_view["lastDeploymentStatus"] == "Succeeded" and fleet_view["lastDeploymentJob"] == job
        assert {r["status"] for r in fleet_view["robots"]} == {"InSync"}
        # the application really runs, with the env vars and the robot's tag, each on its own ROS master
        masters = set()
        for agent in agents:
            log = agent.app_log(job_id(job))
            assert "GREETING=hi" in log and f"TAG={agent.work_dir.name}" in log
            masters.add(log.split("MASTER=")[1].split()[0])
            pre = (agent.work_dir / "deployments" / job_id(job) / "preLaunchFile.log").read_text()
            post = (agent.work_dir / "deployments" / job_id(job) / "postLaunchFile.log").read_text()
            assert "pre-launch GREETING=hi" in pre and "/hello" in post
            download = [r for r in agent.reports(job_id(job)) if r["step"] == "DownloadingExtracting"]
            assert download[-1]["percentDone"] == 100.0
        assert len(masters) == 4

        # the next deployment replaces the running application; a failing one leaves it running
        job2 = deploy(rm, fleet, {**env["app"], "_configs": app_config(env["app"], preLaunchFile="bad_pre.sh")},
                      concurrentDeploymentPercentage=100)  # fmt: skip
        failed = wait_for_job(rm, job2)
        assert (failed["status"], failed["failureCode"]) == ("Failed", "FailureThresholdBreached")  # 4 of 4
        assert {r["failureCode"] for r in failed["robotDeploymentSummary"]} == {"PreLaunchFileFailure"}
        assert {r["status"] for r in rm.describe_fleet(fleet=fleet)["robots"]} == {"Failed"}
        for agent in agents:
            assert agent.state()["current"]["jobId"] == job_id(job)
            assert agent.state()["app_process"] is not None


def test_failure_codes_provoked_for_real(env, tmp_path):
    rm, server, store, app = env["rm"], env["server"], env["store"], env["app"]
    etag_app = robot_application(rm, store, tmp_path, "etag-app")
    store.put_bytes("bundles", etag_app["key"], b"changed after the version was created")
    broken = robot_application(rm, store, tmp_path, "broken-app")
    store.put_bytes("bundles", broken["key"], b"this is not a tar archive")
    rm.create_robot_application_version(application=broken["arn"])  # version 2 pins the broken bytes
    arm_app = robot_application(rm, store, tmp_path, "arm-app", architectures=("ARM64",))
    store.put_bytes("bundles", "conditions/check.sh", b"#!/bin/bash\nexit 0\n")
    condition = {"bucket": "bundles", "key": "conditions/check.sh", "etag": "0" * 32}
    cases = {
        "PreLaunchFileFailure": (app, app_config(app, preLaunchFile="bad_pre.sh"), {}),
        "PostLaunchFileFailure": (app, app_config(app, postLaunchFile="bad_post.sh"), {}),
        "EtagMismatch": (etag_app, app_config(etag_app), {}),
        "ExtractingBundleFailure": (broken, app_config(broken, version="2"), {}),
        "DownloadConditionFailed": (app, app_config(app), {"downloadConditionFile": condition}),
        "MissingRobotArchitecture": (arm_app, app_config(arm_app), {}),
        "MissingRobotDeploymentResource": (app, app_config(app, launchFile="nope.launch"), {}),
    }
    jobs, agents = {}, []
    try:
        for code, (application, configs, extra) in cases.items():
            fleet = rm.create_fleet(name=f"fail-{code}")["arn"]
            arch = "ARM64" if code == "MissingRobotArchitecture" else "X86_64"
            agents.append(add_robot(server, rm, tmp_path, fleet, f"fail-{code}", arch))
            jobs[code] = deploy(rm, fleet, {**application, "_configs": configs}, **extra)
        for code, job in jobs.items():
            described = wait_for_job(rm, job)
            assert described["status"] == "Failed" and described["failureCode"] == "FailureThresholdBreached"
            (robot,) = described["robotDeploymentSummary"]
            assert (robot["status"], robot["failureCode"]) == ("Failed", code), robot
            assert robot["failureReason"]
    finally:
        for agent in agents:
            agent.stop()


def test_application_architecture_checked_before_any_robot(env):
    rm = env["rm"]
    fleet = rm.create_fleet(name="arm-fleet")["arn"]
    robot = rm.create_robot(name="arm-robot", architecture="ARMHF", greengrassGroupId="g-armhf")["arn"]
    rm.register_robot(fleet=fleet, robot=robot)
    job = wait_for_job(rm, deploy(rm, fleet, dict(env["app"])))
    assert (job["status"], job["failureCode"]) == ("Failed", "MissingRobotApplicationArchitecture")
    assert job["robotDeploymentSummary"][0]["failureCode"] == "RobotDeploymentAborted"
    assert rm.describe_robot(robot=robot)["status"] == "Registered"


def test_threshold_stops_the_rollout(env):
    rm, app = env["rm"], env["app"]
    with fleet_of_agents(env["server"], rm, env["tmp"], "threshold", 4) as (fleet, agents):
        configs = app_config(app, preLaunchFile="bad_pre.sh")
        job = deploy(rm, fleet, {**app, "_configs": configs}, concurrentDeploymentPercentage=25,
                     failureThresholdPercentage=50)  # fmt: skip
        described = wait_for_job(rm, job)
        assert (described["status"], described["failureCode"]) == ("Failed", "FailureThresholdBreached")
        codes = sorted(r["failureCode"] for r in described["robotDeploymentSummary"])
        assert codes == ["PreLaunchFileFailure"] * 2 + ["RobotDeploymentAborted"] * 2
        time.sleep(1.5)
        assert sum(1 for a in agents if a.reports(job_id(job))) == 2  # the others never started
        assert rm.describe_fleet(fleet=fleet)["lastDeploymentStatus"] == "Failed"


def test_sync_after_adding_a_robot_and_cancel(env):
    rm, server, tmp = env["rm"], env["server"], env["tmp"]
    with fleet_of_agents(server, rm, tmp, "sync", 1) as (fleet, agents):
        first = wait_for_job(rm, deploy(rm, fleet, dict(env["app"])))
        assert first["status"] == "Succeeded"
        agents.append(add_robot(server, rm, tmp, fleet, "sync-late"))
        late = agents[-1].robot_arn
        assert rm.describe_robot(robot=late)["status"] == "Registered"
        synced = rm.sync_deployment_job(fleet=fleet)
        assert synced["status"] == "Pending" and synced["arn"] != first["arn"]
        assert synced["deploymentApplicationConfigs"] == first["deploymentApplicationConfigs"]
        done = wait_for_job(rm, synced["arn"])
        assert done["status"] == "Succeeded"
        assert [r["arn"] for r in done["robotDeploymentSummary"]] == [late]
        assert rm.describe_robot(robot=late)["status"] == "InSync"

        # cancel: one robot per wave, cancel while the first robot deploys; the rest never start
        for index in range(2):
            agents.append(add_robot(server, rm, tmp, fleet, f"sync-c{index}"))
        before = {a.robot_arn: rm.describe_robot(robot=a.robot_arn)["status"] for a in agents}
        configs = app_config(env["app"], environmentVariables={"PRE_SLEEP": "5"})
        job = deploy(rm, fleet, {**env["app"], "_configs": configs}, concurrentDeploymentPercentage=25)
        wait_for_job(rm, job, statuses=("InProgress",))
        rm.cancel_deployment_job(job=job)
        described = wait_for_job(rm, job)
        assert described["status"] == "Canceled"
        started = [e for e in described["robotDeploymentSummary"] if e.get("deploymentStartTime")]
        assert len(started) == 1, described  # canceled during the first wave (its pre-launch sleeps 5 s)
        first = started[0]["arn"]

        # the robot already deploying finishes its deployment: wait for it, not for a fixed time
        def first_robot_done():
            entries = rm.describe_deployment_job(job=job)["robotDeploymentSummary"]
            return entries if all(e["status"] != "Deploying" for e in entries) else None

        entries = wait_until(first_robot_done, timeout=120, what=f"{first} to finish deploying")
        by_robot = {e["arn"]: e for e in entries}
        assert by_robot[first]["status"] == "InSync", by_robot[first]
        assert by_robot[first]["progressDetail"]["currentProgress"] == "Finished"
        aborted = [e for e in entries if e.get("failureCode") == "RobotDeploymentAborted"]
        assert len(aborted) == 3 and {e["status"] for e in aborted} == {"Failed"}
        assert rm.describe_deployment_job(job=job)["status"] == "Canceled"
        assert rm.describe_robot(robot=first)["status"] == "InSync"
        for agent in agents:
            if agent.robot_arn != first:
                # never started: no report for the job, and the robot has its status from before the job
                assert agent.reports(job_id(job)) == []
                assert rm.describe_robot(robot=agent.robot_arn)["status"] == before[agent.robot_arn]


def test_server_restart_mid_rollout(env):
    rm, server = env["rm"], env["server"]
    with fleet_of_agents(server, rm, env["tmp"], "restart", 3) as (fleet, agents):
        configs = app_config(env["app"], environmentVariables={"PRE_SLEEP": "2"})
        job = deploy(rm, fleet, {**env["app"], "_configs": configs}, concurrentDeploymentPercentage=34)
        wait_for_job(rm, job, statuses=("InProgress",))
        server.kill()
        time.sleep(2)
        server.start()
        rm = server.client()
        described = wait_for_job(rm, job)
        assert described["status"] == "Succeeded", described
        assert [r["status"] for r in described["robotDeploymentSummary"]] == ["InSync"] * 3
        intervals = deploying_intervals(agents, job_id(job))
        assert most_at_once(list(intervals.values())) == 1


def test_bundle_from_s3_by_presigned_url(moto_s3, tmp_path):
    """With an S3 object store the agent fetches the bundle from S3 itself (the server answers a 307 to a
    presigned URL), and the deployment completes as through the server."""
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="direct-bundles")
    s3.upload_file(str(hello_bundle(tmp_path / "direct.tar.gz")), "direct-bundles", "hello/bundle.tar.gz")
    with running_server(config={"object_store": moto_s3.store_config()}, data_dir=tmp_path) as server:
        rm = server.client()
        source = {"s3Bucket": "direct-bundles", "s3Key": "hello/bundle.tar.gz", "architecture": "X86_64"}
        app_arn = rm.create_robot_application(
            name="direct", sources=[source], robotSoftwareSuite={"name": "ROS", "version": "Melodic"}
        )["arn"]
        rm.create_robot_application_version(application=app_arn)
        app = {"arn": app_arn, "key": source["s3Key"]}
        with fleet_of_agents(server, rm, tmp_path, "direct", 1) as (fleet, agents):
            described = wait_for_job(rm, deploy(rm, fleet, app))
            assert described["status"] == "Succeeded", described
            (download,) = [e for e in agents[0].events() if e["event"] == "download"]
            assert download["source"] == f"{moto_s3.endpoint}/direct-bundles/hello/bundle.tar.gz"
            assert not [e for e in agents[0].events() if e["event"] == "direct-download-failed"]


def test_robot_credentials_are_per_robot(env, tmp_path):
    rm, server = env["rm"], env["server"]
    fleet = rm.create_fleet(name="creds")["arn"]
    one = rm.create_robot(name="creds-one", architecture="X86_64", greengrassGroupId="g-c1")["arn"]
    two = rm.create_robot(name="creds-two", architecture="X86_64", greengrassGroupId="g-c2")["arn"]
    rm.register_robot(fleet=fleet, robot=one)
    creds = robot_credentials(server.endpoint, one)
    key = (creds["accessKeyId"], creds["secretAccessKey"])
    assert signed_post(server.endpoint, "/_agent/v1/poll", {"robot": one}, key).status_code == 200
    for path, body in (
        ("/_agent/v1/poll", {"robot": two}),
        ("/_agent/v1/report", {"robot": two, "jobId": "x"}),
    ):
        refused = signed_post(server.endpoint, path, body, key)
        assert refused.status_code == 403 and refused.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    # a robot cannot mint credentials, for itself or another
    assert signed_post(server.endpoint, "/_agent/v1/credentials", {"robot": two}, key).status_code == 403
    rm.delete_robot(robot=one)  # revokes its keys
    assert signed_post(server.endpoint, "/_agent/v1/poll", {"robot": one}, key).status_code == 403


def test_agent_killed_mid_deploy_times_out(env, killed_agent):
    rm = env["rm"]
    remaining = 75 - (time.time() - killed_agent["killed_at"])
    described = wait_for_job(rm, killed_agent["job"], timeout=max(remaining, 5))
    (robot,) = described["robotDeploymentSummary"]
    assert (robot["status"], robot["failureCode"]) == ("NoResponse", "RobotDeploymentNoResponse")
    assert rm.describe_robot(robot=robot["arn"])["status"] == "NoResponse"
    assert isinstance(killed_agent["agent"], AgentProcess)


def test_local_bundle_by_sendfile_ticket(env, tmp_path):
    """With the local object store, `direct=1` answers a 307 to the server's sendfile listener with a
    one-minute ticket: the bytes and ETag are the bundle's, `Range` resumes, a forged ticket is refused,
    and one robot still cannot get another's bundle."""
    rm, server = env["rm"], env["server"]
    fleet = rm.create_fleet(name="tickets")["arn"]
    one = add_robot(server, rm, tmp_path, fleet, "tickets-r0", start=False).robot_arn
    two = add_robot(server, rm, tmp_path, rm.create_fleet(name="tickets-2")["arn"], "tickets-r1", start=False)
    job = deploy(rm, fleet, dict(env["app"]), concurrentDeploymentPercentage=100)
    wait_until(
        lambda: rm.describe_deployment_job(job=job)["robotDeploymentSummary"][0]["status"] == "Deploying",
        what="the robot's wave to start",
    )
    creds = robot_credentials(server.endpoint, one)
    key = (creds["accessKeyId"], creds["secretAccessKey"])
    query = {"robot": one, "jobId": job_id(job), "direct": "1"}
    redirect = signed_get(server.endpoint, "/_agent/v1/bundle", query, key)
    assert redirect.status_code == 307, redirect.text
    location = httpx.URL(redirect.headers["location"])
    assert location.path == "/blob" and location.port != httpx.URL(server.endpoint).port
    whole = httpx.get(location)
    assert whole.status_code == 200
    assert whole.headers["etag"] == redirect.headers["etag"] == f'"{hashlib.md5(whole.content).hexdigest()}"'
    assert len(whole.content) > 200
    tail = httpx.get(location, headers={"Range": "bytes=100-"})
    assert tail.status_code == 206 and tail.content == whole.content[100:]
    assert tail.headers["content-range"] == f"bytes 100-{len(whole.content) - 1}/{len(whole.content)}"
    forged = httpx.get(location.copy_set_param("t", location.params["t"][:-2] + "xx"))
    assert forged.status_code == 403 and forged.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    # another robot's credentials: neither its own name nor robot one's gets robot one's bundle
    other = robot_credentials(server.endpoint, two.robot_arn)
    other_key = (other["accessKeyId"], other["secretAccessKey"])
    for robot in (one, two.robot_arn):
        refused = signed_get(server.endpoint, "/_agent/v1/bundle", query | {"robot": robot}, other_key)
        assert refused.status_code in (403, 404) and "location" not in refused.headers, refused.text
    # the poll answer that hands the deployment over already carries a ticket for the same bytes
    polled = signed_post(server.endpoint, "/_agent/v1/poll", {"robot": one, "current": None}, key).json()
    assert polled["deployment"]["jobId"] == job_id(job)
    assert httpx.get(polled["deployment"]["bundleUrl"]).content == whole.content
    # without direct=1 the server streams the same bytes itself (the agent's fallback)
    streamed = signed_get(server.endpoint, "/_agent/v1/bundle", query | {"direct": "0"}, key)
    assert streamed.status_code == 200 and streamed.content == whole.content
    # the real agent's download: a dead offered ticket sends it to the channel for a fresh one; a partial
    # file resumes with Range and is hashed once in all
    work = WorkDir(tmp_path / "agent")
    client = AgentClient(server.endpoint, RobotCredentials(one, REGION, key[0], key[1]))
    deployer = Deployer(work, client, None, lambda *args, **fields: None, lambda job: False)
    dest = tmp_path / "bundle"
    etag, md5 = deployer._download("/_agent/v1/bundle", job_id(job), dest, False, offered=str(forged.url))
    assert etag == md5 == hashlib.md5(whole.content).hexdigest() and dest.read_bytes() == whole.content
    half = len(whole.content) // 2
    dest.write_bytes(whole.content[:half])
    assert deployer._download("/_agent/v1/bundle", job_id(job), dest, False) == (etag, md5)
    events = [e for e in work_events(work) if e["event"] in ("download", "direct-download-failed")]
    assert [e["event"] for e in events] == ["direct-download-failed", "download", "download"]
    assert events[1]["source"].endswith("/blob") and events[2]["source"].endswith("/blob")
    assert events[2]["start"] == half
    client.close()
    rm.cancel_deployment_job(job=job)


@pytest.mark.parametrize("faster", ["sha256", "md5"])
def test_bundle_bytes_checked_with_the_recorded_sha256_or_md5(env, tmp_path, monkeypatch, faster):
    """The local store records a SHA-256 beside each ETag; the deployment carries it (never the API's
    Source shape) and the agent verifies the bytes with it or with the MD5, whichever its CPU hashes
    faster: bytes changed in place, where the store and the sendfile ticket still see the same object and
    ETag, fail the robot with EtagMismatch either way."""
    monkeypatch.setattr(deployer_module, "faster_digest", lambda: faster)
    rm, server, store = env["rm"], env["server"], env["store"]
    app = robot_application(rm, store, tmp_path, f"sha-app-{faster}")
    described = rm.describe_robot_application(application=app["arn"], applicationVersion="1")
    assert [set(source) for source in described["sources"]] == [{"s3Bucket", "s3Key", "etag", "architecture"}]
    fleet = rm.create_fleet(name=f"sha-{faster}")["arn"]
    robot = add_robot(server, rm, tmp_path, fleet, f"sha-r0-{faster}", start=False).robot_arn
    job = deploy(rm, fleet, {**app, "_configs": app_config(app)}, concurrentDeploymentPercentage=100)
    wait_until(
        lambda: rm.describe_deployment_job(job=job)["robotDeploymentSummary"][0]["status"] == "Deploying",
        what="the robot's wave to start",
    )
    creds = robot_credentials(server.endpoint, robot)
    key = (creds["accessKeyId"], creds["secretAccessKey"])
    deployment = signed_post(
        server.endpoint, "/_agent/v1/poll", {"robot": robot, "current": None}, key
    ).json()["deployment"]
    bundle = store.local_path("bundles", app["key"])
    assert deployment["source"]["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    client = AgentClient(server.endpoint, RobotCredentials(robot, REGION, *key))
    deployer = Deployer(
        WorkDir(tmp_path / "agent"), client, None, lambda *args, **fields: None, lambda job: False
    )
    dest = tmp_path / "bundle"
    deployer._fetch_bundle(deployment, dest)
    assert dest.read_bytes() == bundle.read_bytes()

    before = bundle.stat()
    damaged = bytearray(bundle.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    bundle.write_bytes(damaged)  # in place: same inode and size
    os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.head("bundles", app["key"]).etag == deployment["source"]["etag"]  # the ETag cannot tell
    with pytest.raises(StepFailed) as failed:
        deployer._fetch_bundle({**deployment, "bundleUrl": None}, dest)
    name = {"sha256": "SHA-256", "md5": "MD5"}[faster]
    assert failed.value.code == "EtagMismatch" and f"({name} " in failed.value.reason, failed.value.reason
    client.close()
    rm.cancel_deployment_job(job=job)


def work_events(work: WorkDir) -> list[dict]:
    return [json.loads(line) for line in (work.root / "events.jsonl").read_text().splitlines()]


def test_sendfile_tickets_expire_and_follow_the_file(tmp_path, monkeypatch):
    """A ticket opens only the file it was made for, as it was, and only until it expires."""
    blobs = agent_blobs.AgentBlobs("127.0.0.1")
    try:
        path = tmp_path / "object"
        path.write_bytes(b"first version")
        fresh = blobs.url("127.0.0.1", path, "etag-1")
        assert httpx.get(fresh).content == b"first version"
        monkeypatch.setattr(agent_blobs, "TICKET_SECONDS", -1.0)
        expired = blobs.url("127.0.0.1", path, "etag-1")
        assert httpx.get(expired).status_code == 403
        replacement = tmp_path / "object.new"
        replacement.write_bytes(b"second version")
        replacement.replace(path)  # how the local store replaces an object
        changed = httpx.get(fresh)
        assert (
            changed.status_code == 410 and changed.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
        )
        assert httpx.get(fresh, headers={"Range": "bytes=99-"}).status_code == 410
    finally:
        blobs.close()


def test_bundle_listener_on_a_configured_port(tmp_path):
    """`bundle_port` fixes the sendfile listener's port (for sites that open one port to their robots);
    a value outside 0-65535 is a configuration error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = build_settings(bundle_port=port)
    assert settings.bundle_port == port
    blobs = agent_blobs.AgentBlobs("127.0.0.1", settings.bundle_port)
    try:
        path = tmp_path / "object"
        path.write_bytes(b"bytes")
        url = httpx.URL(blobs.url("127.0.0.1", path, "etag"))
        assert url.port == port and blobs.port == port
        assert httpx.get(url).content == b"bytes"
    finally:
        blobs.close()
    with pytest.raises(ConfigError, match="bundle_port"):
        build_settings(bundle_port=70000)


def test_long_polls_end_quietly_on_shutdown(tmp_path):
    """Stopping the server answers the agents' waiting long polls (no cancelled requests, no tracebacks)."""
    with running_server() as server:
        rm = server.client()
        fleet = rm.create_fleet(name="shutdown")["arn"]
        robot = add_robot(server, rm, tmp_path, fleet, "shutdown-r0", start=False).robot_arn
        creds = robot_credentials(server.endpoint, robot)
        key = (creds["accessKeyId"], creds["secretAccessKey"])
        answers: list = []

        def long_poll() -> None:
            try:
                answers.append(
                    signed_post(server.endpoint, "/_agent/v1/poll", {"robot": robot, "wait": 25}, key)
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        polls = [threading.Thread(target=long_poll) for _ in range(3)]
        for thread in polls:
            thread.start()
        assert (
            signed_post(server.endpoint, "/_agent/v1/poll", {"robot": robot, "wait": 0}, key).status_code
            == 200
        )
        time.sleep(1.5)  # the three long polls are in and waiting (they wait 25 s)
        server.stop()
        for thread in polls:
            thread.join()
        log = server.log_text()
    assert [getattr(a, "status_code", a) for a in answers] == [200] * 3
    assert "Traceback" not in log and "CancelledError" not in log and "Cancel " not in log, log[-3000:]
