"""Robot and simulation applications and their versions."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    delete,
    select,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base
from openrobomaker.store.db import statement_per_flags

LATEST = "$LATEST"


class ApplicationRow(Base):
    __tablename__ = "applications"
    __table_args__ = (UniqueConstraint("account_id", "region", "kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "robot" | "simulation"
    name: Mapped[str] = mapped_column(String(255))
    arn: Mapped[str] = mapped_column(String(1224), unique=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # Numbers are never reused, even after a version is deleted (RoboMaker's rule).
    last_version_number: Mapped[int] = mapped_column(Integer, default=0)


class ApplicationVersionRow(Base):
    __tablename__ = "application_versions"
    __table_args__ = (UniqueConstraint("application_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(255))
    version_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision_id: Mapped[str] = mapped_column(String(40))
    last_updated_at: Mapped[float] = mapped_column(Float)
    # sources (with etags), software suites, renderingEngine, environment, imageDigest
    spec: Mapped[dict] = mapped_column(JSON)


def find_application(
    session: Session, account_id: str, region: str, kind: str, name: str
) -> ApplicationRow | None:
    return session.scalars(
        select(ApplicationRow).where(
            ApplicationRow.account_id == account_id,
            ApplicationRow.region == region,
            ApplicationRow.kind == kind,
            ApplicationRow.name == name,
        )
    ).one_or_none()


def application_by_arn(session: Session, arn: str, *, for_update: bool = False) -> ApplicationRow | None:
    """With for_update, the row stays locked until the transaction ends (version numbers, revisions)."""
    query = select(ApplicationRow).where(ApplicationRow.arn == arn)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def find_version(session: Session, application_id: int, version: str) -> ApplicationVersionRow | None:
    return session.scalars(
        select(ApplicationVersionRow).where(
            ApplicationVersionRow.application_id == application_id, ApplicationVersionRow.version == version
        )
    ).one_or_none()


def count_numbered_versions(session: Session, application_id: int) -> int:
    return len(
        session.scalars(
            select(ApplicationVersionRow.id).where(
                ApplicationVersionRow.application_id == application_id,
                ApplicationVersionRow.version_number.is_not(None),
            )
        ).all()
    )


def _list_statement(*, by_name: bool, all_versions: bool):
    query = (
        select(
            ApplicationRow.arn,
            ApplicationRow.name,
            ApplicationVersionRow.version,
            ApplicationVersionRow.last_updated_at,
            ApplicationVersionRow.spec,
        )
        .join(ApplicationVersionRow, ApplicationVersionRow.application_id == ApplicationRow.id)
        .where(
            ApplicationRow.account_id == bindparam("account_id"),
            ApplicationRow.region == bindparam("region"),
            ApplicationRow.kind == bindparam("kind"),
        )
    )
    if by_name:
        query = query.where(ApplicationRow.name == bindparam("name"))
    if not all_versions:
        query = query.where(ApplicationVersionRow.version == LATEST)
    return (
        query.order_by(
            ApplicationRow.name,
            ApplicationVersionRow.version_number.is_not(None),
            ApplicationVersionRow.version_number,
        )
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )


_LIST = statement_per_flags(_list_statement, "by_name", "all_versions")


def list_versions(
    session: Session | Connection,
    account_id: str,
    region: str,
    kind: str,
    *,
    name: str | None,
    all_versions: bool,
    offset: int,
    limit: int,
) -> list[Row]:
    """Summary columns of application versions, one flat row each (no ORM objects: a hot path)."""
    params = {"account_id": account_id, "region": region, "kind": kind, "offset": offset, "limit": limit}
    if name is not None:
        params["name"] = name
    return list(session.execute(_LIST[(name is not None, all_versions)], params).all())


def delete_application(session: Session, app_row: ApplicationRow) -> None:
    session.execute(delete(ApplicationVersionRow).where(ApplicationVersionRow.application_id == app_row.id))
    session.delete(app_row)


_DESCRIBE = (
    select(
        ApplicationRow.arn,
        ApplicationRow.name,
        ApplicationRow.account_id,
        ApplicationRow.region,
        ApplicationRow.kind,
        ApplicationVersionRow.version,
        ApplicationVersionRow.revision_id,
        ApplicationVersionRow.last_updated_at,
        ApplicationVersionRow.spec,
    )
    .join(ApplicationVersionRow, ApplicationVersionRow.application_id == ApplicationRow.id)
    .where(ApplicationRow.arn == bindparam("arn"), ApplicationVersionRow.version == bindparam("version"))
)
_EXISTS = select(ApplicationRow.account_id, ApplicationRow.region, ApplicationRow.kind).where(
    ApplicationRow.arn == bindparam("arn")
)


def describe_row(connection: Connection, arn: str, version: str) -> Row | None:
    """One application version with its application's columns, in one statement (the Describe path)."""
    return connection.execute(_DESCRIBE, {"arn": arn, "version": version}).first()


def application_identity(connection: Connection, arn: str) -> Row | None:
    return connection.execute(_EXISTS, {"arn": arn}).first()
