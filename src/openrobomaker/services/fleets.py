"""Fleets (spec §4.3): create, describe (with robots and the last deployment), list, delete."""

from __future__ import annotations

from typing import Any

from openrobomaker.services import deployment_jobs as deployments
from openrobomaker.services import robots as robot_rules
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.arns import build_arn, now_ms
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import LimitExceeded
from openrobomaker.services.pagination import exact_filters, paginate_filtered
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import deployment_jobs as job_store
from openrobomaker.store import fleets as store
from openrobomaker.store import robots as robot_store

LIST_FILTERS = {"name"}


def _last_deployment(session, fleet_arn: str) -> dict[str, Any]:
    # The fleet mirrors its newest deployment job; lastDeploymentTime is that job's createdAt (spec §4.3).
    job = job_store.latest_job_for_fleet(session, fleet_arn)
    if job is None:
        return {}
    return {
        "lastDeploymentStatus": job.status,
        "lastDeploymentJob": job.arn,
        "lastDeploymentTime": job.created_at,
    }


def fleet_summary(session, fleet: store.FleetRow) -> dict[str, Any]:
    return {"name": fleet.name, "arn": fleet.arn, "createdAt": fleet.created_at} | _last_deployment(
        session, fleet.arn
    )


@operation("CreateFleet")
def create_fleet(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    tags = tag_rules.checked_tags(params.get("tags") or {})
    created_ms = now_ms()
    quota = platform.settings.limits.fleets
    with platform.db.transaction() as session:
        if store.count_fleets(session, ctx.account_id, ctx.region) >= quota:
            raise LimitExceeded(f"the account already has {quota} fleets (limits.fleets)")
        fleet = store.FleetRow(
            arn=build_arn(ctx, "deployment-fleet", params["name"], str(created_ms)),
            name=params["name"],
            account_id=ctx.account_id,
            region=ctx.region,
            created_at=created_ms / 1000,
        )
        session.add(fleet)
        tag_rules.store_tags(session, fleet.arn, tags)
    return {"arn": fleet.arn, "name": fleet.name, "createdAt": fleet.created_at, "tags": tags}


@operation("DescribeFleet")
def describe_fleet(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.read() as session:
        fleet = robot_rules.owned_fleet(session, ctx, params["fleet"])
        view = fleet_summary(session, fleet)
        robots = robot_store.robots_in_fleet(session, fleet.arn)
        view["robots"] = [robot_rules.robot_summary(robot) for robot in robots]
        view["tags"] = tag_rules.load_tags(session, fleet.arn)
    return view


@operation("ListFleets")
def list_fleets(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = exact_filters(params, LIST_FILTERS)
    with platform.db.read() as session:
        rows = store.list_fleets(session, ctx.account_id, ctx.region, filters.get("name"))
        window, token = paginate_filtered(params, rows, "fleets", filters, robot_rules.DEFAULT_PAGE)
        details = [fleet_summary(session, fleet) for fleet in window]
    return {"fleetDetails": details, "nextToken": token}


@operation("DeleteFleet")
def delete_fleet(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        fleet = robot_rules.owned_fleet(session, ctx, params["fleet"])
        active = job_store.active_job_for_fleet(session, fleet.arn)
        if active is not None:
            deployments.cancel_job(session, active, "the fleet was deleted")
        # Deleting a fleet deregisters its robots (spec §4.3).
        for robot in robot_store.robots_in_fleet(session, fleet.arn):
            robot_rules.deregister(session, robot, "the fleet was deleted")
        tag_rules.drop_tags(session, fleet.arn)
        session.delete(fleet)
    platform.notify("deployment_jobs")
    return {}


@taggable("deployment-fleet")
def _fleet_exists(platform: Any, ctx: RequestContext, arn: str) -> bool:
    with platform.db.read() as session:
        fleet = store.fleet_by_arn(session, arn)
        return fleet is not None and fleet.account_id == ctx.account_id and fleet.region == ctx.region
