#!/usr/bin/env python3
"""Autogenerate an Alembic revision from the table modules: `python scripts/new_migration.py "message"`.

It diffs the tables against a scratch SQLite database migrated to the current head.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from openrobomaker.store.db import Database

MIGRATIONS = Path(__file__).resolve().parent.parent / "src/openrobomaker/store/migrations"


def main() -> int:
    message = sys.argv[1] if len(sys.argv) > 1 else "schema change"
    with tempfile.TemporaryDirectory() as scratch:
        database = Database(f"sqlite:///{scratch}/scratch.db")
        database.migrate()
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.connect() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
