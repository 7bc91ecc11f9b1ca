"""The Huey instance, built from settings: SqliteHuey on the state dir, a Redis one for redis:// URLs.

Huey only rings the bell: a message carries an outbox id, the row in the coordination DB is the truth
(invariant 1), so Huey's at-most-once delivery loses nothing that the reconciler does not find again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from huey import PriorityRedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from coord.db.gate import GatedConnection

QUEUE_NAME = "coord"


class DoorbellSqliteStorage(SqliteStorage):
    """SqliteStorage with `synchronous=NORMAL`: commits reach the OS (a killed process loses nothing)
    but are not fsynced, so a power cut may drop the last bells. That is safe here and only here: the
    outbox rows are the durable record and the reconciler re-rings whatever the queue forgot. It saves
    two fsyncs per job (enqueue and dequeue).

    Its write transactions queue on the file's writer gate (coord/db/gate.py): producers ringing and the
    consumer taking a message hand the file over at once instead of sleeping in SQLite's busy handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, factory=GatedConnection, **kwargs)

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn

    @contextmanager
    def db(self, commit: bool = False, close: bool = False) -> Iterator[Any]:
        # huey's BaseSqlStorage.db, with the BEGIN through the gate (its lock is not re-entrant: a copy).
        with self.lock:
            conn = self.conn
            cursor = conn.cursor()
            try:
                if commit:
                    conn.begin(self.begin_sql)
                yield cursor
            except Exception:
                if commit:
                    conn.rollback()
                raise
            else:
                if commit:
                    conn.commit()
            finally:
                cursor.close()
                if close:
                    conn.close()
                    self._conn = None


class NoRevocations:
    """Huey without revocation, which coord never uses (a bell is never revoked: the outbox row decides).
    Huey checks every message for a revocation flag before running it and deletes the flag after: two
    queue round trips per bell (two Redis commands; on SQLite a read and a write transaction), more than
    the dequeue itself. Here both are skipped; `revoke()` is refused rather than silently ignored."""

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        return False

    def delete(self, key: str) -> Any:
        if key.startswith("r:"):  # Task.revoke_id: nothing was stored under it
            return False
        return super().delete(key)  # type: ignore[misc]

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("coord's queue has no revocation: the outbox row decides what runs")

    revoke_by_id = revoke_all = revoke


class DoorbellRedisHuey(NoRevocations, PriorityRedisHuey):
    pass


class DoorbellSqliteHuey(NoRevocations, SqliteHuey):
    pass


def is_redis(location: str) -> bool:
    return location.startswith(("redis://", "rediss://", "unix://"))


def make_huey(settings: Any) -> Any:
    location = settings.queue_location
    # results=False: nothing reads task results; the coordination DB holds every outcome.
    if is_redis(location):
        from redis import ConnectionPool

        pool = ConnectionPool.from_url(location)
        # The priority variant (a sorted set, Redis >= 5) so that periodic jobs overtake a backlog, as
        # they do on SQLite; plain RedisHuey refuses priorities.
        return DoorbellRedisHuey(QUEUE_NAME, connection_pool=pool, results=False, utc=True)
    path = Path(location.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return DoorbellSqliteHuey(QUEUE_NAME, filename=str(path), results=False, utc=True, timeout=30,
                              storage_class=DoorbellSqliteStorage)


@lru_cache(maxsize=8)
def _huey_for(location: str) -> Any:
    class _S:
        queue_location = location

    return make_huey(_S)


def huey_for(settings: Any) -> Any:
    return _huey_for(settings.queue_location)
