"""Level-triggered reconcile loops: read what the store says should be, compare with what is, act.

Every step is idempotent, so a control-plane crash or restart loses nothing and double-starts nothing.
"""

from __future__ import annotations

from typing import Any


def build_controllers(platform: Any) -> tuple[list, list]:
    """HTTP routes for runners (and later agents) plus the background controllers of this control plane."""
    from openrobomaker.api.runner_channel import runner_routes
    from openrobomaker.controllers.simulation_jobs import SimulationJobController
    from openrobomaker.executors.local import LocalExecutor

    executor = LocalExecutor()
    platform.signals.setdefault("executor", executor)
    jobs = SimulationJobController(platform, executor)
    return runner_routes(platform), [jobs]
