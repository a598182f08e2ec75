"""Opaque nextToken values for list operations."""

from __future__ import annotations

import base64
import json

from openrobomaker.services.errors import InvalidParameter


def encode_token(offset: int, scope: str) -> str:
    raw = json.dumps({"o": offset, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str | None, scope: str) -> int:
    """Offset encoded in `token`; a token from another list or a garbled one is an InvalidParameter."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        if data["s"] != scope or offset < 0:
            raise ValueError
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InvalidParameter("nextToken: the token is not valid for this request") from exc
    return offset


def page(items: list, offset: int, limit: int, scope: str) -> tuple[list, str | None]:
    """Cut a fetched window of limit+1 items into a page and the token of the next one."""
    if len(items) > limit:
        return items[:limit], encode_token(offset + limit, scope)
    return items, None
