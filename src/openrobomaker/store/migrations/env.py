"""Alembic environment: migrations run on the connection Database.migrate() hands over."""

from alembic import context

import openrobomaker.store.tables  # noqa: F401  (registers every table on Base.metadata)
from openrobomaker.store.base import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
