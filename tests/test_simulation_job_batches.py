"""Simulation job batches (spec §3): request buckets, policy, idempotency, quotas, listing, cancel, timeout,
and — with real ROS member jobs — the concurrency limit measured from the jobs' own processes, a server
restart mid-batch, and fair sharing of the host with plain jobs.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from helpers import most_at_once, running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store
from ros_bundles import node_launch, ros_package_bundle

ROLE = "arn:aws:iam::000000000000:role/RoboMakerBatchRole"
GENERAL_SUITES = {
    "robotSoftwareSuite": {"name": "General"},
    "simulationSoftwareSuite": {"name": "SimulationRuntime"},
}
ROS_SUITES = {
    "robotSoftwareSuite": {"name": "ROS", "version": "Melodic"},
    "simulationSoftwareSuite": {"name": "Gazebo", "version": "9"},
}
FOURTEEN_DAYS = 14 * 24 * 3600
TERMINAL = {"Completed", "Failed", "Canceled", "TimedOut"}
JOB_TERMINAL = {"Completed", "Failed", "Canceled", "Terminated"}


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_batch(rm, arn: str, statuses: set[str], timeout: float = 30) -> dict:
    def reached():
        batch = rm.describe_simulation_job_batch(batch=arn)
        return batch if batch["status"] in statuses else None

    return wait_for(reached, timeout, f"batch {arn} to reach {statuses}")


def cancel_and_wait(rm, arn: str, timeout: float = 60) -> dict:
    rm.cancel_simulation_job_batch(batch=arn)
    return wait_batch(rm, arn, TERMINAL, timeout)


# --- without ROS: a server with no host capacity, so member jobs stay Pending -----------------------------


def idle_test(test):
    return pytest.mark.xdist_group("batches-idle")(test)


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    limits = {"simulation_units": 0, "concurrent_simulation_jobs": 6, "active_simulation_job_batches": 3}
    with running_server({"limits": limits}, data_dir=tmp_path_factory.mktemp("batch-idle")) as srv:
        yield srv


@pytest.fixture(scope="module")
def idle_app(idle_server):
    store = open_store(ObjectStoreConfig(kind="local", root=str(idle_server.data_dir / "objects")))
    store.create_bucket("bundles")
    store.put_bytes("bundles", "sim.tar.gz", b"sim bundle")
    return idle_server.client().create_simulation_application(
        name=f"batch-sim-{uuid.uuid4().hex[:8]}",
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        renderingEngine={"name": "OGRE", "version": "1.x"},
        sources=[{"s3Bucket": "bundles", "s3Key": "sim.tar.gz", "architecture": "X86_64"}],
    )


def idle_request(app: dict, **overrides) -> dict:
    request = {
        "maxJobDurationInSeconds": 600,
        "iamRole": ROLE,
        "failureBehavior": "Fail",
        "simulationApplications": [
            {
                "application": app["arn"],
                "launchConfig": {"packageName": "sim_world", "launchFile": "world.launch", "streamUI": True},
            }
        ],
        "compute": {"simulationUnitLimit": 1},
    }
    request.update(overrides)
    return request


def invalid_request() -> dict:
    return {"maxJobDurationInSeconds": 60, "iamRole": ROLE}


@idle_test
def test_each_request_is_validated_on_its_own(idle_server, idle_app):
    rm = idle_server.client()
    good = idle_request(idle_app, tags={"scenario": "a"})
    no_role = idle_request(idle_app)
    del no_role["iamRole"]  # optional in a SimulationJobRequest
    unknown_app = idle_request(idle_app)
    unknown_app["simulationApplications"] = [
        {**good["simulationApplications"][0], "application": idle_app["arn"].rsplit("/", 1)[0] + "/1"}
    ]
    reserved_env = idle_request(idle_app)
    reserved_env["simulationApplications"] = [
        {
            "application": idle_app["arn"],
            "launchConfig": {
                "packageName": "p",
                "launchFile": "l.launch",
                "environmentVariables": {"AWS_X": "1"},
            },
        }
    ]
    requests = [
        good,
        invalid_request(),
        unknown_app,
        reserved_env,
        idle_request(idle_app, tags={"aws:reserved": "x"}),
        idle_request(idle_app, maxJobDurationInSeconds=FOURTEEN_DAYS + 1),
        no_role,
    ]
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 1, "timeoutInSeconds": 600},
        createSimulationJobRequests=requests,
        tags={"suite": "nightly"},
    )
    assert re.fullmatch(
        r"arn:aws:robomaker:us-east-1:000000000000:simulation-job-batch/batch-[0-9a-z]{12}", started["arn"]
    )
    assert started["status"] == "Pending"
    assert started["clientRequestToken"]  # botocore fills the idempotency token
    assert started["batchPolicy"] == {"maxConcurrency": 1, "timeoutInSeconds": 600}
    assert started["tags"] == {"suite": "nightly"}
    assert started["createdRequests"] == []
    assert started["pendingRequests"] == [good, no_role]  # echoed as sent, streamUI included
    failed = started["failedRequests"]
    assert [f["request"] for f in failed] == requests[1:6]
    assert [f["failureCode"] for f in failed] == [
        "InvalidInput",
        "ResourceNotFound",
        "InvalidInput",
        "InvalidInput",
        "InvalidInput",
    ]
    assert "at least one application" in failed[0]["failureReason"]
    assert "environmentVariables.AWS_X" in failed[2]["failureReason"]
    assert "aws:" in failed[3]["failureReason"]
    assert "maxJobDurationInSeconds" in failed[4]["failureReason"]
    assert all(f["failedAt"] == started["createdAt"] for f in failed)

    # maxConcurrency 1: one member job (Pending: this host has no capacity), the other request waits.
    batch = wait_for(
        lambda: (b := rm.describe_simulation_job_batch(batch=started["arn"]))["createdRequests"] and b,
        10,
        "the first member job",
    )
    assert batch["status"] == "InProgress"
    assert batch["pendingRequests"] == [no_role]
    (member,) = batch["createdRequests"]
    assert member["status"] == "Pending"
    assert member["simulationApplicationNames"] == [idle_app["name"]]
    assert member["robotApplicationNames"] == []
    job = rm.describe_simulation_job(job=member["arn"])
    assert job["tags"] == {"scenario": "a"}  # the request's own tags
    assert job["simulationApplications"][0]["launchConfig"]["streamUI"] is True
    assert batch["lastUpdatedAt"] >= batch["createdAt"]

    # Cancel: the active member ends BatchCanceled, the pending request is dropped.
    ended = cancel_and_wait(rm, started["arn"])
    assert ended["status"] == "Canceled"
    assert ended["pendingRequests"] == []
    assert len(ended["failedRequests"]) == 5
    job = rm.describe_simulation_job(job=member["arn"])
    assert (job["status"], job["failureCode"]) == ("Terminated", "BatchCanceled")
    rm.cancel_simulation_job_batch(batch=started["arn"])  # cancelling an ended batch is a no-op
    assert rm.describe_simulation_job_batch(batch=started["arn"])["status"] == "Canceled"


@idle_test
def test_batch_policy_defaults_and_bounds(idle_server):
    rm = idle_server.client()
    for policy, field in (
        ({"maxConcurrency": 0}, "maxConcurrency"),
        ({"maxConcurrency": 1001}, "maxConcurrency"),
        ({"timeoutInSeconds": 0}, "timeoutInSeconds"),
        ({"timeoutInSeconds": FOURTEEN_DAYS + 1}, "timeoutInSeconds"),
    ):
        with pytest.raises(rm.exceptions.InvalidParameterException, match=f"batchPolicy.{field}"):
            rm.start_simulation_job_batch(batchPolicy=policy, createSimulationJobRequests=[invalid_request()])
    # Requests that failed for ordinary reasons still let the batch end Completed (spec §3.3).
    started = rm.start_simulation_job_batch(createSimulationJobRequests=[invalid_request()])
    assert started["batchPolicy"] == {"maxConcurrency": 5, "timeoutInSeconds": FOURTEEN_DAYS}
    ended = wait_batch(rm, started["arn"], TERMINAL, 10)
    assert ended["status"] == "Completed"
    assert "failureCode" not in ended
    assert [f["failureCode"] for f in ended["failedRequests"]] == ["InvalidInput"]


@idle_test
def test_client_request_token_is_idempotent(idle_server):
    rm = idle_server.client()
    token = uuid.uuid4().hex
    first = rm.start_simulation_job_batch(
        clientRequestToken=token, createSimulationJobRequests=[invalid_request()]
    )
    again = rm.start_simulation_job_batch(
        clientRequestToken=token, createSimulationJobRequests=[invalid_request()]
    )
    assert again["arn"] == first["arn"]
    assert again["clientRequestToken"] == token
    with pytest.raises(rm.exceptions.IdempotentParameterMismatchException):
        rm.start_simulation_job_batch(
            clientRequestToken=token,
            createSimulationJobRequests=[invalid_request()],
            batchPolicy={"maxConcurrency": 2},
        )
    wait_batch(rm, first["arn"], TERMINAL, 10)


@idle_test
def test_active_batch_quota(idle_server, idle_app):
    rm = idle_server.client()
    started = []
    try:
        for _ in range(3):  # the server's active_simulation_job_batches
            batch = rm.start_simulation_job_batch(
                batchPolicy={"maxConcurrency": 1}, createSimulationJobRequests=[idle_request(idle_app)]
            )
            started.append(batch["arn"])
        with pytest.raises(ClientError) as caught:
            rm.start_simulation_job_batch(createSimulationJobRequests=[idle_request(idle_app)])
        assert caught.value.response["Error"]["Code"] == "LimitExceededException"
        assert "active_simulation_job_batches" in caught.value.response["Error"]["Message"]
        cancel_and_wait(rm, started.pop())
        started.append(rm.start_simulation_job_batch(createSimulationJobRequests=[invalid_request()])["arn"])
    finally:
        for arn in started:
            cancel_and_wait(rm, arn)


@idle_test
def test_job_quota_keeps_requests_pending_until_the_timeout(idle_server, idle_app):
    """Requests the account's job quota blocks stay pending; at the timeout they fail with LimitExceeded."""
    rm = idle_server.client()
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 8, "timeoutInSeconds": 4},
        createSimulationJobRequests=[idle_request(idle_app) for _ in range(8)],
    )
    batch = wait_for(
        lambda: (
            len((b := rm.describe_simulation_job_batch(batch=started["arn"]))["createdRequests"]) == 6 and b
        ),
        10,
        "six members (the account's concurrent_simulation_jobs)",
    )
    assert len(batch["pendingRequests"]) == 2
    ended = wait_batch(rm, started["arn"], TERMINAL, 15)
    assert ended["status"] == "TimedOut"
    assert ended["pendingRequests"] == []
    # The first blocked request was tried and failed with the quota; the one behind it never got a try.
    assert [f["failureCode"] for f in ended["failedRequests"]] == ["LimitExceeded", "BatchTimedOut"]
    assert "concurrent_simulation_jobs" in ended["failedRequests"][0]["failureReason"]
    members = rm.batch_describe_simulation_job(jobs=[c["arn"] for c in ended["createdRequests"]])["jobs"]
    assert {(j["status"], j["failureCode"]) for j in members} == {("Terminated", "BatchTimedOut")}


@idle_test
def test_timeout_fails_requests_that_never_started(idle_server, idle_app):
    rm = idle_server.client()
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 1, "timeoutInSeconds": 2},
        createSimulationJobRequests=[idle_request(idle_app) for _ in range(3)],
    )
    ended = wait_batch(rm, started["arn"], TERMINAL, 15)
    assert ended["status"] == "TimedOut"
    assert [f["failureCode"] for f in ended["failedRequests"]] == ["BatchTimedOut", "BatchTimedOut"]
    assert all("timed out" in f["failureReason"] for f in ended["failedRequests"])
    (member,) = ended["createdRequests"]
    job = rm.describe_simulation_job(job=member["arn"])
    assert (job["status"], job["failureCode"]) == ("Terminated", "BatchTimedOut")


@idle_test
def test_list_filter_pagination_tags_and_errors(idle_server):
    rm = idle_server.client()
    arns = [
        rm.start_simulation_job_batch(createSimulationJobRequests=[invalid_request()])["arn"]
        for _ in range(3)
    ]
    for arn in arns:
        wait_batch(rm, arn, TERMINAL, 10)
    summaries = [
        s
        for p in rm.get_paginator("list_simulation_job_batches").paginate(PaginationConfig={"PageSize": 2})
        for s in p["simulationJobBatchSummaries"]
    ]
    listed = [s["arn"] for s in summaries]
    assert len(listed) == len(set(listed))
    assert set(arns) <= set(listed)
    mine = next(s for s in summaries if s["arn"] == arns[0])
    assert mine["status"] == "Completed"
    assert (mine["failedRequestCount"], mine["pendingRequestCount"], mine["createdRequestCount"]) == (1, 0, 0)
    assert mine["createdAt"] <= mine["lastUpdatedAt"]
    completed = rm.list_simulation_job_batches(filters=[{"name": "status", "values": ["Completed"]}])
    assert set(arns) <= {s["arn"] for s in completed["simulationJobBatchSummaries"]}
    canceled = rm.list_simulation_job_batches(filters=[{"name": "status", "values": ["Canceled"]}])
    assert {s["status"] for s in canceled["simulationJobBatchSummaries"]} <= {"Canceled"}
    assert not set(arns) & {s["arn"] for s in canceled["simulationJobBatchSummaries"]}
    with pytest.raises(rm.exceptions.InvalidParameterException, match="filters"):
        rm.list_simulation_job_batches(filters=[{"name": "name", "values": ["x"]}])

    rm.tag_resource(resourceArn=arns[0], tags={"owner": "qa"})
    assert rm.list_tags_for_resource(resourceArn=arns[0])["tags"] == {"owner": "qa"}
    rm.untag_resource(resourceArn=arns[0], tagKeys=["owner"])
    assert rm.describe_simulation_job_batch(batch=arns[0])["tags"] == {}

    missing = arns[0][:-12] + "000000000000"
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.describe_simulation_job_batch(batch=missing)
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.cancel_simulation_job_batch(batch=missing)
    other_region = idle_server.client(region="us-west-2")
    with pytest.raises(other_region.exceptions.ResourceNotFoundException):
        other_region.describe_simulation_job_batch(batch=arns[0])
    with pytest.raises(rm.exceptions.InvalidParameterException):
        rm.describe_simulation_job_batch(batch=arns[0].replace("simulation-job-batch", "simulation-job"))


@idle_test
def test_internal_errors_creating_members_are_retried_then_fail_the_batch(tmp_path, monkeypatch):
    """In process, with the controller driven by hand: an internal error (not an API error) while creating
    a member is retried a few times, then fails that request with InternalServiceError, and the batch ends
    Failed while its other requests still become jobs."""
    from openrobomaker.controllers.simulation_job_batches import SimulationJobBatchController
    from openrobomaker.services import simulation_job_batches as service
    from openrobomaker.services import simulation_jobs

    platform, ctx, app = _platform_with_app(tmp_path, "flaky", ROS_SUITES)
    good, flaky = idle_request(app), idle_request(app, maxJobDurationInSeconds=601)
    real_build = simulation_jobs.build_definition
    calls = {"flaky": 0}

    def build_definition(platform_, ctx_, params, **options):
        if params["maxJobDurationInSeconds"] == 601:
            calls["flaky"] += 1
            if calls["flaky"] > 1:  # valid at the start, then the store "breaks" for this request
                raise RuntimeError("disk on fire")
        return real_build(platform_, ctx_, params, **options)

    monkeypatch.setattr(simulation_jobs, "build_definition", build_definition)
    monkeypatch.setattr(service, "RETRY_INTERNAL_ERROR_AFTER_SECONDS", 0.0)
    started = service.start_simulation_job_batch(
        platform, ctx, {"createSimulationJobRequests": [flaky, good], "batchPolicy": {"maxConcurrency": 2}}
    )
    assert len(started["pendingRequests"]) == 2
    controller = SimulationJobBatchController(platform)
    for _ in range(service.MAX_INTERNAL_ERROR_ATTEMPTS + 2):
        controller.reconcile()
    batch = service.describe_simulation_job_batch(platform, ctx, {"batch": started["arn"]})
    assert calls["flaky"] == 1 + service.MAX_INTERNAL_ERROR_ATTEMPTS
    assert [f["failureCode"] for f in batch["failedRequests"]] == ["InternalServiceError"]
    assert batch["failedRequests"][0]["request"] == flaky
    (member,) = batch["createdRequests"]
    assert batch["status"] == "Completing"  # the good request's job is still Pending (no executor here)
    with platform.db.transaction() as session:
        simulation_jobs.request_cancel(simulation_jobs.store.job_by_arn(session, member["arn"]))
    controller.reconcile()
    batch = service.describe_simulation_job_batch(platform, ctx, {"batch": started["arn"]})
    assert batch["status"] == "Failed"
    assert batch["failureCode"] == "InternalServiceError"
    assert "internal error" in batch["failureReason"]
    platform.db.dispose()


class _NoProcesses:
    """An executor whose runners exist only as handles: the test plays the runner and sends its reports."""

    def start(self, job_id: str, run_id: str, spec_path: str, work_dir: str) -> str:
        return f"test-runner-{job_id}"

    def is_alive(self, handle: str) -> bool:
        return True

    def find_orphan(self, spec_path: str) -> None:
        return None


def _platform_with_app(tmp_path: Path, name: str, suites: dict = GENERAL_SUITES):
    """A platform with no server around it and one simulation application: controllers and services called
    directly, in this process."""
    from openrobomaker.config import Limits, Settings
    from openrobomaker.server import build_platform
    from openrobomaker.services import applications
    from openrobomaker.services.context import RequestContext

    platform = build_platform(Settings(data_dir=tmp_path, limits=Limits(simulation_units=10)))
    ctx = RequestContext(account_id="000000000000", region="us-east-1")
    platform.objects.create_bucket("bundles")
    platform.objects.put_bytes("bundles", "sim.tar.gz", b"sim bundle")
    app = applications.create_application(
        platform,
        ctx,
        applications.SIMULATION,
        {
            "name": name,
            **suites,
            "sources": [{"s3Bucket": "bundles", "s3Key": "sim.tar.gz", "architecture": "X86_64"}],
        },
    )
    return platform, ctx, app


def _run_to_completion(platform, spec_path: Path) -> None:
    """Report like a runner would (Preparing, Running, Terminating, Finished/Completed), from its spec."""
    import json

    from openrobomaker.services import simulation_jobs

    spec = json.loads(spec_path.read_text())
    token, run_id = spec["controlPlane"]["token"], spec["runId"]
    for seq, phase in enumerate(("Preparing", "Running", "Terminating", "Finished")):
        report = {"runId": run_id, "seq": seq, "phase": phase, "outcome": "Completed"}
        answer = simulation_jobs.record_runner_report(platform, spec["jobId"], token, report)
        assert answer == {"action": "none"}, (phase, answer)


@idle_test
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_members_revalidated_admitted_and_ended_in_process(tmp_path, request, backend):
    """In process, with both controllers driven by hand and the test playing the runners, on SQLite and
    PostgreSQL: members are created within maxConcurrency, admitted with a minted key (revoked at the end),
    and an application deleted after the batch started fails the requests naming it with ResourceNotFound
    when their turn comes, and a job whose application is deleted before admission fails with
    ResourceNotFound; the other members still run and the batch ends Completed."""
    import json
    import random

    from helpers import find_postgres_bin
    from openrobomaker.config import Limits, Settings
    from openrobomaker.controllers.simulation_job_batches import SimulationJobBatchController
    from openrobomaker.controllers.simulation_jobs import SimulationJobController
    from openrobomaker.server import build_platform
    from openrobomaker.services import applications, simulation_jobs
    from openrobomaker.services import simulation_job_batches as service
    from openrobomaker.services.context import RequestContext
    from openrobomaker.store import credentials as credential_store

    settings = Settings(data_dir=tmp_path, limits=Limits(simulation_units=100, concurrent_simulation_jobs=50))
    if backend == "postgresql":
        if find_postgres_bin() is None:
            pytest.fail("PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb)")
        settings.database_url = request.getfixturevalue("postgres_url")
    platform = build_platform(settings)
    # An account of its own: a shared PostgreSQL keeps other tests' rows.
    ctx = RequestContext(account_id=f"{random.randrange(10**11, 10**12)}", region="us-east-1")
    platform.objects.create_bucket("bundles")
    platform.objects.put_bytes("bundles", "sim.tar.gz", b"sim bundle")

    def app(name: str) -> dict:
        return applications.create_application(
            platform,
            ctx,
            applications.SIMULATION,
            {
                "name": f"{name}-{uuid.uuid4().hex[:8]}",
                "robotSoftwareSuite": {"name": "General"},
                "simulationSoftwareSuite": {"name": "SimulationRuntime"},
                "sources": [{"s3Bucket": "bundles", "s3Key": "sim.tar.gz", "architecture": "X86_64"}],
            },
        )

    def request_for(application: dict) -> dict:
        launch = {"command": ["sleep", "1"]}
        return {
            "maxJobDurationInSeconds": 600,
            "simulationApplications": [{"application": application["arn"], "launchConfig": launch}],
            "compute": {"simulationUnitLimit": 1},
        }

    kept, doomed, early = app("kept"), app("doomed"), app("early")
    requests = [request_for(kept)] * 3 + [request_for(doomed)] * 2
    started = service.start_simulation_job_batch(
        platform, ctx, {"createSimulationJobRequests": requests, "batchPolicy": {"maxConcurrency": 2}}
    )
    assert len(started["pendingRequests"]) == 5
    batches = SimulationJobBatchController(platform)
    job_controller = SimulationJobController(platform, _NoProcesses())

    def describe() -> dict:
        return service.describe_simulation_job_batch(platform, ctx, {"batch": started["arn"]})

    batches.reconcile()
    batch = describe()
    assert (len(batch["createdRequests"]), len(batch["pendingRequests"])) == (2, 3)
    assert batch["status"] == "InProgress"
    # Deleted while its requests still wait for their turn.
    applications.delete_application(platform, ctx, applications.SIMULATION, {"application": doomed["arn"]})

    # A plain job whose application goes away before the job controller admits it.
    orphan = simulation_jobs.create_simulation_job(platform, ctx, {**request_for(early), "iamRole": ROLE})
    applications.delete_application(platform, ctx, applications.SIMULATION, {"application": early["arn"]})

    finished: set[str] = set()
    for _ in range(10):
        job_controller.reconcile()
        for member in describe()["createdRequests"]:
            if member["arn"] in finished:
                continue
            job_id = member["arn"].rsplit("/", 1)[1]
            (spec_path,) = (tmp_path / "jobs" / job_id).glob("*/spec.json")
            key_id = json.loads(spec_path.read_text())["apiEndpoint"]["accessKeyId"]
            with platform.db.read() as session:
                assert credential_store.find_active(session, key_id) is not None
            _run_to_completion(platform, spec_path)
            with platform.db.read() as session:
                assert credential_store.find_active(session, key_id) is None  # revoked with the job's end
            finished.add(member["arn"])
        batches.reconcile()
        if describe()["status"] in TERMINAL:
            break

    batch = describe()
    assert batch["status"] == "Completed"
    assert [m["status"] for m in batch["createdRequests"]] == ["Completed"] * 3
    assert batch["pendingRequests"] == []
    assert [f["failureCode"] for f in batch["failedRequests"]] == ["ResourceNotFound"] * 2
    assert all(f["request"] == request_for(doomed) for f in batch["failedRequests"])
    assert all(doomed["arn"] in f["failureReason"] for f in batch["failedRequests"])

    gone = simulation_jobs.describe_simulation_job(platform, ctx, {"job": orphan["arn"]})
    assert (gone["status"], gone["failureCode"]) == ("Failed", "ResourceNotFound")
    assert early["arn"] in gone["failureReason"]
    platform.db.dispose()


@idle_test
def test_a_members_end_starts_its_successor_without_a_full_pass_unless_another_batch_waits(
    tmp_path, monkeypatch
):
    """A member's final report has the batch controller's next pass start the batch's next member without
    the snapshot of every active batch; not while another batch of the account has requests waiting (the
    full pass shares the account's quota between them, fewest active members first), nor once the batch's
    timeout has come (the full pass times it out)."""
    from openrobomaker.controllers.simulation_job_batches import SimulationJobBatchController
    from openrobomaker.controllers.simulation_jobs import SimulationJobController
    from openrobomaker.services import simulation_job_batches as service
    from openrobomaker.store import simulation_job_batches as batch_store

    platform, ctx, app = _platform_with_app(tmp_path, "successor")
    request = {
        "maxJobDurationInSeconds": 600,
        "simulationApplications": [{"application": app["arn"], "launchConfig": {"command": ["true"]}}],
        "compute": {"simulationUnitLimit": 1},
    }
    batch_controller = SimulationJobBatchController(platform)
    job_controller = SimulationJobController(platform, _NoProcesses())
    snapshots = []
    real_snapshot = batch_store.active_batch_states
    monkeypatch.setattr(batch_store, "active_batch_states", lambda c: snapshots.append(1) or real_snapshot(c))

    def start(count: int) -> str:
        policy = {"maxConcurrency": 1, "timeoutInSeconds": 3600}
        params = {"createSimulationJobRequests": [request] * count, "batchPolicy": policy}
        return service.start_simulation_job_batch(platform, ctx, params)["arn"]

    def created(arn: str) -> list[dict]:
        return service.describe_simulation_job_batch(platform, ctx, {"batch": arn})["createdRequests"]

    def finish_active_member(arn: str) -> None:
        job_controller.reconcile()  # admits it: a run with a spec, as a runner would get
        (member,) = [m for m in created(arn) if m["status"] not in TERMINAL]
        (spec_path,) = (tmp_path / "jobs" / member["arn"].rsplit("/", 1)[1]).glob("*/spec.json")
        _run_to_completion(platform, spec_path)

    first = start(3)
    batch_controller.reconcile()
    assert len(created(first)) == 1
    finish_active_member(first)
    snapshots.clear()
    batch_controller.reconcile()
    assert [m["status"] for m in created(first)] == ["Completed", "Pending"]
    assert snapshots == []  # the successor without a full pass

    second = start(2)  # the account now has two batches with requests pending
    batch_controller.reconcile()
    assert len(created(second)) == 1
    finish_active_member(first)
    snapshots.clear()
    batch_controller.reconcile()
    assert len(created(first)) == 3 and snapshots == [1]  # by the full pass

    with platform.db.transaction() as session:  # the second batch's time is up
        batch_store.get_batch(session, second.rsplit("/", 1)[1]).deadline_at = 0.0
    finish_active_member(second)
    batch_controller.reconcile()
    timed_out = service.describe_simulation_job_batch(platform, ctx, {"batch": second})
    assert len(timed_out["createdRequests"]) == 1
    assert timed_out["status"] in ("TimingOut", "TimedOut")
    assert [f["failureCode"] for f in timed_out["failedRequests"]] == ["BatchTimedOut"]
    platform.db.dispose()


@idle_test
def test_a_job_cancelled_while_its_run_is_prepared_is_not_admitted(tmp_path, monkeypatch):
    """Admission prepares a run (key, directory, spec) before its transaction; a job cancelled meanwhile
    stays Canceled, its prepared directory is removed and its key never becomes valid."""
    import json

    from openrobomaker.controllers.simulation_jobs import SimulationJobController
    from openrobomaker.services import simulation_jobs
    from openrobomaker.store import credentials as credential_store

    platform, ctx, app = _platform_with_app(tmp_path, "prepared")
    params = {
        "maxJobDurationInSeconds": 600,
        "iamRole": ROLE,
        "simulationApplications": [{"application": app["arn"], "launchConfig": {"command": ["true"]}}],
        "compute": {"simulationUnitLimit": 1},
    }
    cancelled, kept = (simulation_jobs.create_simulation_job(platform, ctx, dict(params)) for _ in range(2))
    controller = SimulationJobController(platform, _NoProcesses())
    prepared = []
    real_prepare = controller._prepare_run

    def prepare_then_cancel(job, resolved):
        run = real_prepare(job, resolved)
        prepared.append(run)
        if job.arn == cancelled["arn"]:
            simulation_jobs.cancel_simulation_job(platform, ctx, {"job": cancelled["arn"]})
        return run

    monkeypatch.setattr(controller, "_prepare_run", prepare_then_cancel)
    controller.reconcile()

    def describe(job: dict) -> dict:
        return simulation_jobs.describe_simulation_job(platform, ctx, {"job": job["arn"]})

    assert describe(cancelled)["status"] == "Canceled"
    assert describe(kept)["status"] == "Preparing"
    runs = {run.job_id: run for run in prepared}
    gone, started = runs[cancelled["arn"].rsplit("/", 1)[1]], runs[kept["arn"].rsplit("/", 1)[1]]
    assert not gone.work_dir.exists()
    spec = json.loads((started.work_dir / "spec.json").read_text())
    with platform.db.read() as session:
        assert credential_store.find_active(session, gone.key[0]) is None
        assert credential_store.find_active(session, spec["apiEndpoint"]["accessKeyId"]) is not None
    platform.db.dispose()


@idle_test
def test_a_report_that_changes_nothing_just_after_the_start_is_not_written(tmp_path, monkeypatch):
    """The first report (Preparing, just after the runner started) only says the runner is alive: it is
    answered from a read, without a write transaction; reports that change the job, or come after the job
    was last heard from long enough ago, are written."""
    import json

    from openrobomaker.controllers.simulation_jobs import SimulationJobController
    from openrobomaker.services import simulation_jobs
    from openrobomaker.store import simulation_jobs as job_store

    platform, ctx, app = _platform_with_app(tmp_path, "heartbeat")
    job = simulation_jobs.create_simulation_job(
        platform,
        ctx,
        {
            "maxJobDurationInSeconds": 600,
            "iamRole": ROLE,
            "simulationApplications": [{"application": app["arn"], "launchConfig": {"command": ["true"]}}],
            "compute": {"simulationUnitLimit": 1},
        },
    )
    SimulationJobController(platform, _NoProcesses()).reconcile()
    job_id = job["arn"].rsplit("/", 1)[1]
    (spec_path,) = (tmp_path / "jobs" / job_id).glob("*/spec.json")
    spec = json.loads(spec_path.read_text())
    token, run_id = spec["controlPlane"]["token"], spec["runId"]

    def stored():
        with platform.db.read() as session:
            row = job_store.get_job(session, job_id)
            return row.status, row.last_report_seq, row.last_report_at

    def report(seq: int, phase: str) -> dict:
        body = {"runId": run_id, "seq": seq, "phase": phase, "outcome": "Completed"}
        return simulation_jobs.record_runner_report(platform, job_id, token, body)

    assert report(0, "Preparing") == {"action": "none"}
    assert stored() == ("Preparing", -1, None)  # answered from a read: nothing written
    assert report(1, "Running") == {"action": "none"}
    status, seq, heard = stored()
    assert (status, seq) == ("Running", 1) and heard is not None
    # The same phase again, heard from long ago: written (it keeps the runner's liveness fresh).
    monkeypatch.setattr(simulation_jobs, "HEARD_RECENTLY_SECONDS", -1.0)
    assert report(2, "Running") == {"action": "none"}
    assert stored()[1] == 2
    # A restart the user asked for is acknowledged (a change), so written even when heard just now.
    monkeypatch.setattr(simulation_jobs, "HEARD_RECENTLY_SECONDS", 60.0)
    simulation_jobs.restart_simulation_job(platform, ctx, {"job": job["arn"]})
    assert report(3, "Running") == {"action": "restart"}
    assert stored()[:2] == ("Restarting", 3)
    with pytest.raises(simulation_jobs.RunnerAuthError):
        simulation_jobs.record_runner_report(platform, job_id, "wrong token", {"runId": run_id, "seq": 4})
    assert report(4, "Finished") == {"action": "none"}
    assert stored()[:2] == ("Completed", 4)
    assert report(5, "Running") == {"action": "cancel"}  # an ended job: told to stop, nothing written
    assert stored()[:2] == ("Completed", 4)
    platform.db.dispose()


# --- with ROS: member jobs really run ------------------------------------------------------------------------


def ros_test(test):
    """Needs ROS 1; all such tests share one worker (one ROS server, predictable load on the host)."""
    test = pytest.mark.xdist_group("batches-ros")(test)
    test = pytest.mark.skipif(not Path("/usr/bin/roslaunch").exists(), reason="ROS 1 is not installed")(test)
    return pytest.mark.ros(test)


# A member job's node: appends "<job id> start|end <epoch>" to $STAMP_FILE around $RUN_SECONDS of work, then
# exits 0 (the node is not required, so the launch and with it the job end Completed). Stopped early (batch
# cancel or timeout), it still stamps its end.
STAMPER = """#!/usr/bin/env python3
import os, signal, sys, time

def stamp(what):
    with open(os.environ["STAMP_FILE"], "a") as out:
        out.write("%s %s %.6f\\n" % (os.environ["AWS_ROBOMAKER_SIMULATION_JOB_ID"], what, time.time()))

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
stamp("start")
try:
    time.sleep(float(os.environ.get("RUN_SECONDS", "1")))
finally:
    stamp("end")
"""
ROS_CAPACITY = 3  # simulation units of the ROS server's host; every member uses one


@pytest.fixture(scope="module")
def ros_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("batch-ros")
    with running_server({"limits": {"simulation_units": ROS_CAPACITY}}, data_dir=directory) as srv:
        yield srv


@pytest.fixture(scope="module")
def stamper_app(ros_server, tmp_path_factory):
    store = open_store(ObjectStoreConfig(kind="local", root=str(ros_server.data_dir / "objects")))
    store.create_bucket("bundles")
    bundle = ros_package_bundle(
        tmp_path_factory.mktemp("stamper") / "stamper.tar.gz",
        "stamper",
        {"stamper.py": STAMPER},
        {"run.launch": node_launch("stamper", ("stamper", "stamper.py"), required=False)},
    )
    store.upload(bundle, "bundles", "stamper.tar.gz")
    return ros_server.client().create_simulation_application(
        name=f"stamper-{uuid.uuid4().hex[:8]}",
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        sources=[{"s3Bucket": "bundles", "s3Key": "stamper.tar.gz", "architecture": "X86_64"}],
    )


@pytest.fixture
def batches(ros_server):
    """Batch ARNs a test started; whatever is still running when it ends is cancelled."""
    started: list[str] = []
    yield started
    rm = ros_server.client()
    for arn in started:
        if rm.describe_simulation_job_batch(batch=arn)["status"] not in TERMINAL:
            cancel_and_wait(rm, arn)


def stamper_request(app: dict, stamp_file: Path, seconds: float, duration: int = 300) -> dict:
    return {
        "maxJobDurationInSeconds": duration,
        "iamRole": ROLE,
        "simulationApplications": [
            {
                "application": app["arn"],
                "launchConfig": {
                    "packageName": "stamper",
                    "launchFile": "run.launch",
                    "environmentVariables": {"STAMP_FILE": str(stamp_file), "RUN_SECONDS": str(seconds)},
                },
            }
        ],
        "compute": {"simulationUnitLimit": 1},
    }


def read_stamps(path: Path) -> dict[str, dict[str, float]]:
    """{job id: {"start": t, "end": t}}; a job stamping its start twice would be a duplicated run."""
    runs: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        job_id, what, when = line.split()
        assert what not in runs.setdefault(job_id, {}), f"{job_id} stamped {what} twice"
        runs[job_id][what] = float(when)
    return runs


def processes_with_env(entry: str) -> list[int]:
    """Pids of live processes whose environment holds `entry` (NAME=value): what a job left running."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def job_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def watch_batch(rm, arn: str, timeout: float, every: float = 0.1) -> tuple[dict, list[str]]:
    """Poll until the batch ends; returns its last description and every status seen on the way."""
    seen: list[str] = []

    def ended():
        batch = rm.describe_simulation_job_batch(batch=arn)
        if not seen or seen[-1] != batch["status"]:
            seen.append(batch["status"])
        return batch if batch["status"] in TERMINAL else None

    return wait_for(ended, timeout, f"batch {arn} to end", every), seen


def members_of(rm, batch: dict) -> list[dict]:
    arns = [c["arn"] for c in batch["createdRequests"]]
    return rm.batch_describe_simulation_job(jobs=arns)["jobs"] if arns else []


def stored_job_times(server, arns: list[str]) -> dict[str, tuple[float, float, float]]:
    """(created, runner started, last updated) of each job from the server's store (white box): when the
    batch created it, when the job controller admitted it, and (once ended) when it ended."""
    marks = ",".join("?" * len(arns))
    with contextlib.closing(sqlite3.connect(server.data_dir / "openrobomaker.db")) as db:
        rows = db.execute(
            "SELECT arn, created_at, runner_started_at, last_updated_at FROM simulation_jobs "
            f"WHERE arn IN ({marks})",
            arns,
        ).fetchall()
    return {arn: (created, runner, updated) for arn, created, runner, updated in rows}


@ros_test
def test_concurrency_limit_holds_for_the_real_processes(ros_server, stamper_app, batches, tmp_path):
    rm = ros_server.client()
    stamps = tmp_path / "stamps.txt"
    requests = [stamper_request(stamper_app, stamps, 2) for _ in range(5)]
    requests.insert(2, invalid_request())
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 2, "timeoutInSeconds": 600}, createSimulationJobRequests=requests
    )
    batches.append(started["arn"])
    ended, seen = watch_batch(rm, started["arn"], 150)
    assert ended["status"] == "Completed", ended
    assert seen[-3:] == ["InProgress", "Completing", "Completed"]
    assert [f["failureCode"] for f in ended["failedRequests"]] == ["InvalidInput"]
    assert ended["pendingRequests"] == []
    members = members_of(rm, ended)
    assert len(members) == 5
    assert {m["status"] for m in members} == {"Completed"}

    runs = read_stamps(stamps)
    assert set(runs) == {job_id_of(m["arn"]) for m in members}  # each member ran, exactly once
    # Never more than maxConcurrency real processes at once ...
    assert most_at_once([(run["start"], run["end"]) for run in runs.values()]) <= 2
    # ... nor jobs Running at once as the API shows them ...
    assert (
        most_at_once([(m["lastStartedAt"].timestamp(), m["lastUpdatedAt"].timestamp()) for m in members]) <= 2
    )
    # ... nor active (created, not yet ended) members in the store; and the batch did use its limit.
    stored = stored_job_times(ros_server, [m["arn"] for m in members]).values()
    assert most_at_once([(created, ended) for created, _, ended in stored]) == 2


@ros_test
def test_timeout_ends_running_members_and_fails_the_rest(ros_server, stamper_app, batches, tmp_path):
    rm = ros_server.client()
    stamps = tmp_path / "stamps.txt"
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 2, "timeoutInSeconds": 12},
        createSimulationJobRequests=[stamper_request(stamper_app, stamps, 600) for _ in range(3)],
    )
    batches.append(started["arn"])
    ended, seen = watch_batch(rm, started["arn"], 60)
    assert ended["status"] == "TimedOut"
    assert "TimingOut" in seen
    assert ended["createdAt"].timestamp() + 12 <= ended["lastUpdatedAt"].timestamp()
    assert [f["failureCode"] for f in ended["failedRequests"]] == ["BatchTimedOut"]
    members = members_of(rm, ended)
    assert [(m["status"], m["failureCode"]) for m in members] == [("Terminated", "BatchTimedOut")] * 2
    assert read_stamps(stamps), "no member got as far as running its node within the timeout"
    assert processes_with_env(f"STAMP_FILE={stamps}") == []  # the nodes were really stopped


@ros_test
def test_cancel_stops_running_members_and_drops_pending_requests(ros_server, stamper_app, batches, tmp_path):
    rm = ros_server.client()
    stamps = tmp_path / "stamps.txt"
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 1},
        createSimulationJobRequests=[stamper_request(stamper_app, stamps, 600) for _ in range(3)],
    )
    batches.append(started["arn"])
    wait_for(lambda: read_stamps(stamps), 60, "the first member's node to start")
    rm.cancel_simulation_job_batch(batch=started["arn"])
    ended, seen = watch_batch(rm, started["arn"], 60, every=0.05)
    assert seen[0] == "Canceling"
    assert ended["status"] == "Canceled"
    assert ended["pendingRequests"] == [] and ended["failedRequests"] == []
    (member,) = members_of(rm, ended)
    assert (member["status"], member["failureCode"]) == ("Terminated", "BatchCanceled")
    assert len(read_stamps(stamps)) == 1
    assert processes_with_env(f"STAMP_FILE={stamps}") == []  # its node was really stopped


@ros_test
def test_server_crash_mid_batch_neither_loses_nor_duplicates_members(
    ros_server, stamper_app, batches, tmp_path
):
    rm = ros_server.client()
    stamps = tmp_path / "stamps.txt"
    started = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": 2},
        createSimulationJobRequests=[stamper_request(stamper_app, stamps, 1) for _ in range(4)],
    )
    batches.append(started["arn"])
    wait_for(
        lambda: len(rm.describe_simulation_job_batch(batch=started["arn"])["createdRequests"]) >= 3,
        90,
        "a third member (one slot reused)",
        every=0.05,
    )
    ros_server.kill()  # SIGKILL: whatever the controller was doing is cut off mid-way
    ros_server.start()
    rm = ros_server.client()
    ended, _ = watch_batch(rm, started["arn"], 150)
    assert ended["status"] == "Completed", ended
    members = members_of(rm, ended)
    assert len(members) == 4 and {m["status"] for m in members} == {"Completed"}
    runs = read_stamps(stamps)
    assert set(runs) == {job_id_of(m["arn"]) for m in members}
    assert most_at_once([(run["start"], run["end"]) for run in runs.values()]) <= 2
    listed = rm.list_simulation_jobs()["simulationJobSummaries"]
    assert len({s["arn"] for s in listed} & {m["arn"] for m in members}) == 4


@ros_test
def test_batches_and_plain_jobs_share_the_host_in_creation_order(ros_server, stamper_app, batches, tmp_path):
    """A batch filling the host does not starve a plain job or a later batch: the job controller admits
    jobs in creation order, and a batch creates a member only when one of its own has ended."""
    rm = ros_server.client()
    stamps = tmp_path / "stamps.txt"
    first = rm.start_simulation_job_batch(
        batchPolicy={"maxConcurrency": ROS_CAPACITY},
        createSimulationJobRequests=[stamper_request(stamper_app, stamps, 1) for _ in range(4)],
    )
    batches.append(first["arn"])
    wait_for(
        lambda: len(rm.describe_simulation_job_batch(batch=first["arn"])["createdRequests"]) == ROS_CAPACITY,
        30,
        "the first batch to fill the host",
        every=0.05,
    )
    plain = rm.create_simulation_job(**stamper_request(stamper_app, stamps, 1))["arn"]
    second = rm.start_simulation_job_batch(
        createSimulationJobRequests=[stamper_request(stamper_app, stamps, 1) for _ in range(2)]
    )
    batches.append(second["arn"])
    first_ended, _ = watch_batch(rm, first["arn"], 150)
    second_ended, _ = watch_batch(rm, second["arn"], 60)
    assert first_ended["status"] == second_ended["status"] == "Completed"
    assert wait_for(
        lambda: rm.describe_simulation_job(job=plain)["status"] in JOB_TERMINAL and True, 60, "the plain job"
    )

    first_members = [c["arn"] for c in first_ended["createdRequests"]]
    newcomers = [plain] + [c["arn"] for c in second_ended["createdRequests"]]
    times = stored_job_times(ros_server, first_members + newcomers)
    for arn in newcomers:
        created, admitted, _ = times[arn]
        later_members = [times[m][1] for m in first_members if times[m][0] > created]
        assert later_members, "the first batch had no member left to compete with"
        assert admitted < min(later_members), f"{arn} waited behind members created after it"
    runs = read_stamps(stamps)
    assert len(runs) == 7
    assert most_at_once([(run["start"], run["end"]) for run in runs.values()]) <= ROS_CAPACITY
