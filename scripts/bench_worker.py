"""Delegations per second through the real worker (SQLite), next to a bare Huey task doing one INSERT.

Throughput: one producer thread enqueues N items while the consumer (a subprocess) runs; the rate is N
over the time from the first enqueue until the N-th result is visible in the database.
- coord: `Coordinator.delegate()` (dispatch="queue") -> `coord worker` with its default settings ->
  inbox row of the target (tasks + outbox + inbox in coord.db, synchronous=FULL).
- bare Huey: `task(i)` enqueued on a SqliteHuey -> huey consumer (same worker count and polling) ->
  one INSERT into an SQLite file with coord's pragmas (WAL, synchronous=FULL). Measured with huey's
  stock queue storage and with coord's doorbell storage (queue synchronous=NORMAL, worker/app.py).
Latency: delegate() at a steady rate (default 100/s); the time until the inbox row is visible to a
reader polling every millisecond. Goals (issue 3): coord >= 0.5x bare Huey; p99 < 50 ms at 100/s.

Usage: scripts/bench worker [--n 2000] [--rate 100] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL = (0.002, 1.1, 0.1)  # the worker's defaults: initial delay, backoff, idle poll (worker/daemon.py)


# --- bare Huey ----------------------------------------------------------------------------------------
def _bare_huey(folder: Path, doorbell: bool):
    from huey import SqliteHuey

    from worker.app import DoorbellSqliteStorage

    kwargs = {"storage_class": DoorbellSqliteStorage} if doorbell else {}
    huey = SqliteHuey("bench", filename=str(folder / "queue.db"), results=False, utc=True, timeout=30, **kwargs)
    local = threading.local()

    @huey.task(name="bench.insert")
    def insert(i: int) -> None:
        con = getattr(local, "con", None)
        if con is None:
            con = local.con = sqlite3.connect(folder / "bare.db", isolation_level=None, timeout=30)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO done (i, at) VALUES (?, ?)", (i, time.time()))
        con.execute("COMMIT")

    return huey, insert


def bare_consumer_main(folder: Path, doorbell: bool) -> None:
    huey, _ = _bare_huey(folder, doorbell)
    consumer = huey.create_consumer(workers=2, worker_type="thread", initial_delay=POLL[0], backoff=POLL[1],
                                    max_delay=POLL[2], periodic=False, graceful_signal="TERM")
    (folder / "ready").touch()
    consumer.run()


def _count(path: Path, sql: str) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _wait_count(path: Path, sql: str, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(path, sql) >= n:
            return time.perf_counter()
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {n} rows in {path}")


def bare_rate(n: int, doorbell: bool, drain: bool = False) -> float:
    """Pipeline rate; with `drain`, the n tasks are queued first and the rate is the consumer's alone
    (first to last INSERT)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        con = sqlite3.connect(folder / "bare.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE done (id INTEGER PRIMARY KEY, i INTEGER, at REAL)")
        con.close()
        _, insert = _bare_huey(folder, doorbell)
        if drain:
            for i in range(n):
                insert(i)
        proc = subprocess.Popen([sys.executable, __file__, "--bare-consumer", str(folder)]
                                + (["--doorbell"] if doorbell else []), env=_env(folder))
        try:
            while not (folder / "ready").exists():
                time.sleep(0.01)
            if not drain:
                time.sleep(0.3)
                start = time.perf_counter()
                for i in range(n):
                    insert(i)
            end = _wait_count(folder / "bare.db", "SELECT count(*) FROM done", n)
            if drain:
                con = sqlite3.connect(folder / "bare.db")
                first, last = con.execute("SELECT min(at), max(at) FROM done").fetchone()
                con.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        return (n - 1) / (last - first) if drain else n / (end - start)


# --- coord --------------------------------------------------------------------------------------------
def _env(state: Path, synchronous: str = "FULL") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    env.update(COORD_STATE_DIR=str(state), COORD_SQLITE_SYNCHRONOUS=synchronous, PYTHONPATH=str(ROOT),
               COORD_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"))
    return env


class Worker:
    """`coord worker` on a fresh state dir, with default settings."""

    def __init__(self, state: Path, synchronous: str = "FULL", start: bool = True) -> None:
        from coord.client import Coordinator
        from coord.settings import load_settings

        self.state = state
        overrides = {"state_dir": str(state), "dispatch": "queue", "sqlite_synchronous": synchronous}
        settings = load_settings(overrides=overrides, env={}).settings
        self.coord = Coordinator(settings)
        self.coord.register_agent("producer", "delegates work")
        for i in range(4):
            self.coord.register_agent(f"target-{i}", "receives work")
        self.synchronous = synchronous
        self.db = state / "coord.db"
        if start:
            self.start()

    def start(self) -> None:
        state, synchronous = self.state, self.synchronous
        self.log = open(state / "worker.log", "w")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "coord.cli", "worker"], env=_env(state, synchronous),
                                     stderr=self.log)
        self.db = state / "coord.db"
        while _count(self.db, "SELECT count(*) FROM worker_heartbeats") == 0:
            time.sleep(0.02)
        time.sleep(0.5)

    def delegate(self, i: int) -> str:
        return self.coord.delegate("producer", f"target-{i % 4}", {"title": f"task {i}"}).coordination_id

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        self.log.close()
        self.coord.close()
        return rc


def coord_rate(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        w = Worker(Path(tmp))
        try:
            start = time.perf_counter()
            for i in range(n):
                w.delegate(i)
            end = _wait_count(w.db, "SELECT count(*) FROM inbox", n)
        finally:
            assert w.stop() == 0
        return n / (end - start)


def coord_drain(n: int) -> float:
    """The worker alone: n delegations queued before it starts; rate from its first to its last inbox row."""
    with tempfile.TemporaryDirectory() as tmp:
        w = Worker(Path(tmp), start=False)
        for i in range(n):
            w.delegate(i)
        w.start()
        try:
            _wait_count(w.db, "SELECT count(*) FROM inbox", n)
            con = sqlite3.connect(w.db)
            (span,) = con.execute(
                "SELECT (julianday(max(created_at)) - julianday(min(created_at))) * 86400.0 FROM inbox"
            ).fetchone()
            con.close()
        finally:
            assert w.stop() == 0
        return (n - 1) / span


def coord_latency(rate: float, seconds: float, synchronous: str = "FULL",
                  producers: int = 1) -> tuple[list[float], list[float]]:
    """(delegate() -> inbox row visible, delegate() call alone), in ms, sorted. Producer threads take turns
    on a fixed schedule (one agent delegating `rate` times a second, by default)."""
    with tempfile.TemporaryDirectory() as tmp:
        w = Worker(Path(tmp), synchronous)
        sent: dict[str, float] = {}
        calls: list[float] = []
        seen: dict[str, float] = {}
        stop = threading.Event()

        def poll() -> None:
            con = sqlite3.connect(f"file:{w.db}?mode=ro", uri=True, timeout=30)
            newest = ""
            while not stop.is_set():
                # Rows commit slightly out of creation order (two worker threads): look a second back.
                since = (datetime.fromisoformat(newest) - timedelta(seconds=1)).isoformat(sep=" ") if newest else ""
                rows = con.execute("SELECT created_at, ref_id FROM inbox WHERE created_at >= ?", (since,)).fetchall()
                now = time.perf_counter()
                for created, ref in rows:
                    seen.setdefault(ref, now)
                    newest = max(newest, created)
                time.sleep(0.001)
            con.close()

        total = int(rate * seconds)
        start = time.perf_counter() + 0.1

        def produce(k: int) -> None:
            for i in range(k, total, producers):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                sent[w.delegate(i)] = t0
                calls.append((time.perf_counter() - t0) * 1000)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            deadline = time.monotonic() + 30
            while len(seen) < total and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            poller.join()
            assert w.stop() == 0
        missing = [k for k in sent if k not in seen]
        assert not missing, f"{len(missing)} delegations never reached the inbox"
        return sorted((seen[k] - t) * 1000 for k, t in sent.items()), sorted(calls)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="items per throughput run")
    parser.add_argument("--rate", type=float, default=100.0, help="delegations per second for the latency run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating throughput rounds (median reported)")
    parser.add_argument("--bare-consumer", help=argparse.SUPPRESS)
    parser.add_argument("--doorbell", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_consumer:
        bare_consumer_main(Path(args.bare_consumer), args.doorbell)
        return
    from coord.logs import configure_logging

    configure_logging("warning")
    print(f"worker benchmark: {args.n} items a throughput run, {args.rounds} rounds, SQLite, 2 thread workers\n")
    rates: dict[str, list[float]] = {"bare Huey (stock queue)": [], "bare Huey (doorbell queue)": [], "coord": []}
    # fsync latency on a shared disk drifts: the three runs alternate and the median of each is reported.
    for _ in range(args.rounds):
        rates["bare Huey (stock queue)"].append(bare_rate(args.n, doorbell=False))
        rates["bare Huey (doorbell queue)"].append(bare_rate(args.n, doorbell=True))
        rates["coord"].append(coord_rate(args.n))
    rates["bare Huey (stock queue), consumer alone"] = []
    rates["bare Huey (doorbell queue), consumer alone"] = []
    rates["coord worker alone"] = []
    for _ in range(args.rounds):
        rates["bare Huey (stock queue), consumer alone"].append(bare_rate(args.n, doorbell=False, drain=True))
        rates["bare Huey (doorbell queue), consumer alone"].append(bare_rate(args.n, doorbell=True, drain=True))
        rates["coord worker alone"].append(coord_drain(args.n))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'':44} {'items/s (median)':>17}   runs")
    for k, v in rates.items():
        print(f"{k:44} {med[k]:17.0f}   {', '.join(f'{x:.0f}' for x in v)}")
    print("\nend to end (producer enqueues while the consumer runs):")
    for k in ("bare Huey (stock queue)", "bare Huey (doorbell queue)"):
        print(f"  coord / {k}: {med['coord'] / med[k]:.2f}x (goal >= 0.5x)")
    print("consumer alone (queue filled first):")
    for k in ("bare Huey (stock queue)", "bare Huey (doorbell queue)"):
        print(f"  coord worker / {k}: {med['coord worker alone'] / med[k + ', consumer alone']:.2f}x")
    for synchronous, producers in (("FULL", 1), ("FULL", 2), ("NORMAL", 1)):
        lat, calls = coord_latency(args.rate, args.seconds, synchronous, producers)
        print(f"\nlatency, {len(lat)} delegations at {args.rate:g}/s from {producers} producer thread(s), "
              f"sqlite_synchronous={synchronous}{' (the default)' if synchronous == 'FULL' else ''}:\n"
              f"  delegate() -> inbox row visible: p50 {pct(lat, 50):.1f} ms, p90 {pct(lat, 90):.1f} ms, "
              f"p99 {pct(lat, 99):.1f} ms, max {lat[-1]:.1f} ms (goal p99 < 50 ms)\n"
              f"  the delegate() call alone:       p50 {pct(calls, 50):.1f} ms, p90 {pct(calls, 90):.1f} ms, "
              f"p99 {pct(calls, 99):.1f} ms")
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
