"""Simulation job API rules that need no ROS: validation, responses, idempotency, listing, quotas, cancel.

The server here has no host capacity (`simulation_units: 0`), so jobs stay Pending where a test needs it.
"""

from __future__ import annotations

import re
import uuid

import pytest
from botocore.exceptions import ClientError

from helpers import running_server
from openrobomaker.objectstore import ObjectStoreConfig, open_store

ROLE = "arn:aws:iam::000000000000:role/RoboMakerJobRole"


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idle-server")
    with running_server(
        {"limits": {"simulation_units": 0, "concurrent_simulation_jobs": 6}}, data_dir=directory
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def apps(idle_server):
    store = open_store(ObjectStoreConfig(kind="local", root=str(idle_server.data_dir / "objects")))
    store.create_bucket("bundles")
    store.put_bytes("bundles", "robot.tar.gz", b"robot bundle")
    store.put_bytes("bundles", "sim.tar.gz", b"sim bundle")
    store.put_bytes("bundles", "maps/room.yaml", b"map")
    rm = idle_server.client()
    suffix = uuid.uuid4().hex[:8]
    robot = rm.create_robot_application(
        name=f"robot-{suffix}",
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        sources=[{"s3Bucket": "bundles", "s3Key": "robot.tar.gz", "architecture": "X86_64"}],
    )
    sim = rm.create_simulation_application(
        name=f"sim-{suffix}",
        robotSoftwareSuite={"name": "ROS", "version": "Melodic"},
        simulationSoftwareSuite={"name": "Gazebo", "version": "9"},
        renderingEngine={"name": "OGRE", "version": "1.x"},
        sources=[{"s3Bucket": "bundles", "s3Key": "sim.tar.gz", "architecture": "X86_64"}],
    )
    return {"robot": robot, "sim": sim, "store": store}


def job_request(apps, **overrides):
    request = {
        "maxJobDurationInSeconds": 3600,
        "iamRole": ROLE,
        "outputLocation": {"s3Bucket": "outputs", "s3Prefix": "runs"},
        "loggingConfig": {"recordAllRosTopics": True},
        "robotApplications": [
            {
                "application": apps["robot"]["arn"],
                "launchConfig": {
                    "packageName": "robot_controller",
                    "launchFile": "controller.launch",
                    "environmentVariables": {"GREETING": "hi"},
                    "portForwardingConfig": {
                        "portMappings": [
                            {"jobPort": 9090, "applicationPort": 9090, "enableOnPublicIp": False}
                        ]
                    },
                    "streamUI": True,
                },
            }
        ],
        "simulationApplications": [
            {
                "application": apps["sim"]["arn"],
                "applicationVersion": "$LATEST",
                "launchConfig": {"packageName": "sim_world", "launchFile": "world.launch", "streamUI": False},
            }
        ],
        "dataSources": [{"name": "maps", "s3Bucket": "bundles", "s3Keys": ["maps/room.yaml"]}],
        "tags": {"team": "nav"},
    }
    request.update(overrides)
    return request


def test_create_echoes_the_seed_request_shape(idle_server, apps):
    rm = idle_server.client()
    job = rm.create_simulation_job(**job_request(apps))
    assert job["arn"].startswith("arn:aws:robomaker:us-east-1:000000000000:simulation-job/sim-")
    assert re.fullmatch(r"sim-[0-9a-z]{12}", job["arn"].rsplit("/", 1)[1])
    assert job["status"] == "Pending"
    assert job["failureBehavior"] == "Fail"
    assert job["simulationTimeMillis"] == 0
    assert job["clientRequestToken"]  # botocore fills the idempotency token
    robot = job["robotApplications"][0]
    assert robot["applicationVersion"] == "$LATEST"
    assert robot["launchConfig"]["streamUI"] is True
    assert robot["launchConfig"]["environmentVariables"] == {"GREETING": "hi"}
    assert robot["launchConfig"]["portForwardingConfig"]["portMappings"][0]["jobPort"] == 9090
    assert job["simulationApplications"][0]["launchConfig"]["streamUI"] is False
    source = job["dataSources"][0]
    assert source["s3Keys"] == [
        {"s3Key": "maps/room.yaml", "etag": apps["store"].head("bundles", "maps/room.yaml").etag}
    ]
    assert job["tags"] == {"team": "nav"}
    assert job["compute"]["simulationUnitLimit"] == 15
    described = rm.describe_simulation_job(job=job["arn"])
    for key in (
        "robotApplications",
        "simulationApplications",
        "dataSources",
        "outputLocation",
        "loggingConfig",
        "iamRole",
        "maxJobDurationInSeconds",
        "tags",
        "clientRequestToken",
        "failureBehavior",
    ):
        assert described[key] == job[key], key
    rm.cancel_simulation_job(job=job["arn"])


def test_validation_names_the_field(idle_server, apps):
    rm = idle_server.client()
    with pytest.raises(
        rm.exceptions.InvalidParameterException, match="robotApplications, simulationApplications"
    ):
        rm.create_simulation_job(maxJobDurationInSeconds=60, iamRole=ROLE)
    bad_env = job_request(apps)
    bad_env["robotApplications"][0]["launchConfig"]["environmentVariables"] = {"AWS_SECRET": "x"}
    with pytest.raises(rm.exceptions.InvalidParameterException, match="environmentVariables.AWS_SECRET"):
        rm.create_simulation_job(**bad_env)
    with pytest.raises(rm.exceptions.InvalidParameterException, match="maxJobDurationInSeconds"):
        rm.create_simulation_job(**job_request(apps, maxJobDurationInSeconds=15 * 24 * 3600))
    no_launch = job_request(apps)
    del no_launch["robotApplications"][0]["launchConfig"]["launchFile"]
    with pytest.raises(rm.exceptions.InvalidParameterException, match="launchFile"):
        rm.create_simulation_job(**no_launch)
    unknown = job_request(apps)
    unknown["robotApplications"][0]["application"] = apps["robot"]["arn"].rsplit("/", 1)[0] + "/1"
    with pytest.raises(rm.exceptions.ResourceNotFoundException):
        rm.create_simulation_job(**unknown)


def test_client_request_token_is_idempotent(idle_server, apps):
    rm = idle_server.client()
    token = uuid.uuid4().hex
    first = rm.create_simulation_job(clientRequestToken=token, **job_request(apps))
    again = rm.create_simulation_job(clientRequestToken=token, **job_request(apps))
    assert again["arn"] == first["arn"]
    with pytest.raises(rm.exceptions.IdempotentParameterMismatchException):
        rm.create_simulation_job(clientRequestToken=token, **job_request(apps, maxJobDurationInSeconds=60))
    rm.cancel_simulation_job(job=first["arn"])


def test_cancel_pending_and_restart_rules(idle_server, apps):
    rm = idle_server.client()
    job = rm.create_simulation_job(**job_request(apps))
    with pytest.raises(rm.exceptions.InvalidParameterException, match="only a Running job"):
        rm.restart_simulation_job(job=job["arn"])
    rm.cancel_simulation_job(job=job["arn"])
    assert rm.describe_simulation_job(job=job["arn"])["status"] == "Canceled"
    rm.cancel_simulation_job(job=job["arn"])  # cancelling an ended job is a no-op
    assert rm.describe_simulation_job(job=job["arn"])["status"] == "Canceled"


def test_list_filters_pagination_and_batch_describe(idle_server, apps):
    rm = idle_server.client()
    arns = [rm.create_simulation_job(**job_request(apps))["arn"] for _ in range(3)]
    summaries = [
        s
        for p in rm.get_paginator("list_simulation_jobs").paginate(PaginationConfig={"PageSize": 2})
        for s in p["simulationJobSummaries"]
    ]
    listed = [s["arn"] for s in summaries]
    assert len(listed) == len(set(listed))
    assert set(arns) <= set(listed)
    mine = next(s for s in summaries if s["arn"] == arns[0])
    assert mine["robotApplicationNames"] == [apps["robot"]["name"]]
    assert mine["simulationApplicationNames"] == [apps["sim"]["name"]]
    assert mine["dataSourceNames"] == ["maps"]
    by_robot = rm.list_simulation_jobs(
        filters=[{"name": "robotApplicationName", "values": [apps["robot"]["name"]]}]
    )
    assert set(arns) <= {s["arn"] for s in by_robot["simulationJobSummaries"]}
    by_status = rm.list_simulation_jobs(filters=[{"name": "status", "values": ["Completed"]}])
    assert not set(arns) & {s["arn"] for s in by_status["simulationJobSummaries"]}
    missing = arns[0][:-12] + "000000000000"
    described = rm.batch_describe_simulation_job(jobs=[arns[0], missing])
    assert [j["arn"] for j in described["jobs"]] == [arns[0]]
    assert described["unprocessedJobs"] == [missing]
    for arn in arns:
        rm.cancel_simulation_job(job=arn)


def test_concurrent_job_quota(idle_server, apps):
    rm = idle_server.client()
    active = [s for s in rm.list_simulation_jobs()["simulationJobSummaries"] if s["status"] == "Pending"]
    created = []
    try:
        for _ in range(6 - len(active)):
            created.append(rm.create_simulation_job(**job_request(apps))["arn"])
        with pytest.raises(ClientError) as caught:
            rm.create_simulation_job(**job_request(apps))
        assert caught.value.response["Error"]["Code"] == "LimitExceededException"
    finally:
        for arn in created:
            rm.cancel_simulation_job(job=arn)


def test_tags_on_jobs(idle_server, apps):
    rm = idle_server.client()
    job = rm.create_simulation_job(**job_request(apps))
    rm.tag_resource(resourceArn=job["arn"], tags={"verdict": "pending"})
    assert rm.list_tags_for_resource(resourceArn=job["arn"])["tags"] == {"team": "nav", "verdict": "pending"}
    other = idle_server.client(region="us-west-2")
    with pytest.raises(other.exceptions.ResourceNotFoundException):
        other.describe_simulation_job(job=job["arn"])
    rm.cancel_simulation_job(job=job["arn"])
