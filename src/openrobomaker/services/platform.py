"""What services run on: the store, the object store and the settings, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openrobomaker.config import Settings
from openrobomaker.objectstore import ObjectStore
from openrobomaker.store import Database


@dataclass
class Platform:
    settings: Settings
    db: Database
    objects: ObjectStore
    # Hooks the control plane installs (e.g. wake the simulation job controller after a create).
    signals: dict[str, Any] = field(default_factory=dict)

    def notify(self, name: str, *args: Any) -> None:
        callback = self.signals.get(name)
        if callback is not None:
            callback(*args)
