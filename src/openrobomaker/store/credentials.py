"""Credentials the service mints: one key per simulation job run (apps call the API as their account)
and one per robot (the agent). Secrets are stored as given to the holder, since SigV4 needs them."""

from __future__ import annotations

from sqlalchemy import Float, String, bindparam, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from openrobomaker.store.base import Base
from openrobomaker.store.db import bound, execute_in_transaction


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


# --- minting and revoking: prepared statements (every job run mints a key and every job end revokes it) ---

_MINT_KEY = insert(MintedCredentialRow).values(
    bound("access_key_id", "secret_access_key", "account_id", "principal", "created_at")
)
_REVOKE_KEYS = (
    update(MintedCredentialRow)
    .where(
        MintedCredentialRow.principal == bindparam("key_principal"), MintedCredentialRow.revoked_at.is_(None)
    )
    .values(revoked_at=bindparam("revoked_at"))
)


def insert_minted_key(
    session: Session, access_key_id: str, secret: str, account_id: str, principal: str, created_at: float
) -> None:
    params = {
        "access_key_id": access_key_id,
        "secret_access_key": secret,
        "account_id": account_id,
        "principal": principal,
        "created_at": created_at,
    }
    execute_in_transaction(session, _MINT_KEY, params)


def revoke_minted_keys(session: Session, principal: str, when: float) -> None:
    execute_in_transaction(session, _REVOKE_KEYS, {"key_principal": principal, "revoked_at": when})
