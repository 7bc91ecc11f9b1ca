"""The worker's row in `worker_heartbeats`, refreshed every few seconds, for `coord status`.

One row per daemon (worker id = host:pid), written by a thread of the main process. A fork of a worker
process never happens while this thread is inside the database or the logger: the write holds a lock
that `os.register_at_fork` also takes around every fork.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import update

from coord.clock import utcnow
from coord.db.backend import insert_ignore
from coord.db.models import WorkerHeartbeat
from coord.logs import get_logger

log = get_logger(__name__)

_fork_lock = threading.Lock()
os.register_at_fork(before=_fork_lock.acquire, after_in_parent=_fork_lock.release,
                    after_in_child=_fork_lock.release)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_heartbeat(db: Any, worker_id: str, *, status: str, started_at: datetime, info: dict[str, Any],
                    now: datetime) -> None:
    with db.session() as s:
        inserted = insert_ignore(
            s, db.backend, WorkerHeartbeat.__table__,
            dict(worker_id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), started_at=started_at,
                 seen_at=now, status=status, info=info),
        )
        if not inserted:
            s.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id)
                      .values(seen_at=now, status=status, info=info))


class HeartbeatWriter:
    """Writes the row every `interval` seconds until stopped; `last_ok` tells the health check it runs."""

    def __init__(self, db: Any, worker_id: str, interval: Callable[[], float], info: Callable[[], dict[str, Any]],
                 on_beat: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.db, self.worker_id, self.interval, self.info, self.on_beat = db, worker_id, interval, info, on_beat
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing = False

    def beat(self, status: str = "running") -> bool:
        info = self.info()
        with _fork_lock:
            try:
                write_heartbeat(self.db, self.worker_id, status=status, started_at=self.started_at, info=info,
                                now=utcnow())
            except Exception as exc:  # the database may be away for a while; keep trying, say it once
                if not self.failing:
                    log.warning("heartbeat.failed", worker_id=self.worker_id, error=str(exc))
                self.failing = True
                return False
            if self.failing:
                log.info("heartbeat.recovered", worker_id=self.worker_id)
            self.failing = False
        if self.on_beat is not None:
            self.on_beat(info)
        return True

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="coord-heartbeat", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval()):
            self.beat()

    def stop(self, final_status: str = "stopped") -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.beat(final_status)
