"""Metadata storage: SQLAlchemy 2 over SQLite (embedded default, WAL) or PostgreSQL, migrated by Alembic."""

from openrobomaker.store.db import Database

__all__ = ["Database"]
