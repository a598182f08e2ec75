"""Simulation jobs: the desired state users set through the API and the observed state runners report."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base
from openrobomaker.store.db import bound, execute_in_transaction

ACTIVE_STATUSES = ("Pending", "Preparing", "Running", "Restarting", "RunningFailed", "Terminating")
TERMINAL_STATUSES = ("Completed", "Failed", "Terminated", "Canceled")


class SimulationJobRow(Base):
    __tablename__ = "simulation_jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1224), unique=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    region: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_request_token: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the request as validated (minus the token), to tell an idempotent retry from a mismatch
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    # the job as Describe shows it, minus the fields below that change while it runs
    definition: Mapped[dict] = mapped_column(JSON)
    simulation_units: Mapped[int] = mapped_column(Integer)
    batch_arn: Mapped[str | None] = mapped_column(String(1224), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_updated_at: Mapped[float] = mapped_column(Float)
    simulation_time_millis: Mapped[int] = mapped_column(Integer, default=0)
    # desired state: "run" or "cancel"; restart_generation grows with every RestartSimulationJob
    desired: Mapped[str] = mapped_column(String(16), default="run")
    cancel_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    restart_generation: Mapped[int] = mapped_column(Integer, default=0)
    restart_acknowledged: Mapped[int] = mapped_column(Integer, default=0)
    # execution: which run, where, reported when
    run_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    runner_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    runner_handle: Mapped[str | None] = mapped_column(String(255), nullable=True)
    runner_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_report_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_report_seq: Mapped[int] = mapped_column(Integer, default=-1)
    work_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    access_key_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> SimulationJobRow | None:
    query = select(SimulationJobRow).where(SimulationJobRow.job_id == job_id)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def job_by_arn(session: Session, arn: str) -> SimulationJobRow | None:
    return session.scalars(select(SimulationJobRow).where(SimulationJobRow.arn == arn)).one_or_none()


def jobs_by_arns(session: Session, arns: list[str]) -> list[SimulationJobRow]:
    return list(session.scalars(select(SimulationJobRow).where(SimulationJobRow.arn.in_(arns))))


def job_by_token(session: Session, account_id: str, region: str, token: str) -> SimulationJobRow | None:
    return session.scalars(
        select(SimulationJobRow).where(
            SimulationJobRow.account_id == account_id,
            SimulationJobRow.region == region,
            SimulationJobRow.client_request_token == token,
            SimulationJobRow.batch_arn.is_(None),
        )
    ).first()


def count_active(session: Session, account_id: str, region: str) -> int:
    rows = execute_in_transaction(session, _COUNT_ACTIVE, {"account_id": account_id, "region": region})
    return rows[0][0] if rows else 0


def list_jobs(
    session: Session, account_id: str, region: str, *, status: str | None, offset: int, limit: int
) -> list[SimulationJobRow]:
    query = select(SimulationJobRow).where(
        SimulationJobRow.account_id == account_id, SimulationJobRow.region == region
    )
    if status is not None:
        query = query.where(SimulationJobRow.status == status)
    query = query.order_by(SimulationJobRow.created_at.desc(), SimulationJobRow.job_id)
    return list(session.scalars(query.offset(offset).limit(limit)))


def sql_in_list(column: str, values: tuple[str, ...]) -> str:
    """`column IN ('a', 'b')` as literal SQL: the values are this module's constants, never user input.
    An IN with bound values compiles to an expanding parameter, which `Database.reader()` cannot prepare."""
    assert all(value.isalpha() for value in values)
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


# The account's active jobs (its job quota), checked on every job created: prepared once.
_COUNT_ACTIVE = (
    select(func.count().label("active"))
    .select_from(SimulationJobRow)
    .where(
        SimulationJobRow.account_id == bindparam("account_id"),
        SimulationJobRow.region == bindparam("region"),
        text(sql_in_list("simulation_jobs.status", ACTIVE_STATUSES)),
    )
)


# The controller's per-pass snapshot: only the columns it decides on, as flat rows. It runs on every pass
# (every runner's end, every member created, twice a second); ORM rows with their JSON definitions cost
# far more than the decision made from them. Built once, so `Database.reader()` prepares it once.
_ACTIVE_SNAPSHOT = (
    select(
        SimulationJobRow.job_id,
        SimulationJobRow.status,
        SimulationJobRow.runner_handle,
        SimulationJobRow.simulation_units,
        SimulationJobRow.last_report_at,
        SimulationJobRow.runner_started_at,
        SimulationJobRow.desired,
        SimulationJobRow.work_dir,
    )
    .where(text(sql_in_list("simulation_jobs.status", ACTIVE_STATUSES)))
    .order_by(SimulationJobRow.created_at, SimulationJobRow.job_id)
)


def active_job_states(connection: Session | Connection) -> list[Row]:
    """What the controller needs of every active job (oldest first)."""
    return list(connection.execute(_ACTIVE_SNAPSHOT).all())


# --- runner reports: one read and at most one write inside the report transaction, without the ORM -------
# Every job sends ~4 reports (Preparing, Running, Terminating, Finished). Through the ORM each loaded the
# whole row (its JSON definition included), kept it in the identity map and flushed it; these statements
# are compiled once and, on SQLite, run on the transaction's own sqlite3 connection.

# The columns a report reads; the ones after `_REPORT_KEYS` are the ones it may change.
_REPORT_KEYS = (
    "arn",
    "batch_arn",
    "runner_token_hash",
    "run_id",
    "desired",
    "cancel_code",
    "restart_generation",
    "runner_started_at",
)
_REPORT_CHANGING = (
    "status",
    "failure_code",
    "failure_reason",
    "last_started_at",
    "last_updated_at",
    "simulation_time_millis",
    "restart_acknowledged",
    "runner_handle",
    "last_report_at",
    "last_report_seq",
)


def _columns_of_one_job(names: tuple[str, ...]):
    """SELECT these columns of the job `:job_id` (the shape of the prepared reads below)."""
    return select(*(getattr(SimulationJobRow, name) for name in names)).where(
        SimulationJobRow.job_id == bindparam("job_id")
    )


def _save_of_one_job(names: tuple[str, ...]):
    """UPDATE these columns, each bound by its own name, of the job `:key_job_id`."""
    return (
        update(SimulationJobRow)
        .where(SimulationJobRow.job_id == bindparam("key_job_id"))
        .values(bound(*names))
    )


# PostgreSQL: the job stays locked until the report commits (SQLite: no-op).
_REPORT_READ = _columns_of_one_job(_REPORT_KEYS + _REPORT_CHANGING).with_for_update()
_REPORT_PEEK = _columns_of_one_job(_REPORT_KEYS + _REPORT_CHANGING)
_REPORT_SAVE = _save_of_one_job(_REPORT_CHANGING)


class ReportJob:
    """The columns of a job a runner report reads and may change, with the same attribute names as
    SimulationJobRow, so the report rules (`_apply_report`, `finish_job`) apply to either."""

    def __init__(self, job_id: str, row: Any):
        self.job_id = job_id
        for name, value in zip(_REPORT_KEYS + _REPORT_CHANGING, row, strict=True):
            setattr(self, name, value)
        self._saved = self._changing()

    def _changing(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _REPORT_CHANGING)


def report_job(session: Session, job_id: str) -> ReportJob | None:
    rows = execute_in_transaction(session, _REPORT_READ, {"job_id": job_id})
    return ReportJob(job_id, rows[0]) if rows else None


def peek_report_job(connection: Session | Connection, job_id: str) -> ReportJob | None:
    """The same columns, read outside any transaction (a reader's statement): to answer a report that
    changes nothing without a write transaction."""
    row = connection.execute(_REPORT_PEEK, {"job_id": job_id}).first()
    return ReportJob(job_id, row) if row is not None else None


def report_changes(job: ReportJob) -> set[str]:
    """The columns a report changed on `job` so far."""
    return {
        name
        for name, old, new in zip(_REPORT_CHANGING, job._saved, job._changing(), strict=True)
        if old != new
    }


def save_report_job(session: Session, job: ReportJob) -> None:
    """Write the report's changes (one UPDATE by primary key), if it changed anything."""
    values = job._changing()
    if values == job._saved:
        return
    params = dict(zip(_REPORT_CHANGING, values, strict=True))
    execute_in_transaction(session, _REPORT_SAVE, params | {"key_job_id": job.job_id})
    job._saved = values


# The runner's handle replaces the `starting` mark once its process exists: a conditional UPDATE by key
# (a job whose start was undone meanwhile keeps its state) instead of loading the ORM row to change two columns.
_RECORD_HANDLE = (
    update(SimulationJobRow)
    .where(
        SimulationJobRow.job_id == bindparam("key_job_id"),
        SimulationJobRow.runner_handle == bindparam("expected_handle"),
    )
    .values(runner_handle=bindparam("handle"), runner_started_at=bindparam("started_at"))
)


def record_runner_handle(
    session: Session, job_id: str, expected: str, handle: str, started_at: float
) -> None:
    """Set the runner's handle and start time if the job's handle is still `expected`."""
    params = {"key_job_id": job_id, "expected_handle": expected, "handle": handle, "started_at": started_at}
    execute_in_transaction(session, _RECORD_HANDLE, params)


# --- new jobs and admissions without the ORM (a batch creates and admits hundreds of jobs) ----------------

_NEW_JOB_COLUMNS = (
    "job_id",
    "arn",
    "account_id",
    "region",
    "status",
    "client_request_token",
    "request_fingerprint",
    "definition",
    "simulation_units",
    "batch_arn",
    "created_at",
    "last_updated_at",
    "simulation_time_millis",
    "desired",
    "restart_generation",
    "restart_acknowledged",
    "last_report_seq",
)
_INSERT_JOB = insert(SimulationJobRow).values(bound(*_NEW_JOB_COLUMNS))


def insert_job_row(session: Session, values: dict[str, Any]) -> None:
    """One prepared INSERT of a new job (`values` has exactly `_NEW_JOB_COLUMNS`)."""
    execute_in_transaction(session, _INSERT_JOB, values)


# What admission reads of a job, and the columns it may change (the ORM row, identity map and flush cost
# more than the admission itself).
_ADMISSION_KEYS = ("arn", "account_id", "region", "desired", "definition")
_ADMISSION_CHANGING = (
    "status",
    "failure_code",
    "failure_reason",
    "last_updated_at",
    "runner_handle",
    "run_id",
    "runner_token_hash",
    "work_dir",
    "access_key_id",
    "last_report_seq",
)
# PostgreSQL: locked until the admission commits (SQLite: the writer lock).
_ADMISSION_READ = _columns_of_one_job(_ADMISSION_KEYS + _ADMISSION_CHANGING).with_for_update()
_ADMISSION_PEEK = _columns_of_one_job(_ADMISSION_KEYS + _ADMISSION_CHANGING)
_ADMISSION_SAVE = _save_of_one_job(_ADMISSION_CHANGING)


class AdmissionJob:
    """The columns admission reads and may change, named as on SimulationJobRow (so `finish_job` and
    `plan_applications` apply to either)."""

    def __init__(self, job_id: str, row: Any):
        self.job_id = job_id
        for name, value in zip(_ADMISSION_KEYS + _ADMISSION_CHANGING, row, strict=True):
            setattr(self, name, value)


def peek_admission_job(connection: Session | Connection, job_id: str) -> AdmissionJob | None:
    """The same columns, read outside any transaction (a reader's statement) to prepare the run."""
    row = connection.execute(_ADMISSION_PEEK, {"job_id": job_id}).first()
    return AdmissionJob(job_id, row) if row is not None else None


def admission_job(session: Session, job_id: str) -> AdmissionJob | None:
    rows = execute_in_transaction(session, _ADMISSION_READ, {"job_id": job_id})
    return AdmissionJob(job_id, rows[0]) if rows else None


def save_admission(session: Session, job: AdmissionJob) -> None:
    """Write what admission decided (a started run, or the job failed): one UPDATE by primary key."""
    params = {name: getattr(job, name) for name in _ADMISSION_CHANGING}
    execute_in_transaction(session, _ADMISSION_SAVE, params | {"key_job_id": job.job_id})
