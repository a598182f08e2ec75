"""Engine, sessions and migrations."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).with_name("migrations")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'openrobomaker.db').resolve()}"


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised by every test
        # WAL lets readers run beside the single writer; busy_timeout queues writers instead of failing.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover
        # Writers take the lock at BEGIN so read-then-write transactions never dead-end in SQLITE_BUSY;
        # readers stay deferred so they run beside each other and beside the writer (WAL).
        options = conn.get_execution_options()
        if options.get("sqlite_statement_snapshots"):
            return  # a hot read path: each statement reads its own consistent snapshot
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


class Database:
    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 30},
                pool_size=16,
                max_overflow=16,
            )
            _tune_sqlite(self.engine)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_writer = threading.RLock()

    def migrate(self) -> None:
        """Bring the schema to the newest revision; safe to run on every start and from several replicas."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
            connection.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back (nothing half-written) on error."""
        if not self.is_sqlite:
            with self._sessions() as session, session.begin():
                yield session
            return
        # SQLite has one writer; queueing this process's writers on a lock avoids SQLite's busy handler,
        # which sleeps with back-off (seconds of tail latency under concurrent creates).
        with self._sqlite_writer, self._sessions() as session, session.begin():
            session.connection(execution_options={"sqlite_immediate": True})
            yield session

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read-only Core connection for hot paths (Describe), without the ORM's per-row cost."""
        with self.engine.connect() as connection:
            if self.is_sqlite:
                connection.execution_options(sqlite_statement_snapshots=True)
            yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot; never blocks writers."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
