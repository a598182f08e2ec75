"""Keys the service mints for its own principals (a simulation job's applications, a robot's agent)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from openrobomaker.services.identities import Secret, register_minted_lookup
from openrobomaker.store import credentials as store


def mint(session, account_id: str, principal: str, prefix: str) -> tuple[str, str]:
    """A new key pair for `principal`, valid until revoked. Returns (access key id, secret)."""
    access_key_id = prefix + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    session.add(
        store.MintedCredentialRow(
            access_key_id=access_key_id,
            secret_access_key=secret,
            account_id=account_id,
            principal=principal,
            created_at=time.time(),
        )
    )
    return access_key_id, secret


def revoke(session, principal: str) -> None:
    store.revoke_for_principal(session, principal, time.time())


def _lookup(platform: Any, access_key_id: str) -> Secret | None:
    with platform.db.read() as session:
        row = store.find_active(session, access_key_id)
        if row is None:
            return None
        return Secret(row.access_key_id, row.secret_access_key, row.account_id, None, row.principal)


register_minted_lookup(_lookup)
