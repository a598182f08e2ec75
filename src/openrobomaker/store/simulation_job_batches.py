"""Simulation job batches (spec §3): the batch, and one row per request it was given.

Each request row sits in exactly one bucket (`state`): pending, created (it became member job `job_arn`),
failed, or dropped (pending when the batch was cancelled). Moving a request between buckets and creating
its member job happen in one transaction, so a restart neither loses nor duplicates a member.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base
from openrobomaker.store.db import bound, execute_in_transaction
from openrobomaker.store.simulation_jobs import ACTIVE_STATUSES, SimulationJobRow, sql_in_list

ACTIVE_BATCH_STATUSES = ("Pending", "InProgress", "Completing", "Canceling", "TimingOut")
TERMINAL_BATCH_STATUSES = ("Completed", "Failed", "Canceled", "TimedOut")

PENDING, CREATED, FAILED, DROPPED = "pending", "created", "failed", "dropped"


class SimulationJobBatchRow(Base):
    __tablename__ = "simulation_job_batches"

    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1224), unique=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    region: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_request_token: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the request minus its token, to tell an idempotent retry from a mismatch
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    max_concurrency: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    last_updated_at: Mapped[float] = mapped_column(Float)
    # created_at + timeout_seconds: past it an unfinished batch times out
    deadline_at: Mapped[float] = mapped_column(Float)


class BatchRequestRow(Base):
    __tablename__ = "simulation_job_batch_requests"

    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    # the SimulationJobRequest as the user sent it (echoed in pendingRequests / failedRequests)
    request: Mapped[dict] = mapped_column(JSON)
    job_arn: Mapped[str | None] = mapped_column(String(1224), nullable=True)
    # failed: why; pending: why the last attempt to create its job did not succeed (it is retried)
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # attempts to create its job that ended in a retryable error (LimitExceeded, internal errors)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


def insert_requests(session: Session, rows: list[dict]) -> None:
    """A new batch's requests in one executemany: the ORM's unit of work took ~0.1 ms a row, and a batch has
    up to 1000 (the first member waited for all of them)."""
    if rows:
        session.execute(insert(BatchRequestRow), rows)


# --- batches ---------------------------------------------------------------------------------------------


def batch_by_arn(session: Session, arn: str, *, for_update: bool = False) -> SimulationJobBatchRow | None:
    query = select(SimulationJobBatchRow).where(SimulationJobBatchRow.arn == arn)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def get_batch(session: Session, batch_id: str, *, for_update: bool = False) -> SimulationJobBatchRow | None:
    query = select(SimulationJobBatchRow).where(SimulationJobBatchRow.batch_id == batch_id)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def batch_by_token(
    session: Session, account_id: str, region: str, token: str
) -> SimulationJobBatchRow | None:
    return session.scalars(
        select(SimulationJobBatchRow).where(
            SimulationJobBatchRow.account_id == account_id,
            SimulationJobBatchRow.region == region,
            SimulationJobBatchRow.client_request_token == token,
        )
    ).first()


def count_active_batches(session: Session, account_id: str, region: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(SimulationJobBatchRow)
            .where(
                SimulationJobBatchRow.account_id == account_id,
                SimulationJobBatchRow.region == region,
                SimulationJobBatchRow.status.in_(ACTIVE_BATCH_STATUSES),
            )
        )
        or 0
    )


# The batch controller's per-pass snapshot in one statement: each active batch with its pending requests
# and its active members counted (three ORM queries before). Built once, so `Database.reader()` prepares it.
_PENDING_COUNT = (
    select(func.count())
    .select_from(BatchRequestRow)
    .where(BatchRequestRow.batch_id == SimulationJobBatchRow.batch_id, BatchRequestRow.state == PENDING)
    .correlate(SimulationJobBatchRow)
    .scalar_subquery()
)
_ACTIVE_MEMBER_COUNT = (
    select(func.count())
    .select_from(SimulationJobRow)
    .where(
        SimulationJobRow.batch_arn == SimulationJobBatchRow.arn,
        text(sql_in_list("simulation_jobs.status", ACTIVE_STATUSES)),
    )
    .correlate(SimulationJobBatchRow)
    .scalar_subquery()
)
_BATCH_SNAPSHOT = (
    select(
        SimulationJobBatchRow.batch_id,
        SimulationJobBatchRow.arn,
        SimulationJobBatchRow.status,
        SimulationJobBatchRow.deadline_at,
        SimulationJobBatchRow.max_concurrency,
        _PENDING_COUNT.label("pending"),
        _ACTIVE_MEMBER_COUNT.label("active_members"),
    )
    .where(text(sql_in_list("simulation_job_batches.status", ACTIVE_BATCH_STATUSES)))
    .order_by(SimulationJobBatchRow.created_at, SimulationJobBatchRow.batch_id)
)


def active_batch_states(connection: Session | Connection) -> list[Row]:
    """Every batch the controller still drives, oldest first, with its pending and active-member counts."""
    return list(connection.execute(_BATCH_SNAPSHOT).all())


def list_batches(
    session: Session, account_id: str, region: str, *, status: str | None, offset: int, limit: int
) -> list[SimulationJobBatchRow]:
    query = select(SimulationJobBatchRow).where(
        SimulationJobBatchRow.account_id == account_id, SimulationJobBatchRow.region == region
    )
    if status is not None:
        query = query.where(SimulationJobBatchRow.status == status)
    query = query.order_by(SimulationJobBatchRow.created_at.desc(), SimulationJobBatchRow.batch_id)
    return list(session.scalars(query.offset(offset).limit(limit)))


# --- requests --------------------------------------------------------------------------------------------


def requests_of(session: Session, batch_id: str, state: str | None = None) -> list[BatchRequestRow]:
    query = select(BatchRequestRow).where(BatchRequestRow.batch_id == batch_id)
    if state is not None:
        query = query.where(BatchRequestRow.state == state)
    return list(session.scalars(query.order_by(BatchRequestRow.position)))


def count_requests(session: Session, batch_id: str, state: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(BatchRequestRow)
            .where(BatchRequestRow.batch_id == batch_id, BatchRequestRow.state == state)
        )
        or 0
    )


def request_counts(session: Session, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    """{batch_id: {state: count}} for the list summaries."""
    counts: dict[str, dict[str, int]] = {batch_id: {} for batch_id in batch_ids}
    if not batch_ids:
        return counts
    rows = session.execute(
        select(BatchRequestRow.batch_id, BatchRequestRow.state, func.count())
        .where(BatchRequestRow.batch_id.in_(batch_ids))
        .group_by(BatchRequestRow.batch_id, BatchRequestRow.state)
    )
    for batch_id, state, count in rows:
        counts[batch_id][state] = count
    return counts


# --- member jobs -----------------------------------------------------------------------------------------


def active_members(session: Session, batch_arn: str, *, for_update: bool = False) -> list[SimulationJobRow]:
    query = select(SimulationJobRow).where(
        SimulationJobRow.batch_arn == batch_arn, SimulationJobRow.status.in_(ACTIVE_STATUSES)
    )
    if for_update:
        query = query.with_for_update()
    return list(session.scalars(query.order_by(SimulationJobRow.created_at, SimulationJobRow.job_id)))


def created_job_arns(session: Session, batch_id: str) -> list[str]:
    """The member job of every created request, in request order (their requests are not echoed)."""
    query = (
        select(BatchRequestRow.job_arn)
        .where(BatchRequestRow.batch_id == batch_id, BatchRequestRow.state == CREATED)
        .order_by(BatchRequestRow.position)
    )
    return [arn for arn in session.scalars(query) if arn is not None]


def echoed_requests(session: Session, batch_id: str) -> list[Row]:
    """Pending and failed requests, in request order, as flat rows: what Describe echoes of the requests."""
    query = (
        select(
            BatchRequestRow.state,
            BatchRequestRow.request,
            BatchRequestRow.failure_code,
            BatchRequestRow.failure_reason,
            BatchRequestRow.failed_at,
        )
        .where(BatchRequestRow.batch_id == batch_id, BatchRequestRow.state.in_((PENDING, FAILED)))
        .order_by(BatchRequestRow.position)
    )
    return list(session.execute(query).all())


def member_summaries(session: Session, batch_arn: str) -> list[Row]:
    """The columns a job summary shows, of every member, as flat rows: Describe of a 200-member batch
    loaded 200 ORM rows on every poll."""
    query = select(
        SimulationJobRow.arn,
        SimulationJobRow.last_updated_at,
        SimulationJobRow.status,
        SimulationJobRow.definition,
    ).where(SimulationJobRow.batch_arn == batch_arn)
    return list(session.execute(query).all())


def count_active_members(session: Session, batch_arn: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(SimulationJobRow)
            .where(SimulationJobRow.batch_arn == batch_arn, SimulationJobRow.status.in_(ACTIVE_STATUSES))
        )
        or 0
    )


# --- creating member jobs: one pass's statements, prepared once ---------------------------------------------
# A pass used ~10 ORM statements per member (batch and request rows loaded twice, counts per member, flushes);
# these are two reads before the transaction, four reads in it, and one UPDATE per request it changes.

_PASS_BATCH = select(
    SimulationJobBatchRow.arn,
    SimulationJobBatchRow.account_id,
    SimulationJobBatchRow.region,
    SimulationJobBatchRow.status,
    SimulationJobBatchRow.max_concurrency,
).where(SimulationJobBatchRow.batch_id == bindparam("batch_id"))
_PASS_BATCH_LOCKED = _PASS_BATCH.with_for_update()  # PostgreSQL: held until the pass commits
_OTHER_BATCH = SimulationJobBatchRow.__table__.alias("other_batch")
_OTHERS_WAITING = (
    select(func.count())
    .select_from(_OTHER_BATCH)
    .where(
        _OTHER_BATCH.c.account_id == SimulationJobBatchRow.account_id,
        _OTHER_BATCH.c.region == SimulationJobBatchRow.region,
        _OTHER_BATCH.c.batch_id != SimulationJobBatchRow.batch_id,
        text(sql_in_list("other_batch.status", ACTIVE_BATCH_STATUSES)),
        select(BatchRequestRow.position)
        .where(BatchRequestRow.batch_id == _OTHER_BATCH.c.batch_id, BatchRequestRow.state == PENDING)
        .exists(),
    )
    .correlate(SimulationJobBatchRow)
    .scalar_subquery()
)
# What a member-creating pass reads of the batch, with its deadline and the account's other waiting batches.
_SUCCESSOR_BATCH = _PASS_BATCH.add_columns(
    SimulationJobBatchRow.deadline_at, _OTHERS_WAITING.label("others_waiting")
)
_DUE_PENDING = (
    select(BatchRequestRow.position, BatchRequestRow.request)
    .where(BatchRequestRow.batch_id == bindparam("batch_id"), BatchRequestRow.state == PENDING)
    .where(
        BatchRequestRow.failure_code.is_(None)
        | (BatchRequestRow.failure_code != bindparam("backoff_code"))
        | (BatchRequestRow.failed_at <= bindparam("tried_before"))
    )
    .order_by(BatchRequestRow.position)
    .limit(bindparam("limit"))
)
_PENDING_BETWEEN = (
    select(BatchRequestRow.position, BatchRequestRow.attempts)
    .where(
        BatchRequestRow.batch_id == bindparam("batch_id"),
        BatchRequestRow.state == PENDING,
        BatchRequestRow.position >= bindparam("first"),
        BatchRequestRow.position <= bindparam("last"),
    )
    .with_for_update()
)
_ACTIVE_MEMBERS = (
    select(func.count().label("active_members"))
    .select_from(SimulationJobRow)
    .where(
        SimulationJobRow.batch_arn == bindparam("batch_arn"),
        text(sql_in_list("simulation_jobs.status", ACTIVE_STATUSES)),
    )
)
_ANY_PENDING = (
    select(BatchRequestRow.position)
    .where(BatchRequestRow.batch_id == bindparam("batch_id"), BatchRequestRow.state == PENDING)
    .limit(1)
)
# What a pass may change of a pending request (save_request writes exactly these).
PASS_REQUEST_COLUMNS = (
    "state",
    "job_arn",
    "attempts",
    "failure_code",
    "failure_reason",
    "failed_at",
    "updated_at",
)
_REQUEST_SAVE = (
    update(BatchRequestRow)
    .where(
        BatchRequestRow.batch_id == bindparam("key_batch_id"),
        BatchRequestRow.position == bindparam("key_position"),
    )
    .values(bound(*PASS_REQUEST_COLUMNS))
)
_BATCH_SAVE = (
    update(SimulationJobBatchRow)
    .where(SimulationJobBatchRow.batch_id == bindparam("key_batch_id"))
    .values(bound("status", "last_updated_at"))
)


def pass_batch(connection: Session | Connection, batch_id: str) -> Row | None:
    """What a member-creating pass needs of its batch (a reader's statement, outside the transaction)."""
    return connection.execute(_PASS_BATCH, {"batch_id": batch_id}).first()


def successor_batch(connection: Session | Connection, batch_id: str) -> Row | None:
    """`pass_batch`'s columns with the batch's deadline, and how many other active batches of its account
    have requests pending (they share the account's job quota with it)."""
    return connection.execute(_SUCCESSOR_BATCH, {"batch_id": batch_id}).first()


def locked_pass_batch(session: Session, batch_id: str) -> Row | None:
    """The same, inside the pass's transaction (PostgreSQL: locks the batch row)."""
    rows = execute_in_transaction(session, _PASS_BATCH_LOCKED, {"batch_id": batch_id})
    return rows[0] if rows else None


def due_pending_requests(
    connection: Session | Connection, batch_id: str, limit: int, *, backoff_code: str, tried_before: float
) -> list[Row]:
    """(position, request) of the first `limit` pending requests, in request order, skipping those whose
    last attempt failed with `backoff_code` after `tried_before` (they wait out a backoff)."""
    params = {
        "batch_id": batch_id,
        "limit": limit,
        "backoff_code": backoff_code,
        "tried_before": tried_before,
    }
    return list(connection.execute(_DUE_PENDING, params).all())


def pending_attempts(session: Session, batch_id: str, first: int, last: int) -> dict[int, int]:
    """{position: attempts} of the requests between `first` and `last` that are still pending (locked)."""
    params = {"batch_id": batch_id, "first": first, "last": last}
    return dict(execute_in_transaction(session, _PENDING_BETWEEN, params))


def active_member_count(session: Session, batch_arn: str) -> int:
    """The batch's active members (the pass's transaction)."""
    rows = execute_in_transaction(session, _ACTIVE_MEMBERS, {"batch_arn": batch_arn})
    return rows[0][0] if rows else 0


def any_pending(session: Session, batch_id: str) -> bool:
    """Whether a request of the batch is still pending (stops at the first one found)."""
    return bool(execute_in_transaction(session, _ANY_PENDING, {"batch_id": batch_id}))


def save_request(session: Session, batch_id: str, position: int, values: dict[str, Any]) -> None:
    """Write a request's PASS_REQUEST_COLUMNS."""
    execute_in_transaction(
        session, _REQUEST_SAVE, values | {"key_batch_id": batch_id, "key_position": position}
    )


def save_batch_status(session: Session, batch_id: str, status: str, last_updated_at: float) -> None:
    params = {"key_batch_id": batch_id, "status": status, "last_updated_at": last_updated_at}
    execute_in_transaction(session, _BATCH_SAVE, params)
