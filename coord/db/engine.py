"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite: every write transaction takes the write lock up front (`BEGIN IMMEDIATE`), because
`busy_timeout` does not cover a lock upgrade from a deferred BEGIN (a read that later writes), and
that upgrade is exactly what a claim does. pysqlite's own BEGIN is turned off so ours is the only one,
and writers queue on a gate before it (coord/db/gate.py) instead of sleeping in SQLite's busy handler.
Reads use a second engine with a deferred BEGIN: WAL lets them run beside a writer.

PostgreSQL: a daemon outlives server restarts and network cuts. Pooled connections are checked on
checkout (a dead one is replaced, and the whole pool with it), TCP keepalives notice a vanished server,
and a transaction is retried once, with a pause, when its connection cannot be had at the start: no
statement has run, so retrying it cannot do anything twice. A connection lost *inside* a transaction is
never retried here: the outcome is unknown when the loss hits COMMIT, and not every unit is idempotent
(a second claim takes a second task; an install step would run twice). It raises `Unavailable` instead;
calls that carry caller ids (invariant 3) are safe to replay, and the worker's outbox leases re-run
jobs (invariant 1). docs/scale-out.md has the whole story.

The check on checkout is a `SELECT 1` round trip, except for `autocommit(..., replayable=True)`: there it
is a zero-timeout poll of the socket (a server that restarted or killed the backend has closed it, so it
is readable), with the round trip only when the poll finds something. A connection killed a moment
before the poll can still get through, and its statement then fails; such units are replayable (a
delegation with its id, a read), so they are run once more on a fresh connection.
"""

from __future__ import annotations

import re
import select
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from coord.db.backend import Backend, backend_for
from coord.db.gate import GatedConnection
from coord.errors import SettingsError, Unavailable
from coord.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
# libpq defaults for a long-running daemon; a parameter in the URL's query string wins over these.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,  # an unreachable host fails in seconds, not after the kernel's SYN retries
    "application_name": "coord",  # who holds which connection, in pg_stat_activity
    # A server that vanished (host down, network cut) is noticed in about a minute, not the kernel's 2 h.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# One pause before the single retry of a transaction whose connection could not be had: a PostgreSQL
# restart refuses connections for about a second.
RECONNECT_PAUSE_S = 1.0
# Set around the checkout of a replayable unit: the connection is checked by a poll, not a round trip.
_POLL_ONLY: ContextVar[bool] = ContextVar("coord_poll_only", default=False)


def hide_password(url: str) -> str:
    """`url` for messages and logs, password masked, even when SQLAlchemy cannot parse it."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def _use_wal(cur: Any) -> None:
    """Switch the file to WAL (it stays so: later connections only read the mode). The switch needs the
    file to itself and SQLite answers "database is locked" at once, without its busy handler, while
    another process holds any lock: seen when several processes start together on a new database."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_engine(url: str, synchronous: str, begin: str | None) -> Engine:
    """`begin`: the write transactions' BEGIN, run through the database's writer gate (coord/db/gate.py);
    None for the read engine, whose deferred BEGIN waits for nobody (WAL)."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30, "factory": GatedConnection})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        _use_wal(cur)
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if begin is None:
            conn.exec_driver_sql("BEGIN")
        else:
            conn.connection.driver_connection.begin(begin)

    return engine


def _quiet(dbapi_conn: Any) -> bool:
    """psycopg connection idle in the pool and the server has sent nothing: not closed by the server."""
    if dbapi_conn.closed or dbapi_conn.broken:
        return False
    poll = select.poll()
    poll.register(dbapi_conn.fileno(), select.POLLIN | select.POLLPRI)
    return not poll.poll(0)


def _check_on_checkout(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, with the poll of `_quiet` in place of the round trip where the caller
    can replay (module doc). A failed ping invalidates the whole pool, as pre-ping does."""

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info["coord_fresh"] = True

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop("coord_fresh", False) or (_POLL_ONLY.get() and _quiet(dbapi_conn)):
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if dbapi_conn.closed or dbapi_conn.broken or dialect.is_disconnect(exc, dbapi_conn, None):
                raise InvalidatePoolError() from exc
            raise


class Database:
    """One coordination database: engines, session factories and the engine-specific backend."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pg_synchronous_commit: str = "on",
                 pool_size: int = 5, max_overflow: int = 10):
        self.url = url
        self.pool_size, self.max_overflow = pool_size, max_overflow
        try:
            parsed = make_url(url)
            self.dialect = parsed.get_backend_name()
            self.backend: Backend = backend_for(self.dialect)
            if self.dialect == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self.engine = _sqlite_engine(url, sqlite_synchronous, "BEGIN IMMEDIATE")
                self.read_engine = _sqlite_engine(url, sqlite_synchronous, None)
            else:
                # A dead pooled connection (server restarted) is replaced, not handed out (_check_on_checkout).
                connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query}
                if pg_synchronous_commit != "on" and "options" not in parsed.query:
                    connect_args["options"] = f"-c synchronous_commit={pg_synchronous_commit}"
                self.engine = create_engine(
                    url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800,
                    connect_args=connect_args,
                )
                self.read_engine = self.engine
                _check_on_checkout(self.engine)
                event.listen(self.engine, "handle_error", self._on_error)
        except (ArgumentError, ValueError, ImportError) as exc:
            raise SettingsError(f"database_url {hide_password(url)} cannot be used: {_one_line(exc)}") from None
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._transaction(self._write) as s:
            yield s

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A write transaction on a bare Core connection: for hot paths that need no ORM (claims)."""
        conn = self._started(self.engine.connect)
        with self._connection_kept(), conn, conn.begin():
            yield conn

    def autocommit(self, unit: Callable[[Any], T], *, replayable: bool = False) -> T:
        """PostgreSQL only: `unit(psycopg connection)` in autocommit mode, each statement its own transaction
        (no BEGIN or COMMIT round trips). For the one-statement hot paths (coord/db/pg_queue.py).

        A lost connection raises `Unavailable`, as in a transaction; a `replayable` unit (running it twice
        has the effect of running it once) is run once more on a fresh connection first, and its connection
        is checked by a poll instead of a round trip (module doc)."""
        for attempt in (1, 2):
            token = _POLL_ONLY.set(replayable)
            try:
                conn = self._started(self.engine.connect)
            finally:
                _POLL_ONLY.reset(token)
            with conn:
                driver = conn.connection.driver_connection
                try:
                    driver.autocommit = True
                    try:
                        return unit(driver)
                    finally:
                        if not (driver.closed or driver.broken):
                            driver.autocommit = False
                except self.engine.dialect.loaded_dbapi.Error as exc:
                    if not (driver.closed or driver.broken):
                        raise
                    conn.invalidate(exc)
                    if not replayable or attempt == 2:
                        raise Unavailable(
                            f"lost the connection to database {self.safe_url} in a statement ({_one_line(exc)}); "
                            "replaying a call with the same id is safe"
                        ) from exc
                    log.info("db.replaying", url=self.safe_url, error=_one_line(exc))
        raise AssertionError("unreachable")

    @contextmanager
    def raw_connection(self) -> Iterator[Any]:
        """SQLite only: the pooled sqlite3 connection itself, in autocommit mode (it runs its own BEGIN
        IMMEDIATE). For the claim hot path (coord/db/sqlite_queue.py) and nothing else."""
        fairy = self.engine.raw_connection()
        try:
            yield fairy.driver_connection
        finally:
            fairy.close()

    @contextmanager
    def reader(self) -> Iterator[Session]:
        with self._transaction(self._read) as s:
            yield s

    @contextmanager
    def _transaction(self, factory: sessionmaker[Session]) -> Iterator[Session]:
        s = self._started(lambda: self._checked_out(factory()))
        with self._connection_kept(), s:
            try:
                yield s
            except BaseException:
                s.rollback()
                raise
            s.commit()

    def _checked_out(self, s: Session) -> Session:
        """PostgreSQL: take the connection (checked on checkout) before the unit runs, so a failure to get one
        happens while retrying is still safe. SQLite stays lazy: BEGIN IMMEDIATE would take the write lock
        early, and a file has no server to lose."""
        if self.dialect != "sqlite":
            try:
                s.connection()
            except BaseException:
                s.close()
                raise
        return s

    def _on_error(self, ctx: Any) -> Unavailable | None:
        """A connection that cannot be opened (server down or restarting, refused, unknown host, bad password)
        becomes one typed error naming the URL, whichever code opened it: a migration at start, the worker,
        `coord status`. A failed check on checkout stays with the pool, which replaces the dead connection; errors on
        an open connection stay with the caller (`_connection_kept`)."""
        if ctx.connection is None and not ctx.is_pre_ping and isinstance(ctx.sqlalchemy_exception, OperationalError):
            return self.unreachable(ctx.original_exception)
        return None

    def _started(self, start: Callable[[], T]) -> T:
        """`start()`, retried once after a pause when no connection could be had (nothing has run yet)."""
        try:
            return start()
        except (OperationalError, Unavailable) as exc:
            if self.dialect == "sqlite":
                raise
            log.warning("db.reconnecting", url=self.safe_url, error=_one_line(exc), pause_s=RECONNECT_PAUSE_S)
        time.sleep(RECONNECT_PAUSE_S)
        try:
            return start()
        except OperationalError as exc:
            raise self.unreachable(exc) from exc

    @contextmanager
    def _connection_kept(self) -> Iterator[None]:
        """A connection lost inside a transaction becomes `Unavailable`; the unit is not re-run (module doc)."""
        try:
            yield
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise Unavailable(
                f"lost the connection to database {self.safe_url} in a transaction ({_one_line(exc)}); "
                "it was rolled back unless the loss hit its commit: replaying a call with the same id is safe"
            ) from exc

    def unreachable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"database {self.safe_url} is not reachable: {_one_line(exc)}")

    def ping(self) -> None:
        try:
            with self.read_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise self.unreachable(exc) from None

    @property
    def safe_url(self) -> str:
        return hide_password(self.url)

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

        try:
            db.ping()  # unreachable at start: one clear error naming the URL, not a driver traceback
            upgrade(db)
        except BaseException:
            db.dispose()
            raise
    return db
