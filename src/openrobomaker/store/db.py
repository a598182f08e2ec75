"""Engine, sessions and migrations."""

from __future__ import annotations

import collections
import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import bindparam, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select

_MIGRATIONS = Path(__file__).with_name("migrations")
_SIGHTINGS = 64  # statements remembered to notice the module-level ones, which come back by identity
_PREPARED = 256  # prepared statements at most; past that, statements run through SQLAlchemy


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'openrobomaker.db').resolve()}"


def _configure_sqlite(dbapi_connection: Any) -> None:
    # WAL lets readers run beside the single writer; busy_timeout queues writers instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised by every test
        _configure_sqlite(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover
        # Writers take the lock at BEGIN so read-then-write transactions never dead-end in SQLITE_BUSY;
        # readers stay deferred so they run beside each other and beside the writer (WAL).
        options = conn.get_execution_options()
        if options.get("sqlite_statement_snapshots"):
            return  # a hot read path: each statement reads its own consistent snapshot
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


def bound(*names: str) -> dict[str, Any]:
    """`.values(bound("a", "b"))`: each column set from the bind parameter of its own name."""
    return {name: bindparam(name) for name in names}


def statement_per_flags(build: Callable[..., Any], *flags: str) -> dict[tuple[bool, ...], Any]:
    """`build(**flags)` for every combination of the boolean flags, built once at import: a statement that
    comes back by identity is compiled once by `Database.reader()`. Keys are the flags' values in order."""
    return {
        values: build(**dict(zip(flags, values, strict=True)))
        for values in itertools.product((False, True), repeat=len(flags))
    }


class _Prepared:
    """A Core select compiled once for SQLite, run on a sqlite3 connection without SQLAlchemy's layers.

    Built only from public SQLAlchemy API: the compiled SQL and its positional bind names, each bind's
    default value and bind processor, each selected column's result processor (JSON, DateTime, ...).
    """

    def __init__(self, statement: Any, dialect: Any):
        compiled = statement.compile(dialect=dialect)
        columns = list(getattr(statement, "selected_columns", ()))  # none for an UPDATE
        keys = [column.key for column in columns]
        if (
            not compiled.positional
            or compiled.positiontup is None
            or any(bind.expanding or bind.literal_execute for bind in compiled.binds.values())
            or len(set(keys)) != len(keys)
            or not all(key.isidentifier() and not key.startswith("_") for key in keys)
        ):
            raise _NotPreparable
        self.statement = statement  # held so that its id() cannot be reused while cached
        self.sql = compiled.string
        self.names = list(compiled.positiontup)
        self.defaults = {name: bind.effective_value for name, bind in compiled.binds.items()}
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        self.bind_processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        processors = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]
        self.result_processors = [(i, p) for i, p in enumerate(processors) if p is not None]
        self.row_type = collections.namedtuple("PreparedRow", keys) if keys else None

    def run(self, connection: sqlite3.Connection, params: dict[str, Any] | None) -> list[Any]:
        if self.required and (params is None or not self.required <= params.keys()):
            # SQLAlchemy refuses to run a statement with an unbound bindparam(); so does this.
            raise KeyError(f"a value is required for bind parameter(s) {sorted(self.required)}")
        values = {**self.defaults, **params} if params else dict(self.defaults)
        for name, processor in self.bind_processors.items():
            values[name] = processor(values[name])
        rows = connection.execute(self.sql, [values[name] for name in self.names]).fetchall()
        if self.result_processors:
            rows = [self._processed(row) for row in rows]
        if self.row_type is None:
            return rows
        make = self.row_type._make
        return [make(row) for row in rows]

    def _processed(self, row: tuple) -> list[Any]:
        values = list(row)
        for index, processor in self.result_processors:
            values[index] = processor(values[index])
        return values


class _NotPreparable(Exception):
    pass


class FastResult:
    """The rows of a prepared statement, with the parts of SQLAlchemy's `Result` the hot paths use."""

    def __init__(self, rows: list[Any]):
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any | None:
        if len(self._rows) > 1:
            raise MultipleResultsFound("more than one row where at most one was expected")
        return self.first()

    def scalar(self) -> Any | None:
        return self._rows[0][0] if self._rows else None


class FastReader:
    """Read-only statements for hot paths (Describe) on a per-thread sqlite3 connection.

    Each statement reads its own snapshot (autocommit), as `Database.connect()` does for SQLite. A
    statement seen twice by identity (a module-level constant with `bindparam()`s) is compiled once and
    from then on runs straight on sqlite3: Describe's join took 22-42 µs instead of 114-125 µs (measured
    under load), and no pool checkout. Anything else (a statement built for one call, with literal
    values) runs through SQLAlchemy.
    """

    def __init__(self, database: Database, raw: sqlite3.Connection):
        self._database = database
        self._raw = raw
        self._fallback: contextlib.ExitStack | None = None
        self._connection: Connection | None = None

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        prepared = self._database._prepared_for(statement)
        if prepared is not None:
            return FastResult(prepared.run(self._raw, params))
        return self._sqlalchemy().execute(statement, params)

    def _sqlalchemy(self) -> Connection:
        if self._connection is None:
            self._fallback = contextlib.ExitStack()
            self._connection = self._fallback.enter_context(self._database.connect())
        return self._connection

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = self._connection = None


_in_transaction: dict[int, _Prepared | None] = {}
_in_transaction_lock = threading.Lock()


class FastWriter:
    """A write transaction of `Database.write()` on SQLite: a per-thread sqlite3 connection."""

    def __init__(self, raw: sqlite3.Connection, dialect: Any):
        self.raw = raw
        self.dialect = dialect


def execute_in_transaction(
    session: Session | Connection | FastWriter, statement: Any, params: dict[str, Any]
) -> list[Any]:
    """Run a module-level Core statement (select, insert or update) inside the caller's transaction: an ORM
    session's, or one of `Database.write()`.

    On SQLite it is compiled once and run on the transaction's own sqlite3 connection (no ORM flush or
    identity map, no per-call compilation: a hot write path's statements cost a tenth); elsewhere, or if it
    cannot be prepared, through SQLAlchemy Core on the same transaction. Rows unpack as tuples.
    """
    if isinstance(session, FastWriter):
        prepared = _prepared_in_transaction(statement, session.dialect)
        if prepared is None:
            raise TypeError("Database.write() runs module-level statements that can be prepared only")
        return prepared.run(session.raw, params)
    connection = session if isinstance(session, Connection) else session.connection()
    if connection.dialect.name == "sqlite":
        prepared = _prepared_in_transaction(statement, connection.dialect)
        if prepared is not None:
            return prepared.run(connection.connection.driver_connection, params)
    result = connection.execute(statement, params)
    return list(result) if result.returns_rows else []


def _prepared_in_transaction(statement: Any, dialect: Any) -> _Prepared | None:
    key = id(statement)
    prepared = _in_transaction.get(key)
    if prepared is not None and prepared.statement is statement:
        return prepared
    with _in_transaction_lock:
        if len(_in_transaction) >= _PREPARED:
            return None
        try:
            prepared = _Prepared(statement, dialect)
        except _NotPreparable:
            prepared = None
        if prepared is not None:
            _in_transaction[key] = prepared
        return prepared


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
        database = self.engine.url.database if self.is_sqlite else None
        # A file database only: every connection to ":memory:" would be a database of its own.
        self._reader_path = database if database and database != ":memory:" else None
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._prepared: dict[int, _Prepared | None] = {}
        self._sightings: collections.OrderedDict[int, Any] = collections.OrderedDict()

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
    def write(self) -> Iterator[FastWriter | Connection]:
        """A write transaction without an ORM Session, for `execute_in_transaction` statements only.

        The hot write paths (runner reports, recording runner handles) each ran one short transaction;
        the Session around it (sessionmaker, pool checkout, begin/commit events) cost ~0.27 ms of CPU, ten
        times the statements. On a SQLite file: a per-thread sqlite3 connection, BEGIN IMMEDIATE under the
        same writer lock as `transaction()`, COMMIT (ROLLBACK on error). Elsewhere: a Core transaction.
        """
        if self._reader_path is None:
            with contextlib.ExitStack() as stack:
                if self.is_sqlite:  # ":memory:": one database per connection, so the pool's, locked
                    stack.enter_context(self._sqlite_writer)
                connection = stack.enter_context(self.engine.connect())
                if self.is_sqlite:
                    connection = connection.execution_options(sqlite_immediate=True)
                with connection.begin():
                    yield connection
            return
        with self._sqlite_writer:
            raw = self._thread_connection("writer")
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield FastWriter(raw, self.engine.dialect)
            except BaseException:
                raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT")

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

    @contextlib.contextmanager
    def reader(self) -> Iterator[FastReader | Connection]:
        """The fastest read-only connection for Core selects: a `FastReader` on a SQLite file, else `connect()`.

        Use `execute(statement, params)` and `first()`, `all()`, `one_or_none()`, `scalar()` or iteration
        on what it returns; rows have attribute access and unpack as tuples.
        """
        if self._reader_path is None:
            with self.connect() as connection:
                yield connection
            return
        reader = FastReader(self, self._thread_connection("reader"))
        try:
            yield reader
        finally:
            reader.close()

    def _thread_connection(self, role: str) -> sqlite3.Connection:
        raw = getattr(self._readers, role, None)
        if raw is None:
            # One per thread and role (the event loop's, pool workers'), kept open: opening costs more
            # than a read. A writer's is apart, so a reader never runs inside a write transaction.
            raw = sqlite3.connect(
                self._reader_path, check_same_thread=False, isolation_level=None, timeout=30
            )
            _configure_sqlite(raw)
            setattr(self._readers, role, raw)
            with self._reader_lock:
                self._reader_connections.append(raw)
        return raw

    def _prepared_for(self, statement: Any) -> _Prepared | None:
        key = id(statement)
        prepared = self._prepared.get(key)
        if prepared is not None and prepared.statement is statement:
            return prepared
        if not isinstance(statement, Select) or len(self._prepared) >= _PREPARED:
            return None
        with self._reader_lock:
            if self._sightings.get(key) is not statement:
                self._sightings[key] = statement  # first sight: maybe built for this one call
                if len(self._sightings) > _SIGHTINGS:
                    self._sightings.popitem(last=False)
                return None
            del self._sightings[key]
            try:
                prepared = _Prepared(statement, self.engine.dialect)
            except _NotPreparable:
                return None
            self._prepared[key] = prepared
            return prepared

    def dispose(self) -> None:
        with self._reader_lock:
            for raw in self._reader_connections:
                raw.close()
            self._reader_connections.clear()
        self._readers = threading.local()
        self.engine.dispose()
