"""Robots (spec §4.2): one agent each, registered to at most one fleet."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, String, bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base


class RobotRow(Base):
    __tablename__ = "robots"

    arn: Mapped[str] = mapped_column(String(1224), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    region: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(16))
    greengrass_group_id: Mapped[str] = mapped_column(String(1224))
    fleet_arn: Mapped[str | None] = mapped_column(String(1224), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    last_deployment_job: Mapped[str | None] = mapped_column(String(1224), nullable=True)
    last_deployment_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # when the robot's agent last polled or reported: tells an offline robot from a slow one
    agent_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def robot_by_arn(session: Session, arn: str, *, for_update: bool = False) -> RobotRow | None:
    query = select(RobotRow).where(RobotRow.arn == arn)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def robots_by_arns(session: Session, arns: list[str], *, for_update: bool = False) -> list[RobotRow]:
    if not arns:
        return []
    query = select(RobotRow).where(RobotRow.arn.in_(arns))
    if for_update:
        query = query.order_by(RobotRow.arn).with_for_update()  # one lock order: no deadlocks
    return list(session.scalars(query))


def robot_named(session: Session, account_id: str, region: str, name: str) -> RobotRow | None:
    return session.scalars(
        select(RobotRow).where(
            RobotRow.account_id == account_id, RobotRow.region == region, RobotRow.name == name
        )
    ).first()


def robot_with_group(session: Session, account_id: str, region: str, group_id: str) -> RobotRow | None:
    return session.scalars(
        select(RobotRow).where(
            RobotRow.account_id == account_id,
            RobotRow.region == region,
            RobotRow.greengrass_group_id == group_id,
        )
    ).first()


def robots_in_fleet(session: Session, fleet_arn: str) -> list[RobotRow]:
    query = select(RobotRow).where(RobotRow.fleet_arn == fleet_arn)
    return list(session.scalars(query.order_by(RobotRow.created_at, RobotRow.arn)))


def list_robots(
    session: Session, account_id: str, region: str, *, status: str | None, fleet_arns: list[str] | None
) -> list[RobotRow]:
    query = select(RobotRow).where(RobotRow.account_id == account_id, RobotRow.region == region)
    if status is not None:
        query = query.where(RobotRow.status == status)
    if fleet_arns is not None:
        query = query.where(RobotRow.fleet_arn.in_(fleet_arns))
    return list(session.scalars(query.order_by(RobotRow.created_at, RobotRow.arn)))


# A hot read (every agent poll), compiled once by `Database.reader()`.
_FOR_AGENT = select(
    RobotRow.arn, RobotRow.account_id, RobotRow.status, RobotRow.architecture, RobotRow.agent_seen_at
).where(RobotRow.arn == bindparam("arn"))


def robot_for_agent(reader: Connection | Any, arn: str) -> Any | None:
    """(arn, account_id, status, architecture, agent_seen_at) of a robot, or None."""
    return reader.execute(_FOR_AGENT, {"arn": arn}).first()
