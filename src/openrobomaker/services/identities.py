"""Who may sign requests: configured keys (per account) and keys the service mints for jobs and robots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Secret:
    access_key_id: str
    secret_access_key: str
    account_id: str
    session_token: str | None = None
    principal: str | None = None


_minted_lookups: list = []


def register_minted_lookup(lookup) -> None:
    """Resource modules that mint credentials (jobs, robots) add a lookup function(platform, key_id)."""
    _minted_lookups.append(lookup)


def find_secret(platform: Any, access_key_id: str) -> Secret | None:
    for cred in platform.settings.credentials:
        if cred.access_key_id == access_key_id:
            return Secret(cred.access_key_id, cred.secret_access_key, cred.account_id, cred.session_token)
    for lookup in _minted_lookups:
        found = lookup(platform, access_key_id)
        if found is not None:
            return found
    return None
