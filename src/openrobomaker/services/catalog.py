"""Imports every resource module so that their operations register themselves."""

from openrobomaker.services import applications, credentials, simulation_jobs, tags  # noqa: F401
