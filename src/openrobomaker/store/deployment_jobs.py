"""Deployment jobs (spec §4.4–4.7) and one row per robot a job deploys to.

The job row is what the user asked for; the robot deployment rows are the rollout plan (each robot's wave)
and what each robot's agent reported. The rollout controller reads and writes only these rows, so a
control-plane restart resumes a rollout exactly where it was.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base

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


def jobs_by_ids(session: Session, job_ids: list[str]) -> list[DeploymentJobRow]:
    if not job_ids:
        return []
    return list(session.scalars(select(DeploymentJobRow).where(DeploymentJobRow.job_id.in_(job_ids))))


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


def list_jobs(
    session: Session, account_id: str, region: str, *, status: str | None, fleet_arns: list[str] | None
) -> list[DeploymentJobRow]:
    query = select(DeploymentJobRow).where(
        DeploymentJobRow.account_id == account_id, DeploymentJobRow.region == region
    )
    if status is not None:
        query = query.where(DeploymentJobRow.status == status)
    if fleet_arns is not None:
        query = query.where(DeploymentJobRow.fleet_arn.in_(fleet_arns))
    return list(session.scalars(query.order_by(DeploymentJobRow.created_at.desc(), DeploymentJobRow.job_id)))


def active_job_ids(session: Session) -> list[str]:
    query = select(DeploymentJobRow.job_id).where(DeploymentJobRow.status.in_(ACTIVE_STATUSES))
    return list(session.scalars(query.order_by(DeploymentJobRow.created_at)))


def robot_deployments(session: Session, job_id: str) -> list[RobotDeploymentRow]:
    query = select(RobotDeploymentRow).where(RobotDeploymentRow.job_id == job_id)
    return list(session.scalars(query.order_by(RobotDeploymentRow.wave, RobotDeploymentRow.robot_arn)))


def robot_deployments_of(
    session: Session, job_ids: list[str], robot_arns: list[str]
) -> list[RobotDeploymentRow]:
    """The robot deployments of any of these jobs to any of these robots."""
    if not job_ids or not robot_arns:
        return []
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.job_id.in_(job_ids), RobotDeploymentRow.robot_arn.in_(robot_arns)
    )
    return list(session.scalars(query.order_by(RobotDeploymentRow.job_id, RobotDeploymentRow.robot_arn)))


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


def deploying_starts(session: Session) -> list[tuple[str, str, float | None]]:
    """(job id, robot ARN, start time) of every robot deployment in progress."""
    query = select(
        RobotDeploymentRow.job_id, RobotDeploymentRow.robot_arn, RobotDeploymentRow.deployment_start_time
    ).where(RobotDeploymentRow.status == DEPLOYING)
    return [(row[0], row[1], row[2]) for row in session.execute(query)]


def deploying_for_robots(session: Session, robot_arns: list[str]) -> list[RobotDeploymentRow]:
    if not robot_arns:
        return []
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.robot_arn.in_(robot_arns), RobotDeploymentRow.status == DEPLOYING
    )
    return list(session.scalars(query))


def deploying_for_robot(session: Session, robot_arn: str) -> list[RobotDeploymentRow]:
    """Robot deployments started on this robot and not ended yet (normally at most one)."""
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.robot_arn == robot_arn, RobotDeploymentRow.status == DEPLOYING
    )
    return list(session.scalars(query))


def unfinished_for_robot(session: Session, robot_arn: str) -> list[RobotDeploymentRow]:
    query = select(RobotDeploymentRow).where(
        RobotDeploymentRow.robot_arn == robot_arn, RobotDeploymentRow.status.in_((WAITING, DEPLOYING))
    )
    return list(session.scalars(query))
