"""Assembles the control plane: platform (store, object store), API app, controllers; runs it under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from openrobomaker.api.app import build_app
from openrobomaker.config import Settings
from openrobomaker.objectstore import open_store
from openrobomaker.services.platform import Platform
from openrobomaker.store import Database

log = logging.getLogger("openrobomaker.server")

GC_GEN0_THRESHOLD = 10_000  # Python's default is 700 allocations


def build_platform(settings: Settings) -> Platform:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    db.migrate()
    objects = open_store(settings.resolved_object_store)
    return Platform(settings=settings, db=db, objects=objects)


def _control_plane_parts(platform: Platform) -> tuple[list, list[Any]]:
    """Extra HTTP routes (runner and agent channels) and background controllers, when installed."""
    try:
        from openrobomaker.controllers import build_controllers
    except ImportError:
        return [], []
    return build_controllers(platform)


def build_server_app(settings: Settings) -> Starlette:
    platform = build_platform(settings)
    routes, controllers = _control_plane_parts(platform)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(controller.run(), name=type(controller).__name__)
            for controller in controllers
        ]
        _quiet_garbage_collector()
        try:
            yield
        finally:
            for controller in controllers:
                controller.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            platform.db.dispose()

    app = build_app(platform, extra_routes=routes)
    app.router.lifespan_context = lifespan
    app.state.platform = platform
    return app


def _quiet_garbage_collector() -> None:
    """Keep the collector's pauses out of request latency.

    Everything alive once the server is up (modules, SQLAlchemy's mappers, the API definitions: about
    95,000 tracked objects) lives until exit. Frozen, it is no longer rescanned by full collections,
    which otherwise stall every request in flight (measured 2026-11-28 on the 2-core dev machine under
    load: 105-180 ms per full collection before the freeze, < 0.1 ms after). A larger first generation
    makes young collections rarer; a request leaves almost nothing behind.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def serve(settings: Settings) -> None:
    if settings.dev_credentials:
        log.warning(
            "no credentials configured: accepting the dev key test/test for account 000000000000 (loopback only)"
        )
    app = build_server_app(settings)
    log.info(
        "OpenRoboMaker listening on http://%s:%d (data dir %s)",
        settings.host,
        settings.port,
        settings.data_dir,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,  # the API logs its own line per request
        proxy_headers=False,  # nothing reads the client address; saves a middleware per request
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )
