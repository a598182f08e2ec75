"""Imports every table module so that Base.metadata knows the whole schema (for Alembic)."""

from openrobomaker.store import applications, credentials, simulation_jobs, tags  # noqa: F401
