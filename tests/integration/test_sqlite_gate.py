"""The SQLite writer gate (coord/db/gate.py): writers queue on it and are woken, nobody waits for himself,
and a writer killed with SIGKILL while holding it does not block anyone."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coord.db.gate import GatedConnection


def _open(path: Path, timeout: float = 30) -> GatedConnection:
    con = sqlite3.connect(path, factory=GatedConnection, isolation_level=None, timeout=timeout,
                          check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    return con


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    con = _open(path)
    con.execute("CREATE TABLE t (who TEXT)")
    con.close()
    return path


def test_a_second_writer_waits_for_the_first_and_then_writes(db: Path):
    first, second = _open(db), _open(db)
    first.begin()
    first.execute("INSERT INTO t VALUES ('first')")
    entered = threading.Event()

    def write() -> None:
        second.begin()
        entered.set()
        second.execute("INSERT INTO t VALUES ('second')")
        second.commit()

    writer = threading.Thread(target=write)
    writer.start()
    assert not entered.wait(0.3), "the second writer got in while the first held the gate"
    first.commit()
    assert entered.wait(10)
    writer.join(10)
    assert [r[0] for r in first.execute("SELECT who FROM t ORDER BY rowid")] == ["first", "second"]
    assert Path(f"{db}-gate").exists()


def test_a_rollback_lets_the_next_writer_in(db: Path):
    first, second = _open(db), _open(db)
    first.begin()
    first.execute("INSERT INTO t VALUES ('undone')")
    first.rollback()
    second.begin()
    second.execute("INSERT INTO t VALUES ('kept')")
    second.commit()
    assert [r[0] for r in second.execute("SELECT who FROM t")] == ["kept"]


def test_a_nested_writer_in_the_same_thread_does_not_wait_for_itself(db: Path):
    """The second connection must not queue behind its own thread: SQLite's timeout answers at once."""
    outer, inner = _open(db), _open(db, timeout=0.2)
    outer.begin()
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        inner.begin()
    assert time.monotonic() - started < 10
    outer.commit()
    inner.begin()  # the gate is free again, and so is the file
    inner.commit()


CHILD = """
import sqlite3, sys, time
from coord.db.gate import GatedConnection
con = sqlite3.connect(sys.argv[1], factory=GatedConnection, isolation_level=None, timeout=30)
con.begin()
con.execute("INSERT INTO t VALUES ('killed')")
print("holding", flush=True)
time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_gate_blocks_nobody(db: Path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "holding"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    survivor = _open(db, timeout=5)
    survivor.begin()
    survivor.execute("INSERT INTO t VALUES ('survivor')")
    survivor.commit()
    assert [r[0] for r in survivor.execute("SELECT who FROM t")] == ["survivor"]  # the killed write is gone


def test_a_gate_that_cannot_be_opened_falls_back_to_the_busy_handler(db: Path):
    """E.g. a reader of someone else's state dir, who may not create files there (a folder in the gate
    file's place fails the same way, also for root)."""
    Path(f"{db}-gate").mkdir()
    con = _open(db)
    con.begin()
    con.execute("INSERT INTO t VALUES ('ungated')")
    con.commit()
    assert [r[0] for r in con.execute("SELECT who FROM t")] == ["ungated"]


def test_a_stopped_holder_costs_an_error_after_the_timeout_not_a_hang(db: Path):
    """A holder that stops (SIGSTOP, a debugger, a hung transaction) keeps the gate: the waiter, in another
    thread, gives up on the gate after its timeout and meets SQLite's lock, which fails as it would
    without the gate."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holder = _open(db)
        holder.begin()
        holding.set()
        release.wait(30)
        holder.commit()
        holder.close()

    holder_thread = threading.Thread(target=hold)
    holder_thread.start()
    try:
        assert holding.wait(10)
        waiter = _open(db, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            waiter.begin()
        waited = time.monotonic() - started
        assert 0.3 <= waited < 5, f"gave up after {waited:.2f}s"
    finally:
        release.set()
        holder_thread.join(10)
    waiter.begin()  # the holder let go: the gate and the file are free again
    waiter.commit()
