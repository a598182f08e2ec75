"""Keys the service mints for its own principals (a simulation job's applications, a robot's agent)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from openrobomaker.services.identities import Secret, register_minted_lookup
from openrobomaker.store import credentials as store


def mint(session, account_id: str, principal: str, prefix: str) -> tuple[str, str]:
    """A new key pair for `principal`, valid until revoked. Returns (access key id, secret)."""
    key = new_key(prefix)
    store_key(session, account_id, principal, key)
    return key


def new_key(prefix: str) -> tuple[str, str]:
    """A key pair not stored yet (`store_key` makes it valid): (access key id, secret)."""
    return prefix + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


def store_key(session, account_id: str, principal: str, key: tuple[str, str]) -> None:
    # One prepared INSERT, written at once (not at the ORM's flush): every job run mints a key.
    store.insert_minted_key(session, key[0], key[1], account_id, principal, time.time())


def revoke(session, principal: str) -> None:
    """Every unrevoked key of `principal` stops working (one prepared UPDATE: every job end revokes)."""
    store.revoke_minted_keys(session, principal, time.time())


def _lookup(platform: Any, access_key_id: str) -> Secret | None:
    with platform.db.read() as session:
        row = store.find_active(session, access_key_id)
        if row is None:
            return None
        return Secret(row.access_key_id, row.secret_access_key, row.account_id, None, row.principal)


register_minted_lookup(_lookup)
