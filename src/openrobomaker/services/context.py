"""Who is asking: every resource belongs to the account and region of the request that made it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    account_id: str
    region: str
    principal: str | None = None  # e.g. "job:<arn>" or "robot:<arn>" for credentials the service minted
    request_id: str = ""
    partition: str = "aws"
