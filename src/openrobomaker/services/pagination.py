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


def page_size(params: dict, default: int, maximum: int | None = None) -> int:
    """`maxResults` as a page size; the model sets no minimum, so botocore sends 0 or -1 as given."""
    size = params.get("maxResults")
    if size is None:
        return default
    if size < 1:
        raise InvalidParameter("maxResults: must be at least 1")
    return min(size, maximum) if maximum else size


def exact_filters(params: dict, allowed: set[str]) -> dict[str, str]:
    """Filters as {name: value}: exact match, one value per filter (as the model caps them)."""
    filters: dict[str, str] = {}
    for index, flt in enumerate(params.get("filters") or [], start=1):
        name = flt.get("name")
        if name not in allowed:
            raise InvalidParameter(
                f"filters.{index}.member.name: supported filters are {', '.join(sorted(allowed))}"
            )
        values = flt.get("values") or []
        if len(values) != 1:
            raise InvalidParameter(f"filters.{index}.member.values: give exactly one value")
        filters[name] = values[0]
    return filters


def paginate(
    params: dict, rows: list, scope: str, default: int, maximum: int | None = None
) -> tuple[list, str | None]:
    """One page of an already filtered list, and the token of the next page."""
    limit = page_size(params, default, maximum)
    offset = decode_token(params.get("nextToken"), scope)
    return page(rows[offset : offset + limit + 1], offset, limit, scope)


def filtered_scope(kind: str, filters: dict[str, str]) -> str:
    """What a nextToken is bound to: the list and its filters (a token from another query is refused)."""
    return f"{kind}:" + json.dumps(filters, sort_keys=True)


def paginate_filtered(
    params: dict, rows: list, kind: str, filters: dict[str, str], limit: int
) -> tuple[list, str | None]:
    return paginate(params, rows, filtered_scope(kind, filters), limit, limit)
