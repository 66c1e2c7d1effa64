"""The SQLAlchemy engine for a database URL, with the settings reelbatch's concurrent writers need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option of the engine that writes: its transactions take SQLite's write lock when they begin.
WRITE_OPTION = "reelbatch_write"


def create_database_engine(url: URL, *, pooled: bool = True) -> Engine:
    """``pooled=False``: every session opens its own connection and closes it (nothing idle is kept open)."""
    pool: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if url.get_backend_name() == "sqlite":
        path = _sqlite_database_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **pool)
        _configure_sqlite(engine)
        return engine
    # Runs last hours; connections idle that long may have been dropped by the server or a proxy.
    return create_engine(url, pool_pre_ping=True, **pool)


def _sqlite_database_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def set_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that `begin_transaction` below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_transaction(connection: Connection) -> None:
        # A write transaction takes the write lock up front: a deferred one that reads first and then writes cannot
        # wait for a concurrent writer (SQLite returns SQLITE_BUSY at once instead of honouring busy_timeout).
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
