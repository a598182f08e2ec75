"""Imports every resource module so that their operations register themselves."""

from openrobomaker.services import applications, tags  # noqa: F401
