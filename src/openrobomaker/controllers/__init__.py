"""Level-triggered reconcile loops: read what the store says should be, compare with what is, act.

Every step is idempotent, so a control-plane crash or restart loses nothing and double-starts nothing.
Each module of this package that defines `build(platform) -> Controller` contributes a loop; each module
of `openrobomaker.api` that defines `extra_routes(platform) -> list[Route]` contributes HTTP endpoints
(runner and agent channels).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def _modules(package_name: str):
    package = importlib.import_module(package_name)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        yield importlib.import_module(f"{package_name}.{info.name}")


def build_controllers(platform: Any) -> tuple[list, list]:
    from openrobomaker.executors.local import LocalExecutor

    platform.signals.setdefault("executor", LocalExecutor())
    controllers = [m.build(platform) for m in _modules("openrobomaker.controllers") if hasattr(m, "build")]
    routes = [
        r
        for m in _modules("openrobomaker.api")
        if hasattr(m, "extra_routes")
        for r in m.extra_routes(platform)
    ]
    return routes, controllers
