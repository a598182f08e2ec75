"""Tags on every taggable resource (spec §5): at most 50, key 1–128, value 0–256, `aws:` reserved."""

from __future__ import annotations

from typing import Any

from openrobomaker.services.arns import owned_arn
from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import InvalidParameter, ResourceNotFound
from openrobomaker.services.registry import operation, resource_exists
from openrobomaker.store import tags as store

MAX_TAGS = 50


def checked_tags(tags: dict[str, str], field: str = "tags") -> dict[str, str]:
    """Rules the shape constraints do not carry; the count is checked again after a merge."""
    for key in tags:
        if key.lower().startswith("aws:"):
            raise InvalidParameter(f"{field}.{key}: keys starting with 'aws:' are reserved")
    if len(tags) > MAX_TAGS:
        raise InvalidParameter(f"{field}: a resource can have at most {MAX_TAGS} tags")
    return dict(tags)


def store_tags(session, arn: str, tags: dict[str, str]) -> None:
    if tags:
        store.put_tags(session, arn, tags)


def load_tags(session, arn: str) -> dict[str, str]:
    return store.get_tags(session, arn)


def drop_tags(session, arn: str) -> None:
    store.drop_all_tags(session, arn)


def _require_resource(platform: Any, ctx: RequestContext, arn: str) -> None:
    parsed = owned_arn(ctx, arn, None, "resourceArn")
    if not resource_exists(platform, ctx, parsed.resource_type, arn):
        raise ResourceNotFound(f"resourceArn: resource {arn} not found")


@operation("TagResource")
def tag_resource(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict:
    arn = params["resourceArn"]
    tags = checked_tags(params["tags"])
    _require_resource(platform, ctx, arn)
    with platform.db.transaction() as session:
        merged = {**store.get_tags(session, arn), **tags}
        if len(merged) > MAX_TAGS:
            raise InvalidParameter(
                f"tags: a resource can have at most {MAX_TAGS} tags ({len(merged)} after this change)"
            )
        store.put_tags(session, arn, tags)
    return {}


@operation("UntagResource")
def untag_resource(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict:
    arn = params["resourceArn"]
    _require_resource(platform, ctx, arn)
    with platform.db.transaction() as session:
        store.remove_tags(session, arn, list(params["tagKeys"]))
    return {}


@operation("ListTagsForResource")
def list_tags_for_resource(platform: Any, ctx: RequestContext, params: dict[str, Any]) -> dict:
    arn = params["resourceArn"]
    _require_resource(platform, ctx, arn)
    with platform.db.read() as session:
        return {"tags": store.get_tags(session, arn)}
