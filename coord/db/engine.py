"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite: every write transaction takes the write lock up front (`BEGIN IMMEDIATE`), because
`busy_timeout` does not cover a lock upgrade from a deferred BEGIN (a read that later writes), and
that upgrade is exactly what a claim does. pysqlite's own BEGIN is turned off so ours is the only one.
Reads use a second engine with a deferred BEGIN: WAL lets them run beside a writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from coord.db.backend import Backend, backend_for
from coord.errors import Unavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str, synchronous: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """One coordination database: engines, session factories and the engine-specific backend."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5, max_overflow: int = 10):
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, sqlite_synchronous, "BEGIN IMMEDIATE")
            self.read_engine = _sqlite_engine(url, sqlite_synchronous, "BEGIN")
        else:
            # pre_ping: a daemon outlives server restarts; a dead pooled connection is replaced, not used.
            self.engine = create_engine(
                url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800
            )
            self.read_engine = self.engine
        self.backend: Backend = backend_for(self.dialect)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._write.begin() as s:
            yield s

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A write transaction on a bare Core connection: for hot paths that need no ORM (claims)."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reader(self) -> Iterator[Session]:
        with self._read.begin() as s:
            yield s

    def ping(self) -> None:
        try:
            with self.read_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise Unavailable(f"database {self.safe_url} is not reachable: {exc.orig}") from None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def open_database(settings: Any, *, migrate: bool = True) -> Database:
    """The database named by the settings, upgraded to the current schema (automatic upgrade on start)."""
    db = Database(
        settings.db_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    if migrate:
        from coord.db.migrate import upgrade

        upgrade(db)
    return db
