"""Imports every table module so that Base.metadata knows the whole schema (for Alembic)."""

from openrobomaker.store import applications, tags  # noqa: F401
