"""Fleets (spec §4.3): a named group of robots that deployment jobs target."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, String, bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base


class FleetRow(Base):
    __tablename__ = "fleets"

    arn: Mapped[str] = mapped_column(String(1224), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    account_id: Mapped[str] = mapped_column(String(12), index=True)
    region: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


def fleet_by_arn(session: Session, arn: str) -> FleetRow | None:
    return session.get(FleetRow, arn)


def count_fleets(session: Session, account_id: str, region: str) -> int:
    query = select(func.count()).select_from(FleetRow)
    return session.scalar(query.where(FleetRow.account_id == account_id, FleetRow.region == region)) or 0


def list_fleets(session: Session, account_id: str, region: str, name: str | None) -> list[FleetRow]:
    query = select(FleetRow).where(FleetRow.account_id == account_id, FleetRow.region == region)
    if name is not None:
        query = query.where(FleetRow.name == name)
    return list(session.scalars(query.order_by(FleetRow.created_at, FleetRow.arn)))


def fleet_arns_named(session: Session, account_id: str, region: str, name: str) -> list[str]:
    return [fleet.arn for fleet in list_fleets(session, account_id, region, name)]


# ListDeploymentJobs / ListRobots by fleetName: compiled once by `Database.reader()`.
_ARNS_NAMED = (
    select(FleetRow.arn)
    .where(
        FleetRow.account_id == bindparam("account_id"),
        FleetRow.region == bindparam("region"),
        FleetRow.name == bindparam("name"),
    )
    .order_by(FleetRow.created_at, FleetRow.arn)
)


def arns_named(reader: Connection | Any, account_id: str, region: str, name: str) -> list[str]:
    """`fleet_arns_named` on a `Database.reader()`."""
    params = {"account_id": account_id, "region": region, "name": name}
    return [row[0] for row in reader.execute(_ARNS_NAMED, params)]
