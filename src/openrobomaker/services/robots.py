"""Robots (spec §4.2, §4.3): create, describe, list, delete, and register to / deregister from a fleet.

Statuses: Available -(RegisterRobot)-> Registered -(deployment created)-> PendingNewDeployment -> Deploying
-> InSync | Failed | NoResponse; DeregisterRobot -> Available. The deployment part lives in
`deployment_jobs`; this module owns the robot itself and its fleet membership.
"""

from __future__ import annotations

from typing import Any

from openrobomaker.services import credentials
from openrobomaker.services import deployment_jobs as deployments
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.arns import build_arn, now_ms, owned_arn
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import (
    InvalidParameter,
    LimitExceeded,
    ResourceAlreadyExists,
    ResourceNotFound,
)
from openrobomaker.services.pagination import exact_filters, paginate_filtered
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import fleets as fleet_store
from openrobomaker.store import robots as store

DEFAULT_PAGE = 200
LIST_FILTERS = {"status", "fleetName"}
# DescribeFleet lists at most 1000 robots (model), so a fleet holds at most that many.
MAX_ROBOTS_PER_FLEET = 1000


def robot_principal(robot_arn: str) -> str:
    """The principal carried by a robot agent's minted credentials."""
    return f"robot:{robot_arn}"


def robot_summary(robot: store.RobotRow) -> dict[str, Any]:
    """The `Robot` shape of ListRobots / DescribeFleet: note the model's `greenGrassGroupId` spelling."""
    return {
        "arn": robot.arn,
        "name": robot.name,
        "fleetArn": robot.fleet_arn,
        "status": robot.status,
        "greenGrassGroupId": robot.greengrass_group_id,
        "createdAt": robot.created_at,
        "architecture": robot.architecture,
        "lastDeploymentJob": robot.last_deployment_job,
        "lastDeploymentTime": robot.last_deployment_time,
    }


def owned_robot(session, ctx: RequestContext, arn: str, field: str = "robot", *, for_update: bool = False):
    owned_arn(ctx, arn, "robot", field)
    robot = store.robot_by_arn(session, arn, for_update=for_update)
    if robot is None:
        raise ResourceNotFound(f"{field}: robot {arn} not found")
    return robot


def owned_fleet(session, ctx: RequestContext, arn: str, field: str = "fleet"):
    owned_arn(ctx, arn, "deployment-fleet", field)
    fleet = fleet_store.fleet_by_arn(session, arn)
    if fleet is None:
        raise ResourceNotFound(f"{field}: fleet {arn} not found")
    return fleet


@operation("CreateRobot")
def create_robot(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    tags = tag_rules.checked_tags(params.get("tags") or {})
    created_ms = now_ms()
    with platform.db.transaction() as session:
        if store.robot_named(session, ctx.account_id, ctx.region, params["name"]) is not None:
            raise ResourceAlreadyExists(f"name: a robot named {params['name']!r} already exists")
        taken = store.robot_with_group(session, ctx.account_id, ctx.region, params["greengrassGroupId"])
        if taken is not None:
            # Each robot was one Greengrass core with its own group (spec §4.2).
            raise ResourceAlreadyExists(
                f"greengrassGroupId: group {params['greengrassGroupId']!r} already belongs to {taken.arn}"
            )
        robot = store.RobotRow(
            arn=build_arn(ctx, "robot", params["name"], str(created_ms)),
            name=params["name"],
            account_id=ctx.account_id,
            region=ctx.region,
            architecture=params["architecture"],
            greengrass_group_id=params["greengrassGroupId"],
            status="Available",
            created_at=created_ms / 1000,
        )
        session.add(robot)
        tag_rules.store_tags(session, robot.arn, tags)
    return {
        "arn": robot.arn,
        "name": robot.name,
        "createdAt": robot.created_at,
        "greengrassGroupId": robot.greengrass_group_id,
        "architecture": robot.architecture,
        "tags": tags,
    }


@operation("DescribeRobot")
def describe_robot(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.read() as session:
        robot = owned_robot(session, ctx, params["robot"])
        view = robot_summary(robot)
        view["greengrassGroupId"] = view.pop("greenGrassGroupId")
        view["tags"] = tag_rules.load_tags(session, robot.arn)
    return view


@operation("ListRobots")
def list_robots(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = exact_filters(params, LIST_FILTERS)
    with platform.db.read() as session:
        fleet_arns = None
        if "fleetName" in filters:
            fleet_arns = fleet_store.fleet_arns_named(
                session, ctx.account_id, ctx.region, filters["fleetName"]
            )
        rows = store.list_robots(
            session, ctx.account_id, ctx.region, status=filters.get("status"), fleet_arns=fleet_arns
        )
    window, token = paginate_filtered(params, rows, "robots", filters, DEFAULT_PAGE)
    return {"robots": [robot_summary(robot) for robot in window], "nextToken": token}


@operation("DeleteRobot")
def delete_robot(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    # Works whether or not the robot is registered, even during a deployment (spec §4.2).
    with platform.db.transaction() as session:
        robot = owned_robot(session, ctx, params["robot"], for_update=True)
        deployments.abort_robot(session, robot, "the robot was deleted")
        credentials.revoke(session, robot_principal(robot.arn))
        tag_rules.drop_tags(session, robot.arn)
        session.delete(robot)
    platform.notify("deployment_jobs")
    return {}


@operation("RegisterRobot")
def register_robot(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        fleet = owned_fleet(session, ctx, params["fleet"])
        robot = owned_robot(session, ctx, params["robot"], for_update=True)
        if robot.fleet_arn == fleet.arn:
            return {"fleet": fleet.arn, "robot": robot.arn}
        if robot.fleet_arn is not None:
            raise InvalidParameter(
                f"robot: {robot.arn} is registered to {robot.fleet_arn}; a robot belongs to one fleet only"
            )
        if len(store.robots_in_fleet(session, fleet.arn)) >= MAX_ROBOTS_PER_FLEET:
            raise LimitExceeded(f"fleet: {fleet.arn} already has {MAX_ROBOTS_PER_FLEET} robots")
        robot.fleet_arn = fleet.arn
        if robot.status == "Available":
            robot.status = "Registered"
    return {"fleet": fleet.arn, "robot": robot.arn}


@operation("DeregisterRobot")
def deregister_robot(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        fleet = owned_fleet(session, ctx, params["fleet"])
        robot = owned_robot(session, ctx, params["robot"], for_update=True)
        if robot.fleet_arn != fleet.arn:
            raise InvalidParameter(f"robot: {robot.arn} is not registered to {fleet.arn}")
        deregister(session, robot, "the robot was deregistered from its fleet")
    platform.notify("deployment_jobs")
    return {"fleet": fleet.arn, "robot": robot.arn}


def deregister(session, robot: store.RobotRow, why: str) -> None:
    """Take a robot out of its fleet: deployments it has not started are aborted; it becomes Available."""
    deployments.abort_robot(session, robot, why, only_waiting=True)
    robot.fleet_arn = None
    robot.status = "Available"


@taggable("robot")
def _robot_exists(platform: Any, ctx: RequestContext, arn: str) -> bool:
    with platform.db.read() as session:
        robot = store.robot_by_arn(session, arn)
        return robot is not None and robot.account_id == ctx.account_id and robot.region == ctx.region


def mint_robot_credentials(platform: Any, ctx: RequestContext, robot_arn: str) -> dict[str, str]:
    """Keys for a robot's agent, asked for with the account's own keys (`openrobomaker robot-credentials`).

    Each call mints a new pair; earlier pairs stay valid (an agent already running keeps working) until
    the robot is deleted, which revokes them all.
    """
    deployments.check_account_principal(ctx)
    with platform.db.transaction() as session:
        robot = owned_robot(session, ctx, robot_arn)
        key_id, secret = credentials.mint(session, ctx.account_id, robot_principal(robot.arn), "ORMR")
    return {
        "robotArn": robot.arn,
        "region": ctx.region,
        "accessKeyId": key_id,
        "secretAccessKey": secret,
    }
