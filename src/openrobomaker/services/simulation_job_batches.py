"""Simulation job batches (spec §3): many simulation jobs under one concurrency limit and one timeout.

StartSimulationJobBatch validates every request on its own: an invalid one lands in `failedRequests`, the
valid ones wait in `pendingRequests`. The batch controller then turns pending requests into member jobs
while fewer than `maxConcurrency` members are active, and winds the batch down on cancel or timeout:

    Pending -> InProgress -> Completing -> Completed | Failed
    (any of those) -(timeoutInSeconds)-> TimingOut -> TimedOut | Failed
    (any of those) -(CancelSimulationJobBatch)-> Canceling -> Canceled

Defaults when `batchPolicy` leaves them out (RoboMaker documented none): maxConcurrency 5, timeout 14 days.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from openrobomaker.services import simulation_jobs as jobs
from openrobomaker.services import tags as tag_rules
from openrobomaker.services.arns import build_arn, owned_arn, parse_arn, random_id
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import (
    ApiError,
    IdempotentParameterMismatch,
    InvalidParameter,
    LimitExceeded,
    ResourceNotFound,
)
from openrobomaker.services.pagination import decode_token, exact_filters, filtered_scope, page, page_size
from openrobomaker.services.registry import operation, taggable
from openrobomaker.store import simulation_job_batches as store
from openrobomaker.store import simulation_jobs as job_store
from openrobomaker.store.simulation_job_batches import CREATED, DROPPED, FAILED, PENDING

log = logging.getLogger("openrobomaker.services.simulation_job_batches")

DEFAULT_MAX_CONCURRENCY = 5
MAX_CONCURRENCY = 1000  # a batch holds at most 1000 requests, so more could never be used
MAX_TIMEOUT_SECONDS = 14 * 24 * 3600  # RoboMaker's quota, not adjustable
DEFAULT_TIMEOUT_SECONDS = MAX_TIMEOUT_SECONDS
DEFAULT_PAGE = 100
LIST_FILTERS = {"status"}

# Statuses in which the batch still turns pending requests into jobs.
DRIVING_STATUSES = ("Pending", "InProgress", "Completing")
WINDING_DOWN_STATUSES = ("Canceling", "TimingOut")

INTERNAL_ERROR = "InternalServiceError"
# SimulationJobErrorCode for a request that failed with an API error (spec §3.3).
_FAILURE_CODES = {
    "InvalidParameterException": "InvalidInput",
    "ResourceNotFoundException": "ResourceNotFound",
    "LimitExceededException": "LimitExceeded",
    "ThrottlingException": "RequestThrottled",
}
# A pending request whose job could not be created for one of these stays pending and is tried again
# (the model's BatchPolicy doc: at timeout "pending requests that were failing" move to failedRequests).
RETRYABLE_CODES = ("LimitExceeded", "RequestThrottled", INTERNAL_ERROR)
MAX_INTERNAL_ERROR_ATTEMPTS = 3
RETRY_INTERNAL_ERROR_AFTER_SECONDS = 5.0


# --- request rules ---------------------------------------------------------------------------------------


def failure_code_for(error: ApiError) -> str:
    return _FAILURE_CODES.get(error.code, INTERNAL_ERROR)


def _fingerprint(params: dict[str, Any]) -> str:
    material = {k: v for k, v in params.items() if k != "clientRequestToken"}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def batch_policy(params: dict[str, Any]) -> dict[str, int]:
    """The policy with its defaults filled in, as Describe echoes it."""
    policy = params.get("batchPolicy") or {}
    concurrency = policy.get("maxConcurrency")
    timeout = policy.get("timeoutInSeconds")
    concurrency = DEFAULT_MAX_CONCURRENCY if concurrency is None else concurrency
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidParameter(f"batchPolicy.maxConcurrency: must be between 1 and {MAX_CONCURRENCY}")
    if not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidParameter(
            f"batchPolicy.timeoutInSeconds: must be between 1 and {MAX_TIMEOUT_SECONDS} (14 days)"
        )
    return {"timeoutInSeconds": timeout, "maxConcurrency": concurrency}


def job_params(request: dict[str, Any]) -> dict[str, Any]:
    """A SimulationJobRequest as CreateSimulationJob parameters (iamRole is optional in a batch request)."""
    params = {k: v for k, v in request.items() if k != "useDefaultApplications"}
    params.setdefault("iamRole", None)
    return params


def validate_request(
    platform: Any, ctx: RequestContext, request: dict[str, Any], *, cache: dict | None = None
) -> dict[str, Any]:
    """What CreateSimulationJob would check of this request; returns the job definition or raises.

    `cache`: one pass's memo of the application versions read (see `applications.resolve_for_use`)."""
    params = job_params(request)
    tag_rules.checked_tags(params.get("tags") or {}, "tags")
    return jobs.build_definition(platform, ctx, params, cache=cache)


def _failure_of(error: Exception) -> tuple[str, str]:
    if isinstance(error, ApiError):
        return failure_code_for(error), error.message
    log.exception("internal error validating a batch request", exc_info=error)
    return INTERNAL_ERROR, "An internal error occurred while processing this request."


def check_request(
    platform: Any, ctx: RequestContext, request: dict[str, Any], cache: dict | None = None
) -> tuple[str, str] | None:
    """None when the request is valid, else its (failureCode, failureReason)."""
    try:
        validate_request(platform, ctx, request, cache=cache)
    except Exception as exc:  # every failure of one request is reported on that request alone
        return _failure_of(exc)
    return None


# --- views -----------------------------------------------------------------------------------------------


def _failed_view(
    request: dict, code: str | None, reason: str | None, failed_at: float | None
) -> dict[str, Any]:
    return {
        "request": request,
        "failureReason": reason,
        "failureCode": code,
        "failedAt": failed_at,
    }


def batch_view(session, batch: store.SimulationJobBatchRow) -> dict[str, Any]:
    # Flat rows of just the shown columns: Describe is polled, and a batch has up to 1000 requests.
    requests = store.echoed_requests(session, batch.batch_id)
    members = {job.arn: job for job in store.member_summaries(session, batch.arn)}
    created = [members[arn] for arn in store.created_job_arns(session, batch.batch_id) if arn in members]
    return _view(
        batch,
        failed=[
            _failed_view(r.request, r.failure_code, r.failure_reason, r.failed_at)
            for r in requests
            if r.state == FAILED
        ],
        pending=[r.request for r in requests if r.state == PENDING],
        created=[jobs.job_summary(job) for job in created],
        tags=tag_rules.load_tags(session, batch.arn),
    )


def _view(
    batch: store.SimulationJobBatchRow, *, failed: list, pending: list, created: list, tags: dict[str, str]
) -> dict[str, Any]:
    return {
        "arn": batch.arn,
        "status": batch.status,
        "lastUpdatedAt": batch.last_updated_at,
        "createdAt": batch.created_at,
        "clientRequestToken": batch.client_request_token,
        "batchPolicy": {"timeoutInSeconds": batch.timeout_seconds, "maxConcurrency": batch.max_concurrency},
        "failureCode": batch.failure_code,
        "failureReason": batch.failure_reason,
        "failedRequests": failed,
        "pendingRequests": pending,
        "createdRequests": created,
        "tags": tags,
    }


def batch_summary(batch: store.SimulationJobBatchRow, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "arn": batch.arn,
        "lastUpdatedAt": batch.last_updated_at,
        "createdAt": batch.created_at,
        "status": batch.status,
        "failedRequestCount": counts.get(FAILED, 0),
        "pendingRequestCount": counts.get(PENDING, 0),
        "createdRequestCount": counts.get(CREATED, 0),
    }


# --- operations ------------------------------------------------------------------------------------------


def _replay(session, ctx: RequestContext, token: str | None, fingerprint: str) -> dict[str, Any] | None:
    if not token:
        return None
    previous = store.batch_by_token(session, ctx.account_id, ctx.region, token)
    if previous is None:
        return None
    if previous.request_fingerprint != fingerprint:
        raise IdempotentParameterMismatch(
            f"clientRequestToken: {token!r} was already used for a different request ({previous.arn})"
        )
    return batch_view(session, previous)


def _start_response(view: dict[str, Any]) -> dict[str, Any]:
    # StartSimulationJobBatchResponse has every member of Describe's but lastUpdatedAt.
    return {k: v for k, v in view.items() if k != "lastUpdatedAt"}


def _insert_batch(
    session, platform: Any, ctx: RequestContext, params: dict[str, Any], policy: dict[str, int], fingerprint
) -> store.SimulationJobBatchRow:
    quota = platform.settings.limits.active_simulation_job_batches
    if store.count_active_batches(session, ctx.account_id, ctx.region) >= quota:
        raise LimitExceeded(
            f"the account already has {quota} active simulation job batches (active_simulation_job_batches)"
        )
    batch_id = random_id("batch-")
    now = time.time()
    batch = store.SimulationJobBatchRow(
        batch_id=batch_id,
        arn=build_arn(ctx, "simulation-job-batch", batch_id),
        account_id=ctx.account_id,
        region=ctx.region,
        status="Pending",
        client_request_token=params.get("clientRequestToken"),
        request_fingerprint=fingerprint,
        max_concurrency=policy["maxConcurrency"],
        timeout_seconds=policy["timeoutInSeconds"],
        created_at=now,
        last_updated_at=now,
        deadline_at=now + policy["timeoutInSeconds"],
    )
    session.add(batch)
    return batch


def _insert_requests(
    session, batch: store.SimulationJobBatchRow, requests: list[dict], failures: list[tuple[str, str] | None]
) -> None:
    rows = []
    for position, (request, failure) in enumerate(zip(requests, failures, strict=True)):
        code, reason = failure if failure is not None else (None, None)
        rows.append(
            {
                "batch_id": batch.batch_id,
                "position": position,
                "state": PENDING if failure is None else FAILED,
                "request": request,
                "attempts": 0,
                "updated_at": batch.created_at,
                "failure_code": code,
                "failure_reason": reason,
                "failed_at": None if failure is None else batch.created_at,
            }
        )
    session.flush()  # the batch's row first
    store.insert_requests(session, rows)


def _new_batch_view(
    batch: store.SimulationJobBatchRow,
    requests: list[dict],
    failures: list[tuple[str, str] | None],
    tags: dict[str, str],
) -> dict[str, Any]:
    """batch_view of a batch just inserted, from what was inserted: Pending, no member yet."""
    failed = [
        _failed_view(request, *failure, batch.created_at)
        for request, failure in zip(requests, failures, strict=True)
        if failure is not None
    ]
    pending = [request for request, failure in zip(requests, failures, strict=True) if failure is None]
    return _view(batch, failed=failed, pending=pending, created=[], tags=tags)


@operation("StartSimulationJobBatch")
def start_simulation_job_batch(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    token, fingerprint = params.get("clientRequestToken"), _fingerprint(params)
    with platform.db.read() as session:
        replayed = _replay(session, ctx, token, fingerprint)
    if replayed is not None:
        return _start_response(replayed)
    policy = batch_policy(params)
    batch_tags = tag_rules.checked_tags(params.get("tags") or {})
    requests = params["createSimulationJobRequests"]
    resolved: dict = {}  # a batch's requests usually name the same applications: read each once
    failures = [check_request(platform, ctx, request, resolved) for request in requests]
    with platform.db.transaction() as session:
        replayed = _replay(session, ctx, token, fingerprint)
        if replayed is not None:
            return _start_response(replayed)
        batch = _insert_batch(session, platform, ctx, params, policy, fingerprint)
        _insert_requests(session, batch, requests, failures)
        tag_rules.store_tags(session, batch.arn, batch_tags)
        view = _new_batch_view(batch, requests, failures, batch_tags)
    platform.notify("simulation_batches")
    return _start_response(view)


def _owned_batch(session, ctx: RequestContext, arn: str, *, for_update: bool = False):
    owned_arn(ctx, arn, "simulation-job-batch", "batch")
    batch = store.batch_by_arn(session, arn, for_update=for_update)
    if batch is None:
        raise ResourceNotFound(f"batch: simulation job batch {arn} not found")
    return batch


@operation("DescribeSimulationJobBatch")
def describe_simulation_job_batch(
    platform: Any, ctx: RequestContext, params: dict[str, Any]
) -> dict[str, Any]:
    with platform.db.read() as session:
        return batch_view(session, _owned_batch(session, ctx, params["batch"]))


@operation("ListSimulationJobBatches")
def list_simulation_job_batches(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    filters = exact_filters(params, LIST_FILTERS)
    limit = page_size(params, DEFAULT_PAGE, DEFAULT_PAGE)
    scope = filtered_scope("batches", filters)
    offset = decode_token(params.get("nextToken"), scope)
    with platform.db.read() as session:
        rows = store.list_batches(
            session, ctx.account_id, ctx.region, status=filters.get("status"), offset=offset, limit=limit + 1
        )
        window, token = page(rows, offset, limit, scope)
        counts = store.request_counts(session, [batch.batch_id for batch in window])
    result: dict[str, Any] = {
        "simulationJobBatchSummaries": [batch_summary(b, counts[b.batch_id]) for b in window]
    }
    if token:
        result["nextToken"] = token
    return result


@operation("CancelSimulationJobBatch")
def cancel_simulation_job_batch(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with platform.db.transaction() as session:
        batch = _owned_batch(session, ctx, params["batch"], for_update=True)
        if batch.status not in DRIVING_STATUSES:
            return {}  # already ended or winding down: cancelling again changes nothing
        now = time.time()
        set_status(batch, "Canceling", now)
        wind_down(session, batch, now)
    platform.notify("simulation_jobs")
    platform.notify("simulation_batches")
    return {}


@taggable("simulation-job-batch")
def _batch_exists(platform: Any, ctx: RequestContext, arn: str) -> bool:
    with platform.db.read() as session:
        batch = store.batch_by_arn(session, arn)
        return batch is not None and batch.account_id == ctx.account_id and batch.region == ctx.region


# --- driving a batch (the controller's steps; each is one transaction and idempotent) ---------------------


def set_status(batch: store.SimulationJobBatchRow, status: str, now: float) -> None:
    if batch.status != status:
        batch.status = status
        batch.last_updated_at = now


def batch_context(batch: Any) -> RequestContext:
    """The account and region of a batch (its row, a pass's view of it, or a statement's row)."""
    return RequestContext(account_id=batch.account_id, region=batch.region)


def _member_end_code(batch: store.SimulationJobBatchRow) -> str:
    return "BatchCanceled" if batch.status == "Canceling" else "BatchTimedOut"


def _retire_pending(batch: store.SimulationJobBatchRow, row: store.BatchRequestRow, now: float) -> None:
    """A pending request when the batch stops: dropped on cancel, failed on timeout (spec §3.3)."""
    row.updated_at = now
    if batch.status == "Canceling":
        row.state = DROPPED
        return
    row.state = FAILED
    row.failed_at = now
    if row.failure_code is None:
        # Never tried, or tried without error: it simply did not get its turn before the deadline.
        row.failure_code = "BatchTimedOut"
        row.failure_reason = (
            f"The batch timed out after {batch.timeout_seconds} seconds before this request was started."
        )


def wind_down(session, batch: store.SimulationJobBatchRow, now: float) -> bool:
    """Canceling/TimingOut: stop members, retire pending requests, and end the batch once nothing runs.

    Returns True when a member was asked to stop (the job controller should look)."""
    code = _member_end_code(batch)
    reason = (
        "Canceled with its simulation job batch."
        if code == "BatchCanceled"
        else (f"Its simulation job batch timed out after {batch.timeout_seconds} seconds.")
    )
    stopped = False
    for job in store.active_members(session, batch.arn, for_update=True):
        if job.desired != "cancel":
            jobs.request_cancel(job, code=code, reason=reason)
            stopped = True
    for row in store.requests_of(session, batch.batch_id, PENDING):
        _retire_pending(batch, row, now)
        batch.last_updated_at = now
    session.flush()
    if store.count_active_members(session, batch.arn) == 0:
        finish(session, batch, now)
    return stopped


def _internal_failure(session, batch: store.SimulationJobBatchRow) -> store.BatchRequestRow | None:
    return next(
        (r for r in store.requests_of(session, batch.batch_id, FAILED) if r.failure_code == INTERNAL_ERROR),
        None,
    )


def finish(session, batch: store.SimulationJobBatchRow, now: float) -> None:
    """The batch's final status, once no request is pending and no member is active (spec §3.3)."""
    if batch.status == "Canceling":
        set_status(batch, "Canceled", now)
        return
    failed = _internal_failure(session, batch)
    if failed is not None:
        batch.failure_code = INTERNAL_ERROR
        batch.failure_reason = (
            f"Request {failed.position + 1} of the batch could not be processed because of an internal error."
        )
        set_status(batch, "Failed", now)
    else:
        set_status(batch, "TimedOut" if batch.status == "TimingOut" else "Completed", now)


def settle(session, batch: store.SimulationJobBatchRow, now: float) -> None:
    """A driving batch with nothing left to start: Completing while members run, then its final status."""
    if store.count_requests(session, batch.batch_id, PENDING):
        return
    if store.count_active_members(session, batch.arn) == 0:
        finish(session, batch, now)
    else:
        set_status(batch, "Completing", now)


def start_timeout(session, batch: store.SimulationJobBatchRow, now: float) -> bool:
    """Past its deadline a driving batch starts timing out; returns True when members were asked to stop."""
    set_status(batch, "TimingOut", now)
    return wind_down(session, batch, now)


# --- turning pending requests into member jobs ------------------------------------------------------------


def _record_attempt_failure(
    batch: store.SimulationJobBatchRow | MemberPass, row: Any, error: Exception, now: float
) -> None:
    code, reason = _failure_of(error)
    row.attempts += 1
    row.failure_code, row.failure_reason, row.failed_at, row.updated_at = code, reason, now, now
    retryable = code in RETRYABLE_CODES and not (
        code == INTERNAL_ERROR and row.attempts >= MAX_INTERNAL_ERROR_ATTEMPTS
    )
    if not retryable:
        row.state = FAILED
        batch.last_updated_at = now


class MemberPass:
    """The batch as one member-creating pass reads and changes it (status, last_updated_at)."""

    def __init__(self, batch_id: str, row: Any):
        self.batch_id = batch_id
        self.arn, self.account_id, self.region = row.arn, row.account_id, row.region
        self.status, self.max_concurrency = row.status, row.max_concurrency
        self.last_updated_at: float | None = None  # set when the pass changes something


class PassRequest:
    """A pending request's columns a pass may change; `save_request` writes them back."""

    def __init__(self, attempts: int):
        self.state, self.job_arn, self.attempts = PENDING, None, attempts
        self.failure_code = self.failure_reason = self.failed_at = self.updated_at = None

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in store.PASS_REQUEST_COLUMNS}


def _definitions(
    platform: Any, ctx: RequestContext, requests: dict[int, dict], resolved: dict
) -> dict[int, Any]:
    """Each request validated again (what it names may have changed since the start): definition or error.
    `resolved` reads each application version once for the whole pass."""
    results: dict[int, Any] = {}
    for position, request in requests.items():
        try:
            results[position] = validate_request(platform, ctx, request, cache=resolved)
        except Exception as exc:  # recorded on the request, never fatal to the batch's other requests
            results[position] = exc
    return results


def start_successors(platform: Any, batch_arn: str, ended: int, now: float) -> bool:
    """`ended` members of the batch ended: turn as many of its next pending requests into member jobs (one
    transaction), without looking at any other batch. True when it made that many; False when the rest is
    for a full pass to decide: the batch has fewer requests left, no longer turns requests into jobs, its
    timeout has come, or another batch of the account has requests pending (a full pass shares the
    account's job quota between batches, the one with the fewest active members first)."""
    batch_id = parse_arn(batch_arn).resource_id
    with platform.db.reader() as connection:
        row = store.successor_batch(connection, batch_id)
        if row is None or row.status not in DRIVING_STATUSES or now >= row.deadline_at or row.others_waiting:
            return False
        due = _due_requests(connection, batch_id, ended, now)
    return _create_due(platform, batch_id, row, due) == ended


def create_members(platform: Any, batch_id: str, room: int, now: float) -> int:
    """Turn up to `room` due pending requests into member jobs while the batch has room; returns how many
    were made.

    The job row and the request's move to `created` commit together, so a crash leaves either both or
    neither: a restarted controller never loses nor duplicates a member. Prepared statements throughout
    (see store): a batch of hundreds of one-second jobs runs this pass for every member."""
    with platform.db.reader() as connection:
        row = store.pass_batch(connection, batch_id)
        if row is None or row.status not in DRIVING_STATUSES:
            return 0
        due = _due_requests(connection, batch_id, room, now)
    return _create_due(platform, batch_id, row, due)


def _due_requests(connection, batch_id: str, limit: int, now: float) -> list:
    return store.due_pending_requests(
        connection,
        batch_id,
        limit,
        backoff_code=INTERNAL_ERROR,
        tried_before=now - RETRY_INTERNAL_ERROR_AFTER_SECONDS,
    )


def _create_due(platform: Any, batch_id: str, row: Any, due: list) -> int:
    """Member jobs for the `due` requests of the batch read as `row` (its account and region); how many."""
    if not due:
        return 0
    requests = {position: request for position, request in due}
    results = _definitions(platform, batch_context(row), requests, {})
    now = time.time()
    with platform.db.transaction() as session:
        return _create_in_transaction(session, platform, batch_id, requests, results, now)


def _create_in_transaction(
    session, platform: Any, batch_id: str, requests: dict[int, dict], results: dict[int, Any], now: float
) -> int:
    row = store.locked_pass_batch(session, batch_id)
    if row is None or row.status not in DRIVING_STATUSES:
        return 0
    batch = MemberPass(batch_id, row)
    ctx = batch_context(batch)
    room = batch.max_concurrency - store.active_member_count(session, batch.arn)
    # The account's job quota, counted once: this transaction is the only one adding jobs meanwhile
    # (SQLite: the writer lock; PostgreSQL: as CreateSimulationJob's own count-then-insert).
    active_jobs: int | None = None
    still_pending = store.pending_attempts(session, batch_id, min(requests), max(requests))
    made = 0
    for position, request in requests.items():
        if position not in still_pending:
            continue  # created, failed or dropped since the read
        result, pending = results[position], PassRequest(still_pending[position])
        if isinstance(result, Exception):
            _record_attempt_failure(batch, pending, result, now)
        elif room <= 0:
            break
        else:
            if active_jobs is None:
                active_jobs = job_store.count_active(session, ctx.account_id, ctx.region)
            try:
                jobs.check_job_quota(platform, active_jobs)
            except LimitExceeded as exc:
                _record_attempt_failure(batch, pending, exc, now)
                store.save_request(session, batch_id, position, pending.values())
                break  # the account's job quota is full: later requests would fail the same way
            job_arn = jobs.insert_member_job(session, ctx, job_params(request), result, batch.arn)
            pending.state, pending.job_arn, pending.updated_at = CREATED, job_arn, now
            batch.status, batch.last_updated_at = "InProgress", now
            room, made, active_jobs = room - 1, made + 1, active_jobs + 1
        store.save_request(session, batch_id, position, pending.values())
    if batch.last_updated_at is not None:
        store.save_batch_status(session, batch_id, batch.status, batch.last_updated_at)
    if not store.any_pending(session, batch_id):
        # Nothing left pending (rare: once per batch): the ORM's settle decides Completing or the end.
        locked = store.get_batch(session, batch_id, for_update=True)
        if locked is not None:
            settle(session, locked, now)
    return made
