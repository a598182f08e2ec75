"""Deployment jobs (spec §4.4–4.7): what users ask through the API, and what robot agents report.

A job fixes, when it is created, the robots it deploys to and the wave each robot is in; the rollout
controller (`controllers.deployment_jobs`) starts the waves and watches deadlines; each robot's agent
fetches its deployment over the agent channel and reports every step. Statuses:

    job:   Pending -> Preparing -> InProgress -> Succeeded | Failed ; any active -> Canceled
    robot: PendingNewDeployment -> Deploying -> InSync | Failed | NoResponse

Robot deployments that never start (cancel, threshold breached, robot deregistered) end as `Failed` with
`RobotDeploymentAborted`, and the robot gets back the status it had before the job.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from openrobomaker.objectstore import NoSuchBucket, NoSuchKey, ObjectStoreError
from openrobomaker.services import applications
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.applications import ROBOT
from openrobomaker.services.arns import build_arn, owned_arn, random_id
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import (
    ApiError,
    ConcurrentDeployment,
    IdempotentParameterMismatch,
    InvalidParameter,
    LimitExceeded,
    ResourceNotFound,
)
from openrobomaker.services.pagination import exact_filters, paginate_filtered
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import deployment_jobs as store
from openrobomaker.store import fleets as fleet_store
from openrobomaker.store import robots as robot_store
from openrobomaker.store.deployment_jobs import DEPLOYING, TERMINAL_STATUSES, WAITING

# robotDeploymentTimeoutInSeconds: 1 minute to 7 days, default 5 hours (spec §4.4).
DEFAULT_ROBOT_TIMEOUT = 5 * 3600
MIN_ROBOT_TIMEOUT = 60
MAX_ROBOT_TIMEOUT = 7 * 24 * 3600
# The model gives no defaults; these are the values of the service's own CLI example (spec §9.5).
DEFAULT_CONCURRENT_PERCENTAGE = 20
DEFAULT_FAILURE_THRESHOLD = 25
LIST_FILTERS = {"status", "fleetName"}
DEPLOYABLE_SUITES = {"ROS", "ROS2"}
ABORTED = "RobotDeploymentAborted"
ERROR_CODES = {
    "ResourceNotFound", "EnvironmentSetupError", "EtagMismatch", "FailureThresholdBreached",
    "RobotDeploymentAborted", "RobotDeploymentNoResponse", "RobotAgentConnectionTimeout",
    "GreengrassDeploymentFailed", "InvalidGreengrassGroup", "MissingRobotArchitecture",
    "MissingRobotApplicationArchitecture", "MissingRobotDeploymentResource",
    "GreengrassGroupVersionDoesNotExist", "LambdaDeleted", "ExtractingBundleFailure", "PreLaunchFileFailure",
    "PostLaunchFileFailure", "BadPermissionError", "DownloadConditionFailed", "BadLambdaAssociated",
    "InternalServerError", "RobotApplicationDoesNotExist", "DeploymentFleetDoesNotExist",
    "FleetDeploymentTimeout",
}  # fmt: skip
STEPS = (
    "Validating", "DownloadingExtracting", "ExecutingDownloadCondition", "ExecutingPreLaunch", "Launching",
    "ExecutingPostLaunch", "Finished",
)  # fmt: skip
_TAG_ENV_KEY = re.compile(r"^[A-Za-z0-9_]+$")
# agent_seen_at is refreshed at most this often (one write less per report and poll)
AGENT_SEEN_RESOLUTION = 5.0


class AgentDenied(Exception):
    """An agent request from credentials that are not this robot's."""


def wave_size(robot_count: int, percentage: int) -> int:
    """Robots deployed at once. Rounded down, so a wave never exceeds the share asked for, but at least
    one robot: 200 robots at 10% -> 20 (spec §4.4); 7 at 25% -> 1; 4 at 30% -> 1; 10 at 25% -> 2."""
    return max(1, robot_count * percentage // 100)


# --- request rules ---------------------------------------------------------------------------------------


def _fingerprint(operation_name: str, params: dict[str, Any]) -> str:
    material = {k: v for k, v in params.items() if k != "clientRequestToken"} | {"_op": operation_name}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _deployment_config(platform: Any, config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    config.setdefault("concurrentDeploymentPercentage", DEFAULT_CONCURRENT_PERCENTAGE)
    config.setdefault("failureThresholdPercentage", DEFAULT_FAILURE_THRESHOLD)
    config.setdefault("robotDeploymentTimeoutInSeconds", DEFAULT_ROBOT_TIMEOUT)
    for member in ("concurrentDeploymentPercentage", "failureThresholdPercentage"):
        if not 1 <= config[member] <= 100:
            raise InvalidParameter(f"deploymentConfig.{member}: must be between 1 and 100")
    if not MIN_ROBOT_TIMEOUT <= config["robotDeploymentTimeoutInSeconds"] <= MAX_ROBOT_TIMEOUT:
        raise InvalidParameter(
            "deploymentConfig.robotDeploymentTimeoutInSeconds: must be between "
            f"{MIN_ROBOT_TIMEOUT} (1 minute) and {MAX_ROBOT_TIMEOUT} (7 days)"
        )
    condition = config.get("downloadConditionFile")
    if condition is not None:
        try:
            platform.objects.head(condition["bucket"], condition["key"])
        except (NoSuchBucket, NoSuchKey) as exc:
            raise InvalidParameter(
                f"deploymentConfig.downloadConditionFile: s3://{condition['bucket']}/{condition['key']} "
                "does not exist"
            ) from exc
        except ObjectStoreError as exc:
            raise InvalidParameter(f"deploymentConfig.downloadConditionFile: cannot read it: {exc}") from exc
    return config


def _resolve_application(platform: Any, ctx: RequestContext, configs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(configs) != 1:
        raise InvalidParameter("deploymentApplicationConfigs: give exactly one application")
    config = configs[0]
    field = "deploymentApplicationConfigs.1.member"
    version = config["applicationVersion"]
    if not version.isdigit():
        # Only numbered versions can be deployed; $LATEST moves under a running fleet (spec §4.4).
        raise InvalidParameter(f"{field}.applicationVersion: deploy a numbered version, not {version!r}")
    resolved = applications.resolve_for_use(platform, ctx, ROBOT, config["application"], version, field)
    spec = resolved["spec"]
    suite = spec["robotSoftwareSuite"]["name"]
    if suite not in DEPLOYABLE_SUITES or not spec.get("sources"):
        raise InvalidParameter(
            f"{field}.application: only ROS / ROS2 applications with S3 bundle sources can be deployed "
            f"({suite} application given)"
        )
    return {
        "name": resolved["name"],
        "arn": resolved["arn"],
        "version": version,
        "softwareSuite": spec["robotSoftwareSuite"],
        "sources": spec["sources"],
    }


# --- views -----------------------------------------------------------------------------------------------


def _public(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if not k.startswith("_")}


def job_summary(job: Any) -> dict[str, Any]:
    """The `DeploymentJob` shape of ListDeploymentJobs (no robot summaries, no tags), of a job row or a
    `store.job_summaries` row."""
    return {
        "arn": job.arn,
        "fleet": job.fleet_arn,
        "status": job.status,
        **_public(job.definition),
        "failureReason": job.failure_reason,
        "failureCode": job.failure_code,
        "createdAt": job.created_at,
    }


def robot_deployment_view(row: store.RobotDeploymentRow) -> dict[str, Any]:
    return {
        "arn": row.robot_arn,
        "deploymentStartTime": row.deployment_start_time,
        "deploymentFinishTime": row.deployment_finish_time,
        "status": row.status,
        "progressDetail": dict(row.progress or {}),
        "failureReason": row.failure_reason,
        "failureCode": row.failure_code,
    }


def job_view(session, job: store.DeploymentJobRow) -> dict[str, Any]:
    view = job_summary(job)
    view["robotDeploymentSummary"] = [
        robot_deployment_view(row) for row in store.robot_deployments(session, job.job_id)
    ]
    view["tags"] = tag_rules.load_tags(session, job.arn)
    return view


def _create_view(session, job: store.DeploymentJobRow) -> dict[str, Any]:
    return job_summary(job) | {"tags": tag_rules.load_tags(session, job.arn)}


# --- create / sync ---------------------------------------------------------------------------------------


def _owned_fleet(session, ctx: RequestContext, arn: str):
    owned_arn(ctx, arn, "deployment-fleet", "fleet")
    fleet = fleet_store.fleet_by_arn(session, arn)
    if fleet is None:
        raise ResourceNotFound(f"fleet: fleet {arn} not found")
    return fleet


def _owned_job(session, ctx: RequestContext, arn: str, field: str = "job") -> store.DeploymentJobRow:
    owned_arn(ctx, arn, "deployment-job", field)
    job = store.job_by_arn(session, arn)
    if job is None:
        raise ResourceNotFound(f"{field}: deployment job {arn} not found")
    return job


def _replay(session, ctx: RequestContext, token: str, fingerprint: str) -> store.DeploymentJobRow | None:
    previous = store.job_by_token(session, ctx.account_id, ctx.region, token)
    if previous is not None and previous.request_fingerprint != fingerprint:
        raise IdempotentParameterMismatch(
            f"clientRequestToken: {token!r} was already used for a different request ({previous.arn})"
        )
    return previous


def _check_admission(platform: Any, session, ctx: RequestContext, fleet_arn: str) -> None:
    active = store.active_job_for_fleet(session, fleet_arn)
    if active is not None:
        raise ConcurrentDeployment(
            f"fleet: {fleet_arn} already has an active deployment ({active.arn}, {active.status})"
        )
    quota = platform.settings.limits.concurrent_deployment_jobs
    if store.count_active(session, ctx.account_id, ctx.region) >= quota:
        raise LimitExceeded(f"the account already has {quota} active deployment jobs")


def _insert_job(
    session,
    ctx: RequestContext,
    params: dict[str, Any],
    fingerprint: str,
    definition: dict[str, Any],
    robots: list[robot_store.RobotRow],
    *,
    is_sync: bool,
) -> store.DeploymentJobRow:
    job_id = random_id("deployment-")
    now = time.time()
    size = wave_size(len(robots), definition["deploymentConfig"]["concurrentDeploymentPercentage"])
    job = store.DeploymentJobRow(
        job_id=job_id,
        arn=build_arn(ctx, "deployment-job", job_id),
        account_id=ctx.account_id,
        region=ctx.region,
        fleet_arn=params["fleet"],
        status="Pending",
        created_at=now,
        updated_at=now,
        client_request_token=params["clientRequestToken"],
        request_fingerprint=fingerprint,
        definition=definition,
        is_sync=is_sync,
        wave_size=size,
    )
    session.add(job)
    for index, robot in enumerate(robots):
        session.add(
            store.RobotDeploymentRow(
                job_id=job_id,
                robot_arn=robot.arn,
                wave=index // size,
                status=WAITING,
                previous_robot_status=robot.status,
                progress={},
                last_report_seq=-1,
            )
        )
        robot.status = WAITING
        robot.last_deployment_job = job.arn
        robot.last_deployment_time = now
    return job


@operation("CreateDeploymentJob")
def create_deployment_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    token, fingerprint = params["clientRequestToken"], _fingerprint("create", params)
    with platform.db.read() as session:
        replayed = _replay(session, ctx, token, fingerprint)
        if replayed is not None:
            return _create_view(session, replayed)
        _owned_fleet(session, ctx, params["fleet"])
    configs = params["deploymentApplicationConfigs"]
    definition = {
        "deploymentApplicationConfigs": configs,
        "deploymentConfig": _deployment_config(platform, params.get("deploymentConfig")),
        "_app": _resolve_application(platform, ctx, configs),
    }
    tags = tag_rules.checked_tags(params.get("tags") or {})
    with platform.db.transaction() as session:
        replayed = _replay(session, ctx, token, fingerprint)
        if replayed is not None:
            return _create_view(session, replayed)
        fleet = _owned_fleet(session, ctx, params["fleet"])
        _check_admission(platform, session, ctx, fleet.arn)
        robots = robot_store.robots_in_fleet(session, fleet.arn)
        job = _insert_job(session, ctx, params, fingerprint, definition, robots, is_sync=False)
        tag_rules.store_tags(session, job.arn, tags)
        view = _create_view(session, job)
    platform.notify("deployment_jobs")
    return view


@operation("SyncDeploymentJob")
def sync_deployment_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """A new job with the fleet's latest deployment, for the robots not in sync with it (spec §4.7)."""
    token, fingerprint = params["clientRequestToken"], _fingerprint("sync", params)
    with platform.db.transaction() as session:
        replayed = _replay(session, ctx, token, fingerprint)
        if replayed is not None:
            return job_summary(replayed)
        fleet = _owned_fleet(session, ctx, params["fleet"])
        _check_admission(platform, session, ctx, fleet.arn)
        latest = store.latest_job_for_fleet(session, fleet.arn)
        if latest is None:
            raise InvalidParameter(f"fleet: {fleet.arn} has had no deployment to synchronize with")
        robots = [r for r in robot_store.robots_in_fleet(session, fleet.arn) if r.status != "InSync"]
        job = _insert_job(session, ctx, params, fingerprint, dict(latest.definition), robots, is_sync=True)
        view = job_summary(job)
    platform.notify("deployment_jobs")
    return view


@operation("DescribeDeploymentJob")
def describe_deployment_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.read() as session:
        return job_view(session, _owned_job(session, ctx, params["job"]))


@operation("ListDeploymentJobs")
def list_deployment_jobs(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = exact_filters(params, LIST_FILTERS)
    with platform.db.reader() as reader:  # prepared reads of flat rows: jobs are watched by polling this
        fleet_arns = None
        if "fleetName" in filters:
            fleet_arns = fleet_store.arns_named(reader, ctx.account_id, ctx.region, filters["fleetName"])
        rows = store.job_summaries(
            reader, ctx.account_id, ctx.region, status=filters.get("status"), fleet_arns=fleet_arns
        )
    window, token = paginate_filtered(params, rows, "deployment-jobs", filters, 200)  # model: 1–200
    return {"deploymentJobs": [job_summary(job) for job in window], "nextToken": token}


@operation("CancelDeploymentJob")
def cancel_deployment_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        job = _owned_job(session, ctx, params["job"])
        cancel_job(session, job, "canceled by CancelDeploymentJob")
    platform.notify("deployment_jobs")
    return {}


@taggable("deployment-job")
def _job_exists(platform: Any, ctx: RequestContext, arn: str) -> bool:
    with platform.db.read() as session:
        job = store.job_by_arn(session, arn)
        return job is not None and job.account_id == ctx.account_id and job.region == ctx.region


# --- state changes shared with the robots / fleets services and the rollout controller -------------------


def _robot_back_to_previous(session, row: store.RobotDeploymentRow) -> None:
    robot = robot_store.robot_by_arn(session, row.robot_arn)
    if robot is not None and robot.status == WAITING:
        robot.status = row.previous_robot_status


def abort_waiting(session, job: store.DeploymentJobRow, why: str, now: float | None = None) -> None:
    """Robots of `job` that have not started never will (waves not yet started are stopped)."""
    now = now or time.time()
    for row in store.robot_deployments(session, job.job_id):
        if row.status == WAITING:
            end_robot_deployment(row, "Failed", ABORTED, why, now)
            _robot_back_to_previous(session, row)


def finish_job(session, job: store.DeploymentJobRow, status: str, code: str | None, why: str | None) -> None:
    now = time.time()
    if status != "Succeeded":
        abort_waiting(session, job, f"not started: the deployment job ended {status}", now)
    job.status = status
    job.failure_code = code
    job.failure_reason = why
    job.updated_at = now


def cancel_job(session, job: store.DeploymentJobRow, why: str) -> None:
    """Stop the waves not started yet; robots already deploying finish what they do."""
    if job.status not in TERMINAL_STATUSES:
        finish_job(session, job, "Canceled", None, why)


def end_robot_deployment(
    row: store.RobotDeploymentRow, status: str, code: str | None, why: str | None, now: float
) -> None:
    row.status = status
    row.failure_code = code
    row.failure_reason = why[:1024] if why else None
    row.deployment_finish_time = now


def abort_robot(session, robot: robot_store.RobotRow, why: str, *, only_waiting: bool = False) -> None:
    """The robot leaves its deployments (deleted, deregistered): they end as RobotDeploymentAborted."""
    now = time.time()
    for row in store.unfinished_for_robot(session, robot.arn):
        if row.status == WAITING or not only_waiting:
            end_robot_deployment(row, "Failed", ABORTED, why, now)


# --- the agent side: what a robot fetches and reports ----------------------------------------------------


def robot_arn_of(ctx: RequestContext) -> str:
    if not ctx.principal or not ctx.principal.startswith("robot:"):
        raise AgentDenied("these credentials are not a robot's (use `openrobomaker robot-credentials`)")
    return ctx.principal[len("robot:") :]


def _agent_robot(session, ctx: RequestContext, robot_arn: str, *, for_update: bool = False):
    if robot_arn_of(ctx) != robot_arn:
        # One robot cannot read or report for another.
        raise AgentDenied(f"these credentials belong to {robot_arn_of(ctx)}, not {robot_arn}")
    robot = robot_store.robot_by_arn(session, robot_arn, for_update=for_update)
    if robot is None or robot.account_id != ctx.account_id:
        raise AgentDenied(f"robot {robot_arn} does not exist")
    return robot


def _robot_env_tags(tags: dict[str, str]) -> dict[str, str]:
    # Greengrass exposed each robot tag as an env var; keys must be alphanumeric / underscore (spec §4.2).
    return {f"AWS_ROBOMAKER_ROBOT_TAG_KEY_{k}": v for k, v in tags.items() if _TAG_ENV_KEY.match(k)}


def _deployment_for_agent(reader, robot, row, job) -> dict[str, Any] | None:
    """The deployment a robot's agent should run: `robot` from `robot_store.robot_for_agent`, `row` from
    `store.deploying_on_robot`, `job` from `store.job_for_agent` (flat rows, no ORM objects)."""
    if job is None:
        return None
    definition = job.definition
    app = definition["_app"]
    source = next((s for s in app["sources"] if s["architecture"] == robot.architecture), None)
    config = definition["deploymentApplicationConfigs"][0]
    deployment_config = definition["deploymentConfig"]
    return {
        "job": job.arn,
        "jobId": job.job_id,
        "application": {"arn": app["arn"], "name": app["name"], "version": app["version"]},
        "softwareSuite": app["softwareSuite"],
        "architecture": robot.architecture,
        "source": source and {k: source[k] for k in ("s3Bucket", "s3Key", "etag", "sha256") if k in source},
        "launchConfig": config["launchConfig"],
        "robotTagEnvironment": _robot_env_tags(tag_rules.load_tags(reader, robot.arn)),
        "downloadConditionFile": deployment_config.get("downloadConditionFile"),
        "startedAt": row.deployment_start_time,
        "lastReportSeq": row.last_report_seq,
    }


def agent_poll(platform: Any, ctx: RequestContext, robot_arn: str) -> dict[str, Any]:
    """What the robot should be running now: the deployment it is in the middle of, if any."""
    (answer,) = agent_polls(platform, [(ctx, robot_arn)])
    if isinstance(answer, Exception):
        raise answer
    return answer


def agent_polls(platform: Any, polls: list[tuple[RequestContext, str]]) -> list[dict[str, Any] | Exception]:
    """`agent_poll` for several robots at once (the polls a wave start wakes), in one store read."""
    now = time.time()
    answers: list[dict[str, Any] | Exception | None] = [None] * len(polls)
    admitted = []
    for index, (ctx, robot_arn) in enumerate(polls):
        try:
            if robot_arn_of(ctx) != robot_arn:
                raise AgentDenied(f"these credentials belong to {robot_arn_of(ctx)}, not {robot_arn}")
            admitted.append((index, ctx, robot_arn))
        except AgentDenied as exc:
            answers[index] = exc
    stale = []
    if admitted:
        # A few prepared reads per robot (`Database.reader()`), no ORM session: a wave's polls are read
        # one robot at a time, each read cheaper than a session's set-up.
        with platform.db.reader() as reader:
            for index, ctx, robot_arn in admitted:
                robot = robot_store.robot_for_agent(reader, robot_arn)
                if robot is None or robot.account_id != ctx.account_id:
                    answers[index] = AgentDenied(f"robot {robot_arn} does not exist")
                    continue
                rows = store.deploying_on_robot(reader, robot_arn)
                deployment = None
                if rows:
                    row = max(rows, key=lambda r: r.deployment_start_time or 0)
                    job = store.job_for_agent(reader, row.job_id)
                    deployment = _deployment_for_agent(reader, robot, row, job)
                answers[index] = {"robot": robot.arn, "status": robot.status, "deployment": deployment}
                if robot.agent_seen_at is None or now - robot.agent_seen_at >= AGENT_SEEN_RESOLUTION:
                    stale.append(robot_arn)
    if stale:
        # a short write of its own: the reads above do not hold the (SQLite) writer
        with platform.db.transaction() as session:
            store.touch_agents(session, sorted(set(stale)), now)
    return answers  # type: ignore[return-value]


def agent_wants_poll(platform: Any, robot_arn: str) -> str | None:
    """A cheap check for long polls: the job id the robot is deploying now, or None."""
    with platform.db.reader() as reader:
        rows = store.deploying_on_robot(reader, robot_arn)
        return max(rows, key=lambda r: r.deployment_start_time or 0).job_id if rows else None


def _apply_progress(row: Any, job_arn: str, report: dict[str, Any]) -> None:
    step = report.get("step")
    if step not in STEPS:
        raise InvalidParameter(f"step: {step!r} is not a RobotDeploymentStep")
    progress: dict[str, Any] = {"currentProgress": step, "targetResource": job_arn}
    # percentDone / estimatedTimeRemainingSeconds are only filled during DownloadingExtracting (spec §4.5).
    if step == "DownloadingExtracting":
        if report.get("percentDone") is not None:
            progress["percentDone"] = max(0.0, min(100.0, float(report["percentDone"])))
        if report.get("estimatedTimeRemainingSeconds") is not None:
            progress["estimatedTimeRemainingSeconds"] = max(0, int(report["estimatedTimeRemainingSeconds"]))
    row.progress = progress


def _apply_outcome(session, robot, row, job_arn: str, report: dict[str, Any], now: float) -> bool:
    outcome = report.get("outcome")
    is_latest = robot.last_deployment_job == job_arn
    if outcome == "Succeeded":
        if row.status == DEPLOYING:
            end_robot_deployment(row, "InSync", None, None, now)
        if is_latest:
            # A robot that timed out but finished later is in sync after all (spec §4.2).
            robot.status = "InSync"
        return True
    if outcome == "Failed":
        code = (
            report.get("failureCode") if report.get("failureCode") in ERROR_CODES else "InternalServerError"
        )
        if row.status == DEPLOYING:
            end_robot_deployment(row, "Failed", code, report.get("failureReason") or code, now)
            if is_latest:
                robot.status = "Failed"
        return True
    return False


def record_agent_report(platform: Any, ctx: RequestContext, robot_arn: str, report: dict[str, Any]) -> dict:
    """Apply one step report; replays (seq not newer) are acknowledged and ignored."""
    (answer,) = record_agent_reports(platform, [(ctx, robot_arn, report)])
    if isinstance(answer, Exception):
        raise answer
    return answer


def record_agent_reports(
    platform: Any, reports: list[tuple[RequestContext, str, dict[str, Any]]]
) -> list[dict[str, Any] | Exception]:
    """Apply step reports of any robots in one transaction, each with its own answer or error (a group
    commit: the agent channel hands over the reports that arrived while the previous batch was written,
    so a wave of robots reporting at once costs a few transactions, not one each). Replays (seq not newer)
    are acknowledged and ignored; a robot's reports apply in the order given."""
    now = time.time()
    answers: list[dict[str, Any] | Exception | None] = [None] * len(reports)
    admitted = []
    for index, (ctx, robot_arn, report) in enumerate(reports):
        try:
            if robot_arn_of(ctx) != robot_arn:
                # One robot cannot read or report for another.
                raise AgentDenied(f"these credentials belong to {robot_arn_of(ctx)}, not {robot_arn}")
            admitted.append((index, ctx, robot_arn, report, _report_seq(report)))
        except (AgentDenied, ApiError) as exc:
            answers[index] = exc
    ended = False
    if admitted:
        with platform.db.transaction() as session:
            # Flat rows read and written by key (no ORM: its loading and flush were most of a report's
            # CPU). Robots are read in ARN order: one lock order, no deadlocks (PostgreSQL).
            robots = {
                arn: store.report_robot(session, arn) for arn in sorted({a for _, _, a, _, _ in admitted})
            }
            job_arns: dict[str, str | None] = {}
            rows: dict[tuple[str, str], store.ReportRow | None] = {}
            for index, ctx, robot_arn, report, seq in admitted:
                robot = robots.get(robot_arn)
                if robot is None or robot.account_id != ctx.account_id:
                    answers[index] = AgentDenied(f"robot {robot_arn} does not exist")
                    continue
                job_id = str(report.get("jobId", ""))
                if job_id not in job_arns:
                    job_arns[job_id] = store.report_job_arn(session, job_id)
                job_arn = job_arns[job_id]
                key = (job_id, robot_arn)
                if job_arn is not None and key not in rows:
                    rows[key] = store.report_row(session, job_id, robot_arn)
                row = rows.get(key) if job_arn is not None else None
                if row is None:
                    answers[index] = ResourceNotFound(
                        f"jobId: robot {robot_arn} has no deployment {report.get('jobId')!r}"
                    )
                    continue
                if seq > row.last_report_seq and row.status == DEPLOYING and report.get("step") not in STEPS:
                    answers[index] = InvalidParameter(
                        f"step: {report.get('step')!r} is not a RobotDeploymentStep"
                    )
                    continue
                if robot.agent_seen_at is None or now - robot.agent_seen_at >= AGENT_SEEN_RESOLUTION:
                    robot.agent_seen_at = now
                if seq > row.last_report_seq:
                    row.last_report_seq = seq
                    row.last_report_at = now
                    row.changed = True
                    was = row.status
                    if row.status == DEPLOYING:
                        _apply_progress(row, job_arn, report)
                    ended = _apply_outcome(session, robot, row, job_arn, report, now) or ended
                    # the failure and finish columns are written only by the report that ends the row
                    store.save_report_row(session, row, finished_row=row.status != was)
                answers[index] = {"accepted": True, "continue": row.status == DEPLOYING}
            for robot in robots.values():
                if robot is not None:
                    store.save_report_robot(session, robot)
    if ended:
        platform.notify("deployment_jobs")
    return answers  # type: ignore[return-value]


def _report_seq(report: dict[str, Any]) -> int:
    try:
        return int(report.get("seq", 0))
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"seq: {report.get('seq')!r} is not a number") from exc


def _deploying_row(session, ctx: RequestContext, robot_arn: str, job_id: str):
    robot = _agent_robot(session, ctx, robot_arn)
    row = store.robot_deployment(session, job_id, robot_arn)
    job = store.get_job(session, job_id)
    if row is None or job is None or row.status != DEPLOYING:
        raise ResourceNotFound(f"jobId: robot {robot_arn} is not deploying {job_id!r}")
    return robot, job


def bundle_location(platform: Any, ctx: RequestContext, robot_arn: str, job_id: str) -> tuple[str, str]:
    """Bucket and key of the bundle a robot is deploying (only while it deploys it)."""
    with platform.db.read() as session:
        robot, job = _deploying_row(session, ctx, robot_arn, job_id)
        sources = job.definition["_app"]["sources"]
        source = next((s for s in sources if s["architecture"] == robot.architecture), None)
        if source is None:
            raise ResourceNotFound(f"no {robot.architecture} source in {job.definition['_app']['arn']}")
        return source["s3Bucket"], source["s3Key"]


def condition_file_location(
    platform: Any, ctx: RequestContext, robot_arn: str, job_id: str
) -> tuple[str, str]:
    with platform.db.read() as session:
        _, job = _deploying_row(session, ctx, robot_arn, job_id)
        condition = job.definition["deploymentConfig"].get("downloadConditionFile")
        if condition is None:
            raise ResourceNotFound(f"deployment {job_id} has no downloadConditionFile")
        return condition["bucket"], condition["key"]


def check_account_principal(ctx: RequestContext) -> None:
    """Robot credentials are minted only with the account's own keys, never with a robot's or a job's."""
    if ctx.principal is not None:
        raise AgentDenied("robot credentials must be requested with the account's own keys")


__all__ = ["AgentDenied", "ApiError"]
