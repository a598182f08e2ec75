"""Simulation job batches (spec §3): request buckets, policy, idempotency, quotas, listing, cancel, timeout,
and — with real ROS member jobs — the concurrency limit measured from the jobs' own processes, a server
restart mid-batch, and fair sharing of the host with plain jobs.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from helpers import running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store

ROLE = "arn:aws:iam::000000000000:role/RoboMakerBatchRole"
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
