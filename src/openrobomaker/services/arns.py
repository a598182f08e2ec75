"""ARNs and ids in RoboMaker's formats (spec §0)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import InvalidParameter, ResourceNotFound

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"

RESOURCE_TYPES = {
    "robot-application",
    "simulation-application",
    "simulation-job",
    "simulation-job-batch",
    "deployment-fleet",
    "robot",
    "deployment-job",
    "world",
    "world-export-job",
    "world-generation-job",
    "world-template",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def random_id(prefix: str, length: int = 12) -> str:
    """`sim-pql32v7pfjy6`: a prefix plus 12 characters of [0-9a-z], as the service minted them."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def build_arn(ctx: RequestContext, resource_type: str, *path: str) -> str:
    return f"arn:{ctx.partition}:robomaker:{ctx.region}:{ctx.account_id}:{resource_type}/{'/'.join(path)}"


@dataclass(frozen=True)
class ParsedArn:
    partition: str
    region: str
    account_id: str
    resource_type: str
    resource_path: tuple[str, ...]

    @property
    def resource_id(self) -> str:
        return self.resource_path[-1]


def parse_arn(arn: str, field: str = "arn") -> ParsedArn:
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "robomaker" or "/" not in parts[5]:
        raise InvalidParameter(f"{field}: {arn!r} is not a RoboMaker ARN")
    resource_type, *path = parts[5].split("/")
    if resource_type not in RESOURCE_TYPES or not all(path):
        raise InvalidParameter(f"{field}: {arn!r} is not a RoboMaker ARN")
    return ParsedArn(parts[1], parts[3], parts[4], resource_type, tuple(path))


def owned_arn(ctx: RequestContext, arn: str, resource_type: str | None, field: str) -> ParsedArn:
    """Parse an ARN the caller names; another account's or region's resource is simply not found."""
    parsed = parse_arn(arn, field)
    if resource_type is not None and parsed.resource_type != resource_type:
        raise InvalidParameter(f"{field}: {arn!r} is not a {resource_type} ARN")
    if parsed.account_id != ctx.account_id or parsed.region != ctx.region:
        raise ResourceNotFound(f"{field}: resource {arn} not found")
    return parsed
