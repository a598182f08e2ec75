"""Credentials the service mints: one key per simulation job run (apps call the API as their account)
and one per robot (the agent). Secrets are stored as given to the holder, since SigV4 needs them."""

from __future__ import annotations

from sqlalchemy import Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base


class MintedCredentialRow(Base):
    __tablename__ = "minted_credentials"

    access_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret_access_key: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str] = mapped_column(String(12))
    principal: Mapped[str] = mapped_column(String(1300), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def find_active(session: Session, access_key_id: str) -> MintedCredentialRow | None:
    return session.scalars(
        select(MintedCredentialRow).where(
            MintedCredentialRow.access_key_id == access_key_id, MintedCredentialRow.revoked_at.is_(None)
        )
    ).one_or_none()


def revoke_for_principal(session: Session, principal: str, when: float) -> None:
    for row in session.scalars(
        select(MintedCredentialRow).where(
            MintedCredentialRow.principal == principal, MintedCredentialRow.revoked_at.is_(None)
        )
    ):
        row.revoked_at = when
