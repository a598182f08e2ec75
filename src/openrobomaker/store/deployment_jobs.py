"""Deployment jobs (spec §4.4–4.7) and one row per robot a job deploys to.

The job row is what the user asked for; the robot deployment rows are the rollout plan (each robot's wave)
and what each robot's agent reported. The rollout controller reads and writes only these rows, so a
control-plane restart resumes a rollout exactly where it was.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base
from openrobomaker.store.db import execute_in_transaction, statement_per_flags
from openrobomaker.store.robots import RobotRow

ACTIVE_STATUSES = ("Pending", "Preparing", "InProgress")
TERMINAL_STATUSES = ("Failed", "Succeeded", "Canceled")

# Robot deployment states (RobotStatus values): not started, running on the robot, ended.
WAITING = "PendingNewDeployment"
DEPLOYING = "Deploying"
ROBOT_ENDED = ("InSync", "Failed", "NoResponse")


class DeploymentJobRow(Base):
    __tablename__ = "deployment_jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1224), unique=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    region: Mapped[str] = mapped_column(String(64))
    fleet_arn: Mapped[str] = mapped_column(String(1224), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    client_request_token: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    # deploymentApplicationConfigs, deploymentConfig (with defaults) and, under "_app", the resolved
    # application version (name, arn, version, suite, sources per architecture with their ETags)
    definition: Mapped[dict] = mapped_column(JSON)
    is_sync: Mapped[bool] = mapped_column(Boolean, default=False)
    wave_size: Mapped[int] = mapped_column(Integer)


class RobotDeploymentRow(Base):
    __tablename__ = "robot_deployments"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    robot_arn: Mapped[str] = mapped_column(String(1224), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), index=True)
    # the robot's status before this deployment, restored if the robot never gets to start it
    previous_robot_status: Mapped[str] = mapped_column(String(32))
    deployment_start_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    deployment_finish_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the agent's report sequence: a replayed or late report never moves a robot backwards
    last_report_seq: Mapped[int] = mapped_column(Integer, default=-1)
    last_report_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def job_by_arn(session: Session, arn: str) -> DeploymentJobRow | None:
    return session.scalars(select(DeploymentJobRow).where(DeploymentJobRow.arn == arn)).one_or_none()


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> DeploymentJobRow | None:
    query = select(DeploymentJobRow).where(DeploymentJobRow.job_id == job_id)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def job_by_token(session: Session, account_id: str, region: str, token: str) -> DeploymentJobRow | None:
    return session.scalars(
        select(DeploymentJobRow).where(
            DeploymentJobRow.account_id == account_id,
            DeploymentJobRow.region == region,
            DeploymentJobRow.client_request_token == token,
        )
    ).first()


def active_job_for_fleet(session: Session, fleet_arn: str) -> DeploymentJobRow | None:
    return session.scalars(
        select(DeploymentJobRow).where(
            DeploymentJobRow.fleet_arn == fleet_arn, DeploymentJobRow.status.in_(ACTIVE_STATUSES)
        )
    ).first()


def latest_job_for_fleet(session: Session, fleet_arn: str) -> DeploymentJobRow | None:
    return session.scalars(
        select(DeploymentJobRow)
        .where(DeploymentJobRow.fleet_arn == fleet_arn)
        .order_by(DeploymentJobRow.created_at.desc(), DeploymentJobRow.job_id.desc())
        .limit(1)
    ).first()


def count_active(session: Session, account_id: str, region: str) -> int:
    query = select(func.count()).select_from(DeploymentJobRow)
    query = query.where(
        DeploymentJobRow.account_id == account_id,
        DeploymentJobRow.region == region,
        DeploymentJobRow.status.in_(ACTIVE_STATUSES),
    )
    return session.scalar(query) or 0


def robot_deployments(session: Session, job_id: str) -> list[RobotDeploymentRow]:
    query = select(RobotDeploymentRow).where(RobotDeploymentRow.job_id == job_id)
    return list(session.scalars(query.order_by(RobotDeploymentRow.wave, RobotDeploymentRow.robot_arn)))


def robot_architectures(session: Session, job_id: str) -> list[tuple[str, str]]:
    """(name, architecture) of each robot the job deploys to: flat columns, no ORM objects, so that
    preparing a job of hundreds of robots neither builds nor later flush-checks hundreds of rows."""
    query = (
        select(RobotRow.name, RobotRow.architecture)
        .join(RobotDeploymentRow, RobotDeploymentRow.robot_arn == RobotRow.arn)
        .where(RobotDeploymentRow.job_id == job_id)
    )
    return [(row[0], row[1]) for row in session.execute(query)]


def next_wave_arns(session: Session, job_id: str) -> tuple[int | None, list[str]]:
    """The lowest wave of the job that has waiting robots, and those robots' ARNs (flat, no ORM)."""
    waiting = (RobotDeploymentRow.job_id == job_id, RobotDeploymentRow.status == WAITING)
    wave = session.scalar(select(func.min(RobotDeploymentRow.wave)).where(*waiting))
    if wave is None:
        return None, []
    query = select(RobotDeploymentRow.robot_arn).where(*waiting, RobotDeploymentRow.wave == wave)
    return wave, list(session.scalars(query.order_by(RobotDeploymentRow.robot_arn)))


def start_wave(session: Session, job_id: str, wave: int, robot_arns: list[str], now: float) -> None:
    """Waiting -> Deploying for the wave's robot deployments and their robots, as two UPDATEs (not one
    ORM object per robot to load and flush). Conditional on Waiting, as `next_wave_arns` read them in the
    same transaction (the job row is locked): nothing starts twice."""
    session.execute(
        update(RobotDeploymentRow)
        .where(
            RobotDeploymentRow.job_id == job_id,
            RobotDeploymentRow.wave == wave,
            RobotDeploymentRow.status == WAITING,
        )
        .values(status=DEPLOYING, deployment_start_time=now, progress={})
        .execution_options(synchronize_session=False)
    )
    if robot_arns:
        # locked in ARN order first (PostgreSQL; SQLite ignores it), the order reports lock robots in:
        # an UPDATE ... IN locks in scan order, which could deadlock with a report batch
        session.execute(
            select(RobotRow.arn).where(RobotRow.arn.in_(robot_arns)).order_by(RobotRow.arn).with_for_update()
        ).all()
        session.execute(
            update(RobotRow)
            .where(RobotRow.arn.in_(robot_arns))
            .values(status=DEPLOYING)
            .execution_options(synchronize_session=False)
        )


def robot_deployment(session: Session, job_id: str, robot_arn: str) -> RobotDeploymentRow | None:
    return session.get(RobotDeploymentRow, (job_id, robot_arn))


def job_progress(session: Session, job_id: str) -> tuple[str | None, dict[tuple[str, str | None], int]]:
    """The job's status and its robot deployments counted by (status, failure code): a cheap look at a
    rollout, without loading its rows."""
    status = session.scalar(select(DeploymentJobRow.status).where(DeploymentJobRow.job_id == job_id))
    query = (
        select(RobotDeploymentRow.status, RobotDeploymentRow.failure_code, func.count())
        .where(RobotDeploymentRow.job_id == job_id)
        .group_by(RobotDeploymentRow.status, RobotDeploymentRow.failure_code)
    )
    return status, {(row[0], row[1]): row[2] for row in session.execute(query)}


def deploying_for_robots(session: Session, robot_arns: list[str]) -> list[RobotDeploymentRow]:
    if not robot_arns:
        return []
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.robot_arn.in_(robot_arns), RobotDeploymentRow.status == DEPLOYING
    )
    return list(session.scalars(query))


def unfinished_for_robot(session: Session, robot_arn: str) -> list[RobotDeploymentRow]:
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.robot_arn == robot_arn, RobotDeploymentRow.status.in_((WAITING, DEPLOYING))
    )
    return list(session.scalars(query))


# --- hot reads (the agent channel's polls, the rollout controller's passes) ------------------------------
# Module-level statements with `bindparam()`s and no IN lists: `Database.reader()` compiles each once and
# runs it straight on sqlite3, without a session (an ORM read session cost more than the reads in it).

_ACTIVE_IDS = (
    select(DeploymentJobRow.job_id)
    .where(or_(*(DeploymentJobRow.status == status for status in ACTIVE_STATUSES)))
    .order_by(DeploymentJobRow.created_at)
)
_STATUS_AND_DEFINITION = select(DeploymentJobRow.status, DeploymentJobRow.definition).where(
    DeploymentJobRow.job_id == bindparam("job_id")
)
_STATUS = select(DeploymentJobRow.status).where(DeploymentJobRow.job_id == bindparam("job_id"))
_COUNTS = (
    select(RobotDeploymentRow.status, RobotDeploymentRow.failure_code, func.count().label("n"))
    .where(RobotDeploymentRow.job_id == bindparam("job_id"))
    .group_by(RobotDeploymentRow.status, RobotDeploymentRow.failure_code)
)
_DEPLOYING_STARTS = select(
    RobotDeploymentRow.job_id, RobotDeploymentRow.robot_arn, RobotDeploymentRow.deployment_start_time
).where(RobotDeploymentRow.status == DEPLOYING)
_DEPLOYING_ON_ROBOT = select(
    RobotDeploymentRow.job_id, RobotDeploymentRow.deployment_start_time, RobotDeploymentRow.last_report_seq
).where(RobotDeploymentRow.robot_arn == bindparam("robot_arn"), RobotDeploymentRow.status == DEPLOYING)
_JOB_FOR_AGENT = select(DeploymentJobRow.job_id, DeploymentJobRow.arn, DeploymentJobRow.definition).where(
    DeploymentJobRow.job_id == bindparam("job_id")
)


def _summaries_statement(*, by_status: bool, by_fleet: bool) -> Any:
    query = select(
        DeploymentJobRow.job_id,
        DeploymentJobRow.arn,
        DeploymentJobRow.fleet_arn,
        DeploymentJobRow.status,
        DeploymentJobRow.definition,
        DeploymentJobRow.failure_reason,
        DeploymentJobRow.failure_code,
        DeploymentJobRow.created_at,
    ).where(
        DeploymentJobRow.account_id == bindparam("account_id"), DeploymentJobRow.region == bindparam("region")
    )
    if by_status:
        query = query.where(DeploymentJobRow.status == bindparam("status"))
    if by_fleet:
        query = query.where(DeploymentJobRow.fleet_arn == bindparam("fleet_arn"))
    return query.order_by(DeploymentJobRow.created_at.desc(), DeploymentJobRow.job_id)


_SUMMARIES = statement_per_flags(_summaries_statement, "by_status", "by_fleet")


def job_summaries(
    reader: Connection | Any,
    account_id: str,
    region: str,
    *,
    status: str | None,
    fleet_arns: list[str] | None,
) -> list[Any]:
    """`list_jobs` as flat rows (the summary columns) on a `Database.reader()`, newest first; a fleet
    filter runs one prepared read per fleet instead of an IN list, which could not be prepared."""
    params = {"account_id": account_id, "region": region}
    if status is not None:
        params["status"] = status
    if fleet_arns is None:
        return list(reader.execute(_SUMMARIES[(status is not None, False)], params))
    statement = _SUMMARIES[(status is not None, True)]
    rows = [
        row
        for arn in dict.fromkeys(fleet_arns)
        for row in reader.execute(statement, params | {"fleet_arn": arn})
    ]
    if len(fleet_arns) > 1:
        rows.sort(key=lambda row: row.job_id)
        rows.sort(key=lambda row: row.created_at, reverse=True)
    return rows


def active_ids(reader: Connection | Any) -> list[str]:
    """The active jobs, oldest first."""
    return [row[0] for row in reader.execute(_ACTIVE_IDS)]


def status_and_definition(reader: Connection | Any, job_id: str) -> tuple[str | None, dict | None]:
    row = reader.execute(_STATUS_AND_DEFINITION, {"job_id": job_id}).first()
    return (row[0], row[1]) if row is not None else (None, None)


def job_progress_of(
    reader: Connection | Any, job_id: str
) -> tuple[str | None, dict[tuple[str, str | None], int]]:
    """`job_progress` on a `Database.reader()`: two prepared reads."""
    status = reader.execute(_STATUS, {"job_id": job_id}).scalar()
    counts = {(row[0], row[1]): row[2] for row in reader.execute(_COUNTS, {"job_id": job_id})}
    return status, counts


def deploying_starts_of(reader: Connection | Any) -> list[tuple[str, str, float | None]]:
    """(job id, robot ARN, start time) of every robot deployment in progress."""
    return [(row[0], row[1], row[2]) for row in reader.execute(_DEPLOYING_STARTS)]


def deploying_on_robot(reader: Connection | Any, robot_arn: str) -> list[Any]:
    """(job_id, deployment_start_time, last_report_seq) of the robot's deployments in progress."""
    return list(reader.execute(_DEPLOYING_ON_ROBOT, {"robot_arn": robot_arn}))


def job_for_agent(reader: Connection | Any, job_id: str) -> Any | None:
    """(job_id, arn, definition) of a job."""
    return reader.execute(_JOB_FOR_AGENT, {"job_id": job_id}).first()


# --- agent reports: reads and writes inside the report transaction, without the ORM -----------------------
# A report batch is a few reads and updates by primary key. Through the ORM (loading, identity map, flush)
# it cost ~3 ms of CPU per transaction; these statements are compiled once and, on SQLite, run on the
# transaction's own sqlite3 connection (elsewhere through SQLAlchemy Core on the same transaction).

_REPORT_ROBOT = (
    select(RobotRow.account_id, RobotRow.status, RobotRow.last_deployment_job, RobotRow.agent_seen_at)
    .where(RobotRow.arn == bindparam("arn"))
    .with_for_update()  # PostgreSQL: the robot stays locked until the report commits (SQLite: no-op)
)
_REPORT_JOB = select(DeploymentJobRow.arn).where(DeploymentJobRow.job_id == bindparam("job_id"))
_REPORT_ROW = select(
    RobotDeploymentRow.status, RobotDeploymentRow.last_report_seq, RobotDeploymentRow.progress
).where(
    RobotDeploymentRow.job_id == bindparam("job_id"), RobotDeploymentRow.robot_arn == bindparam("robot_arn")
)
_SAVE_ROBOT = (
    update(RobotRow)
    .where(RobotRow.arn == bindparam("key_arn"))
    .values(status=bindparam("status"), agent_seen_at=bindparam("agent_seen_at"))
)


def _save_row_statement(*, finished: bool):
    """The UPDATE of a robot deployment a report changed; the failure and finish columns only when it ended."""
    values = {
        "status": bindparam("status"),
        "last_report_seq": bindparam("last_report_seq"),
        "last_report_at": bindparam("last_report_at"),
        "progress": bindparam("progress", type_=JSON),
    }
    if finished:
        values |= {
            "failure_code": bindparam("failure_code"),
            "failure_reason": bindparam("failure_reason"),
            "deployment_finish_time": bindparam("deployment_finish_time"),
        }
    return (
        update(RobotDeploymentRow)
        .where(
            RobotDeploymentRow.job_id == bindparam("key_job_id"),
            RobotDeploymentRow.robot_arn == bindparam("key_robot_arn"),
        )
        .values(**values)
    )


_SAVE_ROW = _save_row_statement(finished=True)
_SAVE_PROGRESS = _save_row_statement(finished=False)
_TOUCH_AGENT = (
    update(RobotRow).where(RobotRow.arn == bindparam("key_arn")).values(agent_seen_at=bindparam("seen_at"))
)


class ReportRobot:
    """The columns of a robot a report reads and may change."""

    def __init__(self, arn: str, row: list[Any]):
        self.arn = arn
        self.account_id, self.status, self.last_deployment_job, self.agent_seen_at = row
        self.saved = (self.status, self.agent_seen_at)


class ReportRow:
    """The columns of a robot deployment a report reads and may change."""

    def __init__(self, job_id: str, robot_arn: str, row: list[Any]):
        self.job_id, self.robot_arn = job_id, robot_arn
        self.status, self.last_report_seq, self.progress = row
        self.last_report_at = self.failure_code = self.failure_reason = self.deployment_finish_time = None
        self.changed = False


def report_robot(session: Session, arn: str) -> ReportRobot | None:
    rows = execute_in_transaction(session, _REPORT_ROBOT, {"arn": arn})
    return ReportRobot(arn, rows[0]) if rows else None


def report_job_arn(session: Session, job_id: str) -> str | None:
    rows = execute_in_transaction(session, _REPORT_JOB, {"job_id": job_id})
    return rows[0][0] if rows else None


def report_row(session: Session, job_id: str, robot_arn: str) -> ReportRow | None:
    rows = execute_in_transaction(session, _REPORT_ROW, {"job_id": job_id, "robot_arn": robot_arn})
    return ReportRow(job_id, robot_arn, rows[0]) if rows else None


def save_report_robot(session: Session, robot: ReportRobot) -> None:
    if (robot.status, robot.agent_seen_at) != robot.saved:
        params = {"key_arn": robot.arn, "status": robot.status, "agent_seen_at": robot.agent_seen_at}
        execute_in_transaction(session, _SAVE_ROBOT, params)
        robot.saved = (robot.status, robot.agent_seen_at)


def save_report_row(session: Session, row: ReportRow, finished_row: bool) -> None:
    """Write a changed robot deployment. The failure and finish columns are written only when the report
    ended the deployment (`finished_row`); otherwise they keep what the store has."""
    if not row.changed:
        return
    params = {
        "key_job_id": row.job_id,
        "key_robot_arn": row.robot_arn,
        "status": row.status,
        "last_report_seq": row.last_report_seq,
        "last_report_at": row.last_report_at,
        "progress": row.progress,
    }
    if finished_row:
        params |= {
            "failure_code": row.failure_code,
            "failure_reason": row.failure_reason,
            "deployment_finish_time": row.deployment_finish_time,
        }
        execute_in_transaction(session, _SAVE_ROW, params)
    else:
        execute_in_transaction(session, _SAVE_PROGRESS, params)
    row.changed = False


def touch_agents(session: Session, arns: list[str], seen_at: float) -> None:
    """Record that these robots' agents were heard from (polls): one UPDATE by key each, no row loaded."""
    for arn in arns:
        execute_in_transaction(session, _TOUCH_AGENT, {"key_arn": arn, "seen_at": seen_at})
