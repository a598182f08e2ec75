"""Fleets, robots and deployment job API rules (issue 5), through boto3 against a live server; no agents."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from deploy_helpers import app_config, object_store, robot_application
from helpers import running_server


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_server(config={"limits": {"fleets": 6}}) as server:
        rm = server.client()
        app = robot_application(rm, object_store(server), tmp_path_factory.mktemp("apps"), "api-app")
        yield {"server": server, "rm": rm, "app": app}


def error_code(call, **kwargs) -> str:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return info.value.response["Error"]["Code"]


def new_robot(rm, name, arch="X86_64", **extra):
    return rm.create_robot(name=name, architecture=arch, greengrassGroupId=f"g-{name}", **extra)


def test_robot_shapes_and_statuses(env):
    rm = env["rm"]
    created = new_robot(rm, "shape-robot", tags={"site": "lab"})
    assert created["arn"].split(":")[5].startswith("robot/shape-robot/")
    assert created["greengrassGroupId"] == "g-shape-robot" and created["tags"] == {"site": "lab"}
    described = rm.describe_robot(robot=created["arn"])
    assert described["status"] == "Available" and described["greengrassGroupId"] == "g-shape-robot"
    assert "fleetArn" not in described
    assert error_code(new_robot, rm=rm, name="shape-robot") == "ResourceAlreadyExistsException"
    assert (
        error_code(rm.create_robot, name="other", architecture="ARM64", greengrassGroupId="g-shape-robot")
        == "ResourceAlreadyExistsException"
    )
    fleet = rm.create_fleet(name="shape-fleet", tags={"team": "a"})
    registered = rm.register_robot(fleet=fleet["arn"], robot=created["arn"])
    assert (registered["fleet"], registered["robot"]) == (fleet["arn"], created["arn"])
    rm.register_robot(fleet=fleet["arn"], robot=created["arn"])  # again: no change
    listed = rm.list_robots(filters=[{"name": "fleetName", "values": ["shape-fleet"]}])["robots"]
    assert [r["greenGrassGroupId"] for r in listed] == ["g-shape-robot"]  # the model's Robot spelling
    assert listed[0]["status"] == "Registered" and listed[0]["fleetArn"] == fleet["arn"]
    assert rm.list_robots(filters=[{"name": "status", "values": ["Registered"]}])["robots"]
    other = rm.create_fleet(name="shape-other")["arn"]
    assert error_code(rm.register_robot, fleet=other, robot=created["arn"]) == "InvalidParameterException"
    assert error_code(rm.deregister_robot, fleet=other, robot=created["arn"]) == "InvalidParameterException"
    described_fleet = rm.describe_fleet(fleet=fleet["arn"])
    assert [r["arn"] for r in described_fleet["robots"]] == [created["arn"]]
    assert described_fleet["tags"] == {"team": "a"} and "lastDeploymentJob" not in described_fleet
    rm.deregister_robot(fleet=fleet["arn"], robot=created["arn"])
    assert rm.describe_robot(robot=created["arn"])["status"] == "Available"
    rm.register_robot(fleet=fleet["arn"], robot=created["arn"])
    rm.delete_fleet(fleet=fleet["arn"])  # deregisters its robots
    assert "fleetArn" not in rm.describe_robot(robot=created["arn"])
    assert error_code(rm.describe_fleet, fleet=fleet["arn"]) == "ResourceNotFoundException"
    rm.delete_robot(robot=created["arn"])
    assert error_code(rm.describe_robot, robot=created["arn"]) == "ResourceNotFoundException"
    rm.delete_fleet(fleet=other)


def test_deployment_job_rules(env):
    rm, app = env["rm"], env["app"]
    fleet = rm.create_fleet(name="rules-fleet")["arn"]
    robot = new_robot(rm, "rules-robot")["arn"]
    rm.register_robot(fleet=fleet, robot=robot)
    assert error_code(rm.sync_deployment_job, fleet=fleet) == "InvalidParameterException"  # nothing to sync
    assert (
        error_code(
            rm.create_deployment_job, fleet=fleet, deploymentApplicationConfigs=app_config(app, "$LATEST")
        )
        == "InvalidParameterException"
    )
    assert (
        error_code(rm.create_deployment_job, fleet=fleet, deploymentApplicationConfigs=app_config(app, "7"))
        == "ResourceNotFoundException"
    )
    bad_timeout = {"robotDeploymentTimeoutInSeconds": 30}
    assert (
        error_code(
            rm.create_deployment_job,
            fleet=fleet,
            deploymentApplicationConfigs=app_config(app),
            deploymentConfig=bad_timeout,
        )
        == "InvalidParameterException"
    )
    created = rm.create_deployment_job(
        fleet=fleet,
        deploymentApplicationConfigs=app_config(app),
        tags={"env": "beta"},
        clientRequestToken="t-1",
    )
    assert created["status"] == "Pending" and created["tags"] == {"env": "beta"}
    assert created["arn"].split("/")[-1].startswith("deployment-")
    assert created["deploymentConfig"] == {
        "concurrentDeploymentPercentage": 20,
        "failureThresholdPercentage": 25,
        "robotDeploymentTimeoutInSeconds": 18000,
    }
    again = rm.create_deployment_job(
        fleet=fleet,
        deploymentApplicationConfigs=app_config(app),
        tags={"env": "beta"},
        clientRequestToken="t-1",
    )
    assert again["arn"] == created["arn"]
    assert (
        error_code(
            rm.create_deployment_job,
            fleet=fleet,
            deploymentApplicationConfigs=app_config(app),
            clientRequestToken="t-1",
        )
        == "IdempotentParameterMismatchException"
    )
    assert (
        error_code(rm.create_deployment_job, fleet=fleet, deploymentApplicationConfigs=app_config(app))
        == "ConcurrentDeploymentException"
    )
    assert rm.describe_robot(robot=robot)["lastDeploymentJob"] == created["arn"]
    described = rm.describe_deployment_job(job=created["arn"])
    assert described["robotDeploymentSummary"][0]["arn"] == robot
    listed = rm.list_deployment_jobs(filters=[{"name": "fleetName", "values": ["rules-fleet"]}])[
        "deploymentJobs"
    ]
    assert [j["arn"] for j in listed] == [created["arn"]] and "tags" not in listed[0]
    rm.cancel_deployment_job(job=created["arn"])
    assert rm.describe_deployment_job(job=created["arn"])["status"] == "Canceled"
    canceled = rm.list_deployment_jobs(filters=[{"name": "status", "values": ["Canceled"]}])["deploymentJobs"]
    assert created["arn"] in [j["arn"] for j in canceled]
    assert rm.describe_fleet(fleet=fleet)["lastDeploymentStatus"] == "Canceled"
    assert rm.list_tags_for_resource(resourceArn=created["arn"])["tags"] == {"env": "beta"}
    rm.tag_resource(resourceArn=fleet, tags={"k": "v"})
    assert rm.list_tags_for_resource(resourceArn=fleet)["tags"] == {"k": "v"}
    rm.tag_resource(resourceArn=robot, tags={"k": "v"})
    assert rm.list_tags_for_resource(resourceArn=robot)["tags"] == {"k": "v"}


def test_fleet_quota_and_pagination(env):
    rm = env["rm"]
    existing = len(rm.list_fleets()["fleetDetails"])
    made = [rm.create_fleet(name=f"quota-{i}")["arn"] for i in range(6 - existing)]
    assert error_code(rm.create_fleet, name="one-too-many") == "LimitExceededException"
    pages = list(rm.get_paginator("list_fleets").paginate(PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and sum(len(p["fleetDetails"]) for p in pages) == 6
    assert [
        f["name"] for f in rm.list_fleets(filters=[{"name": "name", "values": ["quota-0"]}])["fleetDetails"]
    ] == ["quota-0"]
    for arn in made:
        rm.delete_fleet(fleet=arn)
