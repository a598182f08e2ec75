"""Simulation jobs (spec §2): what a user asks through the API, and how runner reports move a job along.

The API sets the desired state (run, cancel, restart); the controller starts runners; runners report the
observed state. Statuses follow spec §2.3:

    Pending -> Preparing -> Running -> Terminating -> Completed | Failed | Canceled
    Running -(crash, failureBehavior=Continue)-> RunningFailed -> (restarted in place) -> Running
    Running|RunningFailed -(RestartSimulationJob)-> Restarting -> Running
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

from openrobomaker.objectstore import ObjectStoreError
from openrobomaker.services import applications, credentials
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.applications import ROBOT, SIMULATION
from openrobomaker.services.arns import build_arn, owned_arn, random_id
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import (
    IdempotentParameterMismatch,
    InvalidParameter,
    LimitExceeded,
    ResourceNotFound,
)
from openrobomaker.services.pagination import exact_filters, paginate_filtered
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import simulation_jobs as store
from openrobomaker.store.simulation_jobs import TERMINAL_STATUSES

MAX_DURATION_SECONDS = 14 * 24 * 3600
DEFAULT_COMPUTE = {"simulationUnitLimit": 15, "computeType": "CPU", "gpuUnitLimit": 0}
ROS_SUITES = {"ROS", "ROS2"}
DEFAULT_PAGE = 100
LIST_FILTERS = {"status", "simulationApplicationName", "robotApplicationName"}
REPORT_PHASES = {"Preparing", "Running", "Restarting", "RunningFailed", "Terminating"}
OUTCOMES = {"Completed", "Failed", "Canceled", "Terminated"}
# platform.notify(BATCH_MEMBER_ENDED, batch_arn): a batch member's final report (for the batch controller)
BATCH_MEMBER_ENDED = "simulation_batch_member_ended"


class RunnerAuthError(Exception):
    """A runner report with a wrong token or for an unknown job."""


# --- request rules ---------------------------------------------------------------------------------------


def _fingerprint(params: dict[str, Any]) -> str:
    material = {k: v for k, v in params.items() if k != "clientRequestToken"}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _check_launch_config(field: str, suite_name: str, launch: dict[str, Any]) -> None:
    if suite_name in ROS_SUITES and not launch.get("command"):
        for member in ("packageName", "launchFile"):
            if not launch.get(member):
                raise InvalidParameter(
                    f"{field}.launchConfig.{member}: required for a {suite_name} application"
                )
    if suite_name not in ROS_SUITES and not launch.get("command"):
        raise InvalidParameter(f"{field}.launchConfig.command: required for a {suite_name} application")
    for name in launch.get("environmentVariables") or {}:
        if name.startswith("AWS"):
            raise InvalidParameter(
                f"{field}.launchConfig.environmentVariables.{name}: names starting with AWS are reserved"
            )


def _x86_source(spec: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in spec.get("sources", []) if s["architecture"] == "X86_64"), None)


def _resolve_app_config(
    platform: Any, ctx: RequestContext, kind, config: dict[str, Any], field: str, cache: dict | None
) -> tuple[dict, dict]:
    """The config as Describe echoes it, and what the runner needs of the application."""
    version = config.get("applicationVersion") or "$LATEST"
    resolved = applications.resolve_for_use(
        platform, ctx, kind, config["application"], version, f"{field}.application", cache=cache
    )
    spec = resolved["spec"]
    if "sources" in spec and _x86_source(spec) is None:
        raise InvalidParameter(f"{field}.application: simulation jobs need an X86_64 source")
    _check_launch_config(field, spec["robotSoftwareSuite"]["name"], config["launchConfig"])
    echoed = {**config, "applicationVersion": version}
    return echoed, {"name": resolved["name"], "arn": resolved["arn"], "version": version}


def _resolve_data_sources(platform: Any, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = [s["name"] for s in sources]
    if len(set(names)) != len(names):
        raise InvalidParameter("dataSources: data source names must be unique")
    resolved = []
    for source in sources:
        kind = source.get("type") or "File"
        keys = []
        for key in source["s3Keys"]:
            entry = {"s3Key": key}
            if kind != "Prefix":
                # The ETag is captured now; a missing object fails the job in Preparing (InvalidS3Resource).
                with contextlib.suppress(ObjectStoreError):
                    entry["etag"] = platform.objects.head(source["s3Bucket"], key).etag
            keys.append(entry)
        item = {"name": source["name"], "s3Bucket": source["s3Bucket"], "s3Keys": keys, "type": kind}
        if source.get("destination"):
            item["destination"] = source["destination"]
        resolved.append(item)
    return resolved


def build_definition(
    platform: Any, ctx: RequestContext, params: dict[str, Any], *, cache: dict | None = None
) -> dict[str, Any]:
    """Validate a CreateSimulationJob request beyond its shapes and resolve what it names.

    `cache`: see `applications.resolve_for_use` (a batch pass validates many requests naming the same apps)."""
    if not params.get("robotApplications") and not params.get("simulationApplications"):
        raise InvalidParameter(
            "robotApplications, simulationApplications: a job needs at least one application"
        )
    if not 1 <= params["maxJobDurationInSeconds"] <= MAX_DURATION_SECONDS:
        raise InvalidParameter(
            f"maxJobDurationInSeconds: must be between 1 and {MAX_DURATION_SECONDS} (14 days)"
        )
    definition: dict[str, Any] = {
        "maxJobDurationInSeconds": params["maxJobDurationInSeconds"],
        "iamRole": params["iamRole"],
        "failureBehavior": params.get("failureBehavior") or "Fail",
        "compute": {**DEFAULT_COMPUTE, **(params.get("compute") or {})},
        "_apps": [],
    }
    for key in ("outputLocation", "loggingConfig", "vpcConfig"):
        if params.get(key) is not None:
            definition[key] = params[key]
    for list_key, kind in (("robotApplications", ROBOT), ("simulationApplications", SIMULATION)):
        configs = []
        for index, config in enumerate(params.get(list_key) or [], start=1):
            field = f"{list_key}.{index}.member"
            echoed, app = _resolve_app_config(platform, ctx, kind, config, field, cache)
            configs.append(echoed)
            definition["_apps"].append({**app, "kind": kind.name})
        if configs:
            definition[list_key] = configs
    if params.get("dataSources"):
        definition["dataSources"] = _resolve_data_sources(platform, params["dataSources"])
    return definition


# --- views -----------------------------------------------------------------------------------------------


def _app_names(job: store.SimulationJobRow, kind: str) -> list[str]:
    return [app["name"] for app in job.definition["_apps"] if app["kind"] == kind]


def job_view(job: store.SimulationJobRow, tags: dict[str, str]) -> dict[str, Any]:
    view = {k: v for k, v in job.definition.items() if not k.startswith("_")}
    view.update(
        arn=job.arn,
        status=job.status,
        lastStartedAt=job.last_started_at,
        lastUpdatedAt=job.last_updated_at,
        failureCode=job.failure_code,
        failureReason=job.failure_reason,
        clientRequestToken=job.client_request_token,
        simulationTimeMillis=job.simulation_time_millis,
        tags=tags,
    )
    return view


def job_summary(job: store.SimulationJobRow) -> dict[str, Any]:
    return {
        "arn": job.arn,
        "lastUpdatedAt": job.last_updated_at,
        "status": job.status,
        "simulationApplicationNames": _app_names(job, "simulation"),
        "robotApplicationNames": _app_names(job, "robot"),
        "dataSourceNames": [d["name"] for d in job.definition.get("dataSources", [])],
        "computeType": job.definition["compute"]["computeType"],
    }


# --- operations ------------------------------------------------------------------------------------------


def _replay(session, ctx: RequestContext, token: str | None, fingerprint: str) -> dict[str, Any] | None:
    if not token:
        return None
    previous = store.job_by_token(session, ctx.account_id, ctx.region, token)
    if previous is None:
        return None
    if previous.request_fingerprint != fingerprint:
        raise IdempotentParameterMismatch(
            f"clientRequestToken: {token!r} was already used for a different request ({previous.arn})"
        )
    return job_view(previous, tag_rules.load_tags(session, previous.arn))


def check_job_quota(platform: Any, active_jobs: int) -> None:
    """LimitExceeded when the account already has its quota of active jobs (`active_jobs` of them)."""
    quota = platform.settings.limits.concurrent_simulation_jobs
    if active_jobs >= quota:
        raise LimitExceeded(
            f"the account already has {quota} active simulation jobs (concurrent_simulation_jobs)"
        )


def new_job_values(
    ctx: RequestContext,
    params: dict[str, Any],
    definition: dict[str, Any],
    batch_arn: str | None,
    now: float,
) -> dict[str, Any]:
    """The columns of a new Pending job."""
    job_id = random_id("sim-")
    return {
        "job_id": job_id,
        "arn": build_arn(ctx, "simulation-job", job_id),
        "account_id": ctx.account_id,
        "region": ctx.region,
        "status": "Pending",
        "client_request_token": params.get("clientRequestToken"),
        "request_fingerprint": _fingerprint(params),
        "definition": definition,
        "simulation_units": definition["compute"]["simulationUnitLimit"],
        "batch_arn": batch_arn,
        "created_at": now,
        "last_updated_at": now,
        "simulation_time_millis": 0,
        "desired": "run",
        "restart_generation": 0,
        "restart_acknowledged": 0,
        "last_report_seq": -1,
    }


def insert_job(
    session,
    platform: Any,
    ctx: RequestContext,
    params: dict[str, Any],
    definition: dict[str, Any],
    *,
    batch_arn: str | None = None,
) -> store.SimulationJobRow:
    """Add a Pending job (the caller's transaction); enforces the account's concurrent-job quota."""
    check_job_quota(platform, store.count_active(session, ctx.account_id, ctx.region))
    job = store.SimulationJobRow(**new_job_values(ctx, params, definition, batch_arn, time.time()))
    session.add(job)
    tag_rules.store_tags(session, job.arn, tag_rules.checked_tags(params.get("tags") or {}))
    return job


def insert_member_job(
    session, ctx: RequestContext, params: dict[str, Any], definition: dict[str, Any], batch_arn: str
) -> str:
    """Add a batch's Pending member job in one prepared INSERT (the caller checked the quota); its ARN."""
    values = new_job_values(ctx, params, definition, batch_arn, time.time())
    store.insert_job_row(session, values)
    tag_rules.store_tags(session, values["arn"], tag_rules.checked_tags(params.get("tags") or {}))
    return values["arn"]


@operation("CreateSimulationJob")
def create_simulation_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    token, fingerprint = params.get("clientRequestToken"), _fingerprint(params)
    with platform.db.read() as session:
        replayed = _replay(session, ctx, token, fingerprint)
    if replayed is not None:
        return replayed
    definition = build_definition(platform, ctx, params)
    with platform.db.transaction() as session:
        replayed = _replay(session, ctx, token, fingerprint)
        if replayed is not None:
            return replayed
        job = insert_job(session, platform, ctx, params, definition)
        view = job_view(job, tag_rules.load_tags(session, job.arn))
    platform.notify("simulation_jobs")
    return view


def _owned_job(session, ctx: RequestContext, arn: str, field: str = "job") -> store.SimulationJobRow:
    owned_arn(ctx, arn, "simulation-job", field)
    job = store.job_by_arn(session, arn)
    if job is None:
        raise ResourceNotFound(f"{field}: simulation job {arn} not found")
    return job


@operation("DescribeSimulationJob")
def describe_simulation_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.read() as session:
        job = _owned_job(session, ctx, params["job"])
        return job_view(job, tag_rules.load_tags(session, job.arn))


@operation("BatchDescribeSimulationJob")
def batch_describe_simulation_job(
    platform: Any, ctx: RequestContext, params: dict[str, Any]
) -> dict[str, Any]:
    found, unprocessed = [], []
    with platform.db.read() as session:
        rows = {job.arn: job for job in store.jobs_by_arns(session, params["jobs"])}
        for arn in params["jobs"]:
            job = rows.get(arn)
            if job is None or job.account_id != ctx.account_id or job.region != ctx.region:
                unprocessed.append(arn)
            else:
                found.append(job_view(job, tag_rules.load_tags(session, arn)))
    return {"jobs": found, "unprocessedJobs": unprocessed}


@operation("ListSimulationJobs")
def list_simulation_jobs(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = exact_filters(params, LIST_FILTERS)
    with platform.db.read() as session:
        rows = store.list_jobs(
            session, ctx.account_id, ctx.region, status=filters.get("status"), offset=0, limit=10**9
        )
    by_name = [
        job
        for job in rows
        if filters.get("simulationApplicationName") in (None, *_app_names(job, "simulation"))
        and filters.get("robotApplicationName") in (None, *_app_names(job, "robot"))
    ]
    window, token = paginate_filtered(params, by_name, "jobs", filters, DEFAULT_PAGE)
    result: dict[str, Any] = {"simulationJobSummaries": [job_summary(job) for job in window]}
    if token:
        result["nextToken"] = token
    return result


def request_cancel(
    job: store.SimulationJobRow, *, code: str | None = None, reason: str | None = None
) -> None:
    """Ask for a job to stop (the caller's transaction). A job no runner holds yet ends at once."""
    if job.status in TERMINAL_STATUSES:
        return
    now = time.time()
    job.desired = "cancel"
    job.cancel_code = code
    if reason:
        job.failure_reason = reason
    if job.runner_handle is None:
        finish_job(job, "Terminated" if code else "Canceled", code, reason, now)
    elif job.status != "Terminating":
        job.status = "Terminating"
        job.last_updated_at = now


@operation("CancelSimulationJob")
def cancel_simulation_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        job = _owned_job(session, ctx, params["job"])
        request_cancel(job)
    platform.notify("simulation_jobs")
    platform.notify("simulation_batches")  # a batch member without a runner ends at once: a free slot
    return {}


@operation("RestartSimulationJob")
def restart_simulation_job(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        job = _owned_job(session, ctx, params["job"])
        if job.status not in ("Running", "RunningFailed") or job.desired != "run":
            raise InvalidParameter(f"job: only a Running job can be restarted; {job.arn} is {job.status}")
        job.restart_generation += 1
        job.status = "Restarting"
        job.last_updated_at = time.time()
    platform.notify("simulation_jobs")
    return {}


@taggable("simulation-job")
def _job_exists(platform: Any, ctx: RequestContext, arn: str) -> bool:
    with platform.db.read() as session:
        job = store.job_by_arn(session, arn)
        return job is not None and job.account_id == ctx.account_id and job.region == ctx.region


# --- runner reports (observed state) ---------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def finish_job(
    job: store.SimulationJobRow | store.ReportJob,
    status: str,
    code: str | None,
    reason: str | None,
    now: float,
) -> None:
    job.status = status
    job.failure_code = code
    if reason:
        job.failure_reason = reason[:1024]
    job.last_updated_at = now
    job.runner_handle = None


def _apply_report(job: store.SimulationJobRow | store.ReportJob, report: dict[str, Any], now: float) -> None:
    phase = report.get("phase")
    if report.get("simulationTimeMillis") is not None:
        job.simulation_time_millis = int(report["simulationTimeMillis"])
    if report.get("startedAt"):
        job.last_started_at = float(report["startedAt"])
    if phase == "Finished":
        outcome = report.get("outcome") if report.get("outcome") in OUTCOMES else "Failed"
        code = report.get("failureCode")
        if job.cancel_code and outcome == "Canceled":
            # Ended by its batch (timeout/cancel): a forced stop, not the user's own cancel.
            outcome, code = "Terminated", job.cancel_code
        if outcome == "Failed" and not code:
            code = "InternalServiceError"
        reason = report.get("failureReason") or (job.failure_reason if outcome != "Completed" else None)
        if outcome == "Completed":
            job.failure_reason = None
        finish_job(job, outcome, code, reason, now)
        return
    if phase not in REPORT_PHASES:
        return
    if job.desired == "cancel":
        phase = "Terminating"
    elif job.restart_generation > job.restart_acknowledged:
        # The runner has not been told yet; until it has, the job shows the restart the user asked for.
        phase = "Restarting"
    if phase != job.status:
        job.status = phase
        job.last_updated_at = now
    if phase == "RunningFailed" and report.get("failureCode"):
        job.failure_code = report["failureCode"]
        job.failure_reason = (report.get("failureReason") or "")[:1024] or None


def _action_for(job: store.SimulationJobRow | store.ReportJob) -> str:
    if job.desired == "cancel" or job.status in TERMINAL_STATUSES:
        return "cancel"
    if job.restart_generation > job.restart_acknowledged:
        job.restart_acknowledged = job.restart_generation
        return "restart"
    return "none"


# A report that changes nothing but the time the runner was last heard from is not written when the job
# was heard from this recently (its runner's start or an earlier report): the first report, Preparing,
# arrives just after the runner starts. Liveness stays far fresher than SILENT_AFTER_SECONDS (10 s):
# runners report every 3 s, so every later heartbeat is written.
HEARD_RECENTLY_SECONDS = 1.5
_HEARTBEAT_COLUMNS = {"last_report_at", "last_report_seq"}


def _check_runner(job: store.ReportJob | None, job_id: str, token: str) -> store.ReportJob:
    if (
        job is None
        or not job.runner_token_hash
        or not hmac.compare_digest(job.runner_token_hash, token_hash(token))
    ):
        raise RunnerAuthError(job_id)
    return job


def _apply_runner_report(job: store.ReportJob, report: dict[str, Any], now: float) -> tuple[str, bool]:
    """The report's effect on `job` (in memory): the answer's action, and whether the job ended."""
    seq = int(report.get("seq", 0))
    job.last_report_at = now
    if seq > job.last_report_seq:
        job.last_report_seq = seq
        _apply_report(job, report, now)
    finished = job.status in TERMINAL_STATUSES
    return ("none" if finished else _action_for(job)), finished


def _answer_without_writing(job: store.ReportJob, report: dict[str, Any], now: float) -> dict | None:
    """The answer to a report that needs no write (a stale run, an ended job, a heartbeat just after
    the job was last heard from), from a read outside any transaction; None when it must be written."""
    if report.get("runId") != job.run_id or job.status in TERMINAL_STATUSES:
        return {"action": "cancel"}
    heard = max(job.last_report_at or 0.0, job.runner_started_at or 0.0)
    action, finished = _apply_runner_report(job, report, now)
    if finished or store.report_changes(job) - _HEARTBEAT_COLUMNS or now - heard > HEARD_RECENTLY_SECONDS:
        return None
    return {"action": action}


def record_runner_report(platform: Any, job_id: str, token: str, report: dict[str, Any]) -> dict[str, Any]:
    """Apply one runner report; the answer tells the runner what the user wants next."""
    now = time.time()
    with platform.db.reader() as connection:
        peeked = store.peek_report_job(connection, job_id)
    answer = _answer_without_writing(_check_runner(peeked, job_id, token), report, now)
    if answer is not None:
        return answer
    with platform.db.write() as session:  # prepared statements only: no ORM Session needed
        # The report's columns only (not the ORM row with its JSON definition): see store.report_job.
        job = _check_runner(store.report_job(session, job_id), job_id, token)
        if report.get("runId") != job.run_id or job.status in TERMINAL_STATUSES:
            return {"action": "cancel"}
        action, finished = _apply_runner_report(job, report, now)
        if finished:
            credentials.revoke(session, f"job:{job.arn}")
        store.save_report_job(session, job)
    if finished and job.batch_arn is not None:
        platform.notify(BATCH_MEMBER_ENDED, job.batch_arn)  # its successor, then admission
    elif finished:
        platform.notify("simulation_jobs")
    return {"action": action}


def apply_final_report(job: store.SimulationJobRow, report: dict[str, Any], now: float) -> None:
    """A runner's final.json, read by the controller when the runner could not deliver it."""
    _apply_report(job, {**report, "phase": "Finished"}, now)


def plan_applications(
    platform: Any, job: store.SimulationJobRow | store.AdmissionJob, *, cache: dict | None = None
) -> list[dict[str, Any]]:
    """What each application runs now: `$LATEST` resolves at use time, numbered versions pin an ETag.

    `cache`: one admission pass's memo (see `applications.resolve_for_use`)."""
    ctx = RequestContext(account_id=job.account_id, region=job.region)
    planned = []
    configs = [("robot", c) for c in job.definition.get("robotApplications", [])]
    configs += [("simulation", c) for c in job.definition.get("simulationApplications", [])]
    for kind_name, config in configs:
        kind = ROBOT if kind_name == "robot" else SIMULATION
        version = config["applicationVersion"]
        resolved = applications.resolve_for_use(
            platform, ctx, kind, config["application"], version, "application", cache=cache
        )
        spec = resolved["spec"]
        source = _x86_source(spec)
        sources = []
        if source is not None:
            sources.append(
                {
                    "s3Bucket": source["s3Bucket"],
                    "s3Key": source["s3Key"],
                    "etag": source.get("etag") if version != "$LATEST" else None,
                }
            )
        planned.append(
            {
                "kind": kind_name,
                "name": resolved["name"],
                "arn": resolved["arn"],
                "version": version,
                "softwareSuite": spec["robotSoftwareSuite"],
                "sources": sources,
                "launchConfig": config["launchConfig"],
            }
        )
    # The simulation application starts first, as on RoboMaker (it brings up the world the robot joins).
    planned.sort(key=lambda app: app["kind"] != "simulation")
    return planned
