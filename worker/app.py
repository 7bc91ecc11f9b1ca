"""The Huey instance, built from settings: SqliteHuey on the state dir, RedisHuey for redis:// URLs.

Huey only rings the bell: a message carries an outbox id, the row in the coordination DB is the truth
(invariant 1), so Huey's at-most-once delivery loses nothing that the reconciler does not find again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from huey import RedisHuey, SqliteHuey

QUEUE_NAME = "coord"


def make_huey(settings: Any) -> Any:
    location = settings.queue_location
    if location.startswith(("redis://", "rediss://", "unix://")):
        from redis import ConnectionPool

        pool = ConnectionPool.from_url(location)
        return RedisHuey(QUEUE_NAME, connection_pool=pool, results=False, utc=True)
    path = Path(location.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # results=False: nothing reads task results; the coordination DB holds every outcome.
    return SqliteHuey(QUEUE_NAME, filename=str(path), results=False, utc=True, timeout=30)


@lru_cache(maxsize=8)
def _huey_for(location: str) -> Any:
    class _S:
        queue_location = location

    return make_huey(_S)


def huey_for(settings: Any) -> Any:
    return _huey_for(settings.queue_location)
