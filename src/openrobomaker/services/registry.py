"""Which service function carries out which API operation.

Each resource module registers its operations by their model names; the protocol layer dispatches by name
and so never needs to know what a robot is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openrobomaker.services.context import RequestContext
from openrobomaker.services.errors import NotAvailableYet

Handler = Callable[["Any", RequestContext, dict[str, Any]], dict[str, Any] | None]

_HANDLERS: dict[str, Handler] = {}
# resource type in an ARN ("robot-application") -> function(platform, ctx, arn) telling if it exists
_RESOURCE_LOOKUPS: dict[str, Callable[[Any, RequestContext, str], bool]] = {}


def operation(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in _HANDLERS:
            raise RuntimeError(f"{name} registered twice")
        _HANDLERS[name] = handler
        return handler

    return register


def taggable(resource_type: str) -> Callable:
    def register(lookup: Callable[[Any, RequestContext, str], bool]) -> Callable:
        _RESOURCE_LOOKUPS[resource_type] = lookup
        return lookup

    return register


def handler_for(name: str) -> Handler | None:
    _load_service_modules()
    return _HANDLERS.get(name)


def implemented_operations() -> set[str]:
    _load_service_modules()
    return set(_HANDLERS)


def resource_exists(platform: Any, ctx: RequestContext, resource_type: str, arn: str) -> bool:
    _load_service_modules()
    lookup = _RESOURCE_LOOKUPS.get(resource_type)
    return lookup is not None and lookup(platform, ctx, arn)


def dispatch(
    platform: Any, ctx: RequestContext, operation_name: str, params: dict[str, Any]
) -> dict[str, Any]:
    handler = handler_for(operation_name)
    if handler is None:
        raise NotAvailableYet(operation_name)
    return handler(platform, ctx, params) or {}


_loaded = False


def _load_service_modules() -> None:
    global _loaded
    if _loaded:
        return
    import openrobomaker.services.catalog  # noqa: F401  (imports every resource module)

    _loaded = True
