"""A reconcile loop that runs on an interval and whenever something it cares about changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("openrobomaker.controllers")


class Controller:
    interval = 0.5
    signal_name = ""

    def __init__(self, platform: Any):
        self.platform = platform
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        platform.signals[self.signal_name] = self.wake

    def wake(self) -> None:
        """Safe to call from any thread (services run in a thread pool)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    def reconcile(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self._stopping:
            try:
                await asyncio.to_thread(self.reconcile)
            except Exception:  # a failed pass must not end the loop; the next pass retries
                log.exception("%s pass failed", type(self).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
