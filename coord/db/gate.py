"""Writers of one SQLite file take turns at a gate they check from every 50 µs, not in SQLite's busy
handler, which sleeps for milliseconds from the start.

SQLite lets one writer at a time hold a database; the others retry on a timer (the busy handler sleeps
1, 2, 5, 10, 15, 20, 25 ... ms between tries). A write lock held for half a millisecond can so cost a
waiter tens of milliseconds, and that was the tail of coord's latency: a delegation waited behind the
worker's commit and the worker behind the delegation's. Here a write transaction first takes an `flock`
on a sidecar file, `<database>-gate`, trying again after 50 µs, doubling up to 10 ms (a short wait
ends within a fraction of a millisecond; a long one does not steal the CPU from the holder), and only
then runs BEGIN IMMEDIATE, which finds the database free. A killed holder's flock goes with its process.

The wait is bounded: after the connection's busy timeout the writer stops waiting for the gate and goes
on to BEGIN IMMEDIATE, which waits in SQLite's busy handler and fails with "database is locked" if the
holder still holds on: a stopped or hung holder costs an error, as without the gate, never a hang.

SQLite's own locking still decides who writes; the gate only orders the waiting. A writer that does not
use it (the sqlite3 shell, another program) meets the busy handler, as before.

The gate belongs to a connection (its own open file description, so two connections of one process
exclude each other as two processes do) and is let go by commit or rollback. A thread that already holds
a file's gate through another connection does not queue for it again (it would wait for itself): that
nested writer meets SQLite's busy handler and its timeout, as it would without the gate.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

_held = threading.local()  # the gate paths this thread holds
FIRST_PAUSE_S, MAX_PAUSE_S = 0.00005, 0.01


def gate_path(database: Any) -> str | None:
    """The gate file of a database file; None for in-memory and URI databases (nothing to share)."""
    name = os.fspath(database) if isinstance(database, (str, os.PathLike)) else ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return f"{name}-gate"


def _thread_holds() -> set[str]:
    if not hasattr(_held, "paths"):
        _held.paths = set()
    return _held.paths


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions (`begin`) queue on the database's gate first."""

    def __init__(self, database: Any, *args: Any, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(database, *args, timeout=timeout, **kwargs)
        self._gate_timeout = timeout
        self._gate = gate_path(database)
        self._gate_fd: int | None = None
        self._holding = False

    def begin(self, sql: str = "BEGIN IMMEDIATE") -> None:
        """Start a write transaction: through the gate, then `sql` (BEGIN IMMEDIATE or EXCLUSIVE)."""
        self.enter_gate()
        try:
            self.execute(sql)
        except BaseException:
            self.leave_gate()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_gate()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_gate()

    def close(self) -> None:
        self.leave_gate()
        if self._gate_fd is not None:
            os.close(self._gate_fd)
            self._gate_fd = None
        super().close()

    def enter_gate(self) -> None:
        if self._gate is None or self._holding or self._gate in _thread_holds():
            return
        if self._gate_fd is None:
            try:
                self._gate_fd = os.open(self._gate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # umask decides
            except OSError:  # a folder we may read but not write: no gate, the busy handler as before
                self._gate = None
                return
        try:
            fcntl.flock(self._gate_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._poll_gate():
                return  # gave up on the gate: SQLite's busy handler and its timeout decide (module doc)
        self._holding = True
        _thread_holds().add(self._gate)

    def _poll_gate(self) -> bool:
        """Try again after 50 µs, doubling up to 10 ms, for at most the busy timeout. Measured: a helper
        thread blocking in flock (woken by the kernel) was slower with four claimers on two cores
        (starting the thread costs more than the polls); a cap of 0.25 ms made eight processes recording
        gaps (CPU-bound transactions) three times slower than without the gate, 10 ms costs them 25 %."""
        deadline, pause = time.monotonic() + self._gate_timeout, FIRST_PAUSE_S
        while True:
            try:
                fcntl.flock(self._gate_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)

    def leave_gate(self) -> None:
        if self._holding and self._gate_fd is not None:
            fcntl.flock(self._gate_fd, fcntl.LOCK_UN)
            self._holding = False
            _thread_holds().discard(self._gate)
