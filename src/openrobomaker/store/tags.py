"""Tags of every taggable resource, keyed by ARN (the ARN carries account and region)."""

from __future__ import annotations

from sqlalchemy import String, bindparam, delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base


class TagRow(Base):
    __tablename__ = "tags"

    resource_arn: Mapped[str] = mapped_column(String(1224), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


_TAGS = select(TagRow.key, TagRow.value).where(TagRow.resource_arn == bindparam("arn")).order_by(TagRow.key)


def get_tags(session: Session | Connection, arn: str) -> dict[str, str]:
    return {key: value for key, value in session.execute(_TAGS, {"arn": arn})}


def put_tags(session: Session, arn: str, tags: dict[str, str]) -> None:
    existing = {row.key: row for row in session.scalars(select(TagRow).where(TagRow.resource_arn == arn))}
    for key, value in tags.items():
        if key in existing:
            existing[key].value = value
        else:
            session.add(TagRow(resource_arn=arn, key=key, value=value))


def remove_tags(session: Session, arn: str, keys: list[str]) -> None:
    session.execute(delete(TagRow).where(TagRow.resource_arn == arn, TagRow.key.in_(keys)))


def drop_all_tags(session: Session, arn: str) -> None:
    session.execute(delete(TagRow).where(TagRow.resource_arn == arn))
