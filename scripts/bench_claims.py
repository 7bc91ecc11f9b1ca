"""Claims per second (claim + complete cycles) on SQLite with 1 and 4 claimer processes, next to raw
SQLite single-row `BEGIN IMMEDIATE` / `COMMIT` transactions per second measured in the same run.

Goal (issue 2): one claim+complete cycle costs at most 3 raw transactions' time.
Usage: scripts/bench claims [--tasks N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import tempfile
import time
from pathlib import Path

from coord.clock import utcnow
from coord.db.models import Agent, Task
from coord.settings import load_settings


def _settings(state: Path):
    overrides = {"state_dir": str(state), "dispatch": "inline", "log_level": "warning"}
    return load_settings(overrides=overrides, env={}).settings


def raw_transactions(path: Path, n: int, synchronous: str) -> float:
    """Transactions per second: BEGIN IMMEDIATE; UPDATE one row; COMMIT (same pragmas as coord)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    con.execute("INSERT OR IGNORE INTO t VALUES (1, 0)")
    start = time.perf_counter()
    for _ in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return n / elapsed



def _fill(state: Path, n: int) -> None:
    from coord.client import Coordinator

    coord = Coordinator(_settings(state))
    coord.register_agent("producer", "makes work")
    coord.register_agent("worker-agent", "does work")
    now = utcnow()
    rows = [
        dict(id=f"t{i:07d}", from_agent="producer", to_agent="worker-agent", task_type="delegation",
             payload={"title": f"task {i}"}, payload_hash="x", priority=i % 4, status="pending",
             created_at=now, updated_at=now, max_attempts=3)
        for i in range(n)
    ]
    with coord.db.session() as s:
        s.execute(Task.__table__.insert(), rows)
        assert s.get(Agent, "worker-agent") is not None
    coord.close()


def _claimer(state: str, combined: bool, ready: mp.Barrier, out: mp.Queue) -> None:
    from coord.client import Coordinator
    from coord.logs import configure_logging

    configure_logging("warning")

    coord = Coordinator(_settings(Path(state)))
    ready.wait()  # process start-up and imports are not claims: the clock starts when all are ready
    done = 0
    claim = coord.claim_next("worker-agent", lease_seconds=60)
    while claim is not None:
        done += 1
        if combined:  # the steady loop of an agent: one transaction a task
            claim = coord.complete_and_claim(claim.task_id, claim.token, {"ok": True}, agent_id="worker-agent",
                                             lease_seconds=60)
        else:
            coord.complete(claim.task_id, claim.token, {"ok": True})
            claim = coord.claim_next("worker-agent", lease_seconds=60)
    coord.close()
    out.put(done)


def claims_per_second(n: int, procs: int, combined: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        _fill(state, n)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        ready = ctx.Barrier(procs + 1)
        workers = [ctx.Process(target=_claimer, args=(str(state), combined, ready, out)) for _ in range(procs)]
        for w in workers:
            w.start()
        ready.wait()
        start = time.perf_counter()
        total = sum(out.get() for _ in workers)
        elapsed = time.perf_counter() - start
        for w in workers:
            w.join()
        return total / elapsed, total


def main() -> None:
    from coord.logs import configure_logging

    configure_logging("warning")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--raw", type=int, default=2000, help="raw transactions per baseline sample")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/claim rounds")
    args = parser.parse_args()
    print(f"SQLite claim+complete cycles, {args.tasks} tasks a round, {args.rounds} rounds, synchronous=FULL\n")
    # fsync latency on a shared disk drifts minute to minute, so baseline and claims alternate and
    # each ratio compares a claim run with the baseline samples taken just before and after it.
    modes = {"separate": False, "combined": True}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {(m, p): [] for m in modes for p in (1, 4)}
    with tempfile.TemporaryDirectory() as tmp:
        raw_db = Path(tmp) / "raw.db"
        before = raw_transactions(raw_db, args.raw, "FULL")
        for _ in range(args.rounds):
            for mode, procs in results:
                rate, total = claims_per_second(args.tasks, procs, modes[mode])
                assert total == args.tasks, f"claimed {total} of {args.tasks}"
                after = raw_transactions(raw_db, args.raw, "FULL")
                results[mode, procs].append((rate, (before + after) / 2))
                before = after
    print("separate: claim_next() then complete(); combined: complete_and_claim() (one transaction a task)\n")
    print(f"{'calls':>9} {'claimers':>8} {'cycles/s':>9} {'raw tx/s (same time)':>21} {'cycle cost in raw tx':>21}")
    for (mode, procs), rows in results.items():
        for rate, raw in rows:
            print(f"{mode:>9} {procs:>8} {rate:9.0f} {raw:21.0f} {raw / rate:21.2f}")
    print()
    for (mode, procs), rows in results.items():
        ratios = sorted(raw / rate for rate, raw in rows)
        print(f"median cost, {mode}, {procs} claimer(s): {ratios[len(ratios) // 2]:.2f} raw transactions per cycle")
    print("goal: a claim+complete cycle costs at most 3 raw transactions")


if __name__ == "__main__":
    main()
