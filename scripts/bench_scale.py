"""Delegations/s and claims/s with 1, 2 and 4 worker processes, on SQLite and on PostgreSQL + Redis.

One run measures both configurations (same code, invariant 9) and prints one table. For each engine and
N in (1, 2, 4), on a fresh database and queue, with N `coord worker` daemons (1 consumer thread each):
1. N agent processes call `Coordinator.delegate()` (dispatch = queue) for --delegations tasks in total while
   the workers dispatch them: delegate() calls per second, and delegations per second end to end (first
   delegate() until the last target notification is committed).
2. The workers alone: as many delegations committed without a bell, then every bell rung at once (in one
   queue write: a Redis pipeline, one SQLite transaction): jobs per second drained, and the workers' CPU
   per job.
3. The workers stopped, N agent processes claim + complete every task: claims per second.
Agent processes start (imports, connections) before the clock does: each says it is ready, then all are
released together, so the timings hold the work and not Python's start-up.
Contention: errors seen by the agents, outbox jobs that hit any error (lock timeouts, serialization
failures ...), jobs run more than once, and on PostgreSQL the server's deadlock counter.
Cost per worker: CPU per job, start-up CPU, peak RSS (from wait4). Every figure comes with the machine's load
average: on a shared machine other work skews everything.

Usage: scripts/bench scale [--delegations 1000] [--rounds 2] [--workers 1,2,4] [--engines sqlite,postgres]
       [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--redis-url redis://127.0.0.1:6379/12]
The PostgreSQL URL names a server database used only to create and drop a scratch database per run;
the Redis database number is flushed before and after each run (use one nobody else uses).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOSS, TARGET = "boss-agent", "worker-agent"
WORKER_ENV = {
    "COORD_WORKER_CONCURRENCY": "1",
    "COORD_WORKER_TYPE": "thread",
    "COORD_RECONCILE_INTERVAL_SECONDS": "5",
    "COORD_LOG_LEVEL": "warning",
    "COORD_LOG_FORMAT": "json",
}


@dataclass
class Run:
    engine: str
    workers: int
    delegations: int
    delegate_per_s: float = 0.0
    dispatched_per_s: float = 0.0
    claims_per_s: float = 0.0
    drain_per_s: float = 0.0
    cpu_ms_per_job: float = 0.0
    agent_cpu_ms: float = 0.0  # phase 1, per delegation: the agents' own CPU (client side of delegate())
    worker_cpu_ms: float = 0.0  # phase 1, per delegation: the workers' CPU (bells, batches, idle polls)
    busy: float = 0.0  # phase 1: share of the machine's CPU time busy (anyone's), 1.0 = every core
    errors: int = 0
    job_reruns: int = 0
    jobs_failed: int = 0
    job_errors: int = 0
    deadlocks: int | None = None
    cpu_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    startup_cpu_s: float = 0.0
    load: float = 0.0  # 1-minute load average after the run: other work on the machine skews everything



# --- child processes ------------------------------------------------------------------------------------
def _values(env: dict[str, str]) -> dict[str, Any]:
    return {"state_dir": env["COORD_STATE_DIR"], "database_url": env.get("COORD_DATABASE_URL"),
            "queue_url": env.get("COORD_QUEUE_URL"), "dispatch": "queue", "log_level": "warning"}


def _delegator(env: dict[str, str], name: str, n: int, ready: Any, go: Any, out: Any) -> None:
    from coord.client import Coordinator
    from coord.logs import configure_logging
    from coord.settings import load_settings

    configure_logging("warning", "json")
    errors, start, cpu = 0, time.perf_counter(), 0.0
    try:
        coord = Coordinator(load_settings(overrides=_values(env), env={}).settings)
        coord.db.ping()  # a pooled connection open before the start line
        ready.put(name)
        go.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            try:
                coord.delegate(BOSS, TARGET, {"title": f"{name} {i}"}, id=f"{name}-{i:06d}")
            except Exception:
                errors += 1
        cpu = time.process_time() - cpu
        coord.close()
    except Exception as exc:  # the parent must hear back whatever happens
        print(f"delegator {name}: {exc}", file=sys.stderr)
        errors = n
        ready.put(name)
    out.put((time.perf_counter() - start, errors, cpu))


def _claimer(env: dict[str, str], ready: Any, go: Any, out: Any) -> None:
    from coord.client import Coordinator
    from coord.logs import configure_logging
    from coord.settings import load_settings

    configure_logging("warning", "json")
    done = errors = 0
    try:
        coord = Coordinator(load_settings(overrides=_values(env), env={}).settings)
        coord.db.ping()
        ready.put(os.getpid())
        go.wait()
        while True:
            try:
                claim = coord.claim_next(TARGET, lease_seconds=600)
                if claim is None:
                    break
                coord.complete(claim.task_id, claim.token, {"ok": True})
                done += 1
            except Exception:
                errors += 1
                if errors > 100:
                    break
        coord.close()
    except Exception as exc:
        print(f"claimer: {exc}", file=sys.stderr)
        errors += 1
        ready.put(os.getpid())
    out.put((done, errors))


def _processes(target: Any, args_for: list[tuple]) -> tuple[float, float, list[Any]]:
    """Start one process per args tuple; once every one is ready (imports done, connected), release them
    together. (the start time, the wall time until all reported, what each reported)."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, ready, go, out)) for args in args_for]
    for p in procs:
        p.start()
    for _ in procs:
        try:
            ready.get(timeout=300)
        except Exception:  # a child that failed before it was ready reports on `out`
            break
    go.set()
    start = time.perf_counter()
    results = [out.get(timeout=900) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return start, elapsed, results


# --- one configuration ------------------------------------------------------------------------------------
def _counts(db: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from coord.db.models import InboxMessage, OutboxJob

    with db.reader() as s:
        outbox = dict(s.execute(select(OutboxJob.status, func.count()).group_by(OutboxJob.status)).all())
        reruns = s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.attempts > 1)) or 0
        errors = s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.last_error.is_not(None))) or 0
        notified = s.scalar(select(func.count()).select_from(InboxMessage)) or 0
    return {"pending": outbox.get("pending", 0), "failed": outbox.get("failed", 0), "reruns": int(reruns),
            "errors": int(errors), "notified": int(notified)}


def _deadlocks(db: Any) -> int | None:
    if db.dialect != "postgresql":
        return None
    from sqlalchemy import text

    with db.reader() as s:
        return int(s.scalar(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")) or 0)


def _start_workers(env: dict[str, str], n: int, logs: Path) -> list[subprocess.Popen]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    child.update(env, **WORKER_ENV, PYTHONPATH=str(ROOT))
    procs = []
    for i in range(n):
        log = open(logs / f"worker{i}.log", "ab")  # noqa: SIM115 -- the child writes it
        procs.append(subprocess.Popen([sys.executable, "-m", "coord.cli", "worker"], env=child, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent))
    return procs


def _die_with_parent() -> None:
    """A bench killed half-way must not leave its workers behind: they would go on taking the next run's
    bells from the same Redis queue (and find no such job in their own database)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_workers(procs: list[subprocess.Popen]) -> list[tuple[float, float]]:
    """SIGTERM, then (cpu seconds, peak RSS MB) of each from wait4."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    usage = []
    for p in procs:
        _pid, _status, ru = os.wait4(p.pid, 0)
        p.returncode = 0
        usage.append((ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024))
    return usage


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (Linux /proc/stat), (0, 0) where unavailable."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _wait_ready(db: Any, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    from sqlalchemy import select

    from coord.db.models import WorkerHeartbeat

    pids = {p.pid for p in procs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.reader() as s:
            if pids <= set(s.scalars(select(WorkerHeartbeat.pid))):
                return
        time.sleep(0.2)
    raise SystemExit(f"workers did not start within {timeout}s")


_PENDING = "SELECT count(*) FROM outbox WHERE status = 'pending'"  # an index seek (ix_outbox_due)


def _wait_drained(db: Any, timeout: float = 600) -> float:
    """Wait until no outbox row is pending; the moment it was seen. One cheap query every 10 ms: the
    watcher shares the workers' cores, so it must not cost what it measures."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout
    with db.read_engine.connect() as conn:
        while time.monotonic() < deadline:
            if not conn.execute(text(_PENDING)).scalar():
                return time.perf_counter()
            conn.rollback()
            time.sleep(0.01)
    raise SystemExit(f"outbox not drained within {timeout}s")


def _ring_all(settings: Any, ids: list[str]) -> None:
    """Every bell at once, in one queue write: rung one by one (a queue round trip each, from this one
    process) they took as long as the workers took to run them, and the drain measured the bench."""
    from worker.app import huey_for
    from worker.tasks import tasks_for

    huey = huey_for(settings)
    run_outbox = tasks_for(huey).run_outbox
    storage = huey.storage
    if hasattr(storage, "conn") and hasattr(storage.conn, "pipeline"):  # Redis: one pipeline
        conn = storage.conn
        storage.conn = pipe = conn.pipeline(transaction=False)
        try:
            for outbox_id in ids:
                huey.enqueue(run_outbox.s(outbox_id))
        finally:
            storage.conn = conn
        pipe.execute()
    else:  # SQLite: one transaction
        rows = [(storage.name, storage.to_blob(huey.serialize_task(task)), task.priority or 0)
                for task in (run_outbox.s(outbox_id) for outbox_id in ids)]
        with storage.db(commit=True) as cursor:
            cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)


def _burst(coord: Any, workers: list[subprocess.Popen], n: int) -> tuple[float, float]:
    """`n` delegations committed without a bell, then all their bells rung at once: how fast the running
    workers drain them (jobs/s), and the workers' CPU ms per job meanwhile."""
    from sqlalchemy import select

    from coord.client import Coordinator
    from coord.db.models import OutboxJob
    from coord.outbox import SilentBell

    quiet = Coordinator(coord.settings, db=coord.db, bell=SilentBell())
    for i in range(n):
        quiet.delegate(BOSS, TARGET, {"title": f"burst {i}"}, id=f"burst-{i:06d}")
    with coord.db.reader() as s:
        ids = list(s.scalars(select(OutboxJob.id).where(OutboxJob.status == "pending")))
    cpu = sum(_cpu_seconds(p.pid) for p in workers)
    start = time.perf_counter()
    _ring_all(coord.settings, ids)
    elapsed = _wait_drained(coord.db) - start
    return len(ids) / elapsed, 1000 * (sum(_cpu_seconds(p.pid) for p in workers) - cpu) / max(len(ids), 1)


def run_one(engine: str, n_workers: int, n_delegations: int, env: dict[str, str], logs: Path) -> Run:
    from coord.client import Coordinator
    from coord.settings import load_settings

    run = Run(engine, n_workers, n_delegations)
    coord = Coordinator(load_settings(overrides=_values(env), env={}).settings)
    coord.register_agent(BOSS, "Plans the work and hands it out", expertise=["planning"])
    coord.register_agent(TARGET, "Does the work it is given", expertise=["work"])
    db = coord.db
    before = _deadlocks(db)
    workers = _start_workers(env, n_workers, logs)
    try:
        _wait_ready(db, workers)
        startup_cpu = sum(_cpu_seconds(p.pid) for p in workers)  # imports, migrations check, model load
        # 1. agents delegate while the workers dispatch (they share the machine's cores).
        per = n_delegations // n_workers
        run.delegations = per * n_workers
        machine, worker_cpu = _machine_cpu(), sum(_cpu_seconds(p.pid) for p in workers)
        start, _elapsed, results = _processes(_delegator, [(env, f"a{i}", per) for i in range(n_workers)])
        run.errors += sum(e for _t, e, _c in results)
        run.delegate_per_s = run.delegations / max(t for t, _e, _c in results)
        drained = _wait_drained(db)
        run.dispatched_per_s = _counts(db)["notified"] / (drained - start)
        busy, total = (b - a for a, b in zip(machine, _machine_cpu(), strict=True))
        run.busy = busy / total if total else 0.0
        run.agent_cpu_ms = 1000 * sum(c for _t, _e, c in results) / run.delegations
        run.worker_cpu_ms = 1000 * (sum(_cpu_seconds(p.pid) for p in workers) - worker_cpu) / run.delegations
        # 2. the workers alone: a burst of bells.
        run.drain_per_s, run.cpu_ms_per_job = _burst(coord, workers, run.delegations)
    finally:
        usage = _stop_workers(workers)
    run.cpu_s = [u[0] for u in usage]
    run.startup_cpu_s = startup_cpu / n_workers
    run.rss_mb = [u[1] for u in usage]
    # 3. agents claim and complete everything, the workers stopped.
    _start, elapsed, results = _processes(_claimer, [(env,) for _ in range(n_workers)])
    claimed = sum(d for d, _e in results)
    run.errors += sum(e for _d, e in results)
    run.claims_per_s = claimed / elapsed
    final = _counts(db)
    run.job_reruns, run.jobs_failed, run.job_errors = final["reruns"], final["failed"], final["errors"]
    after = _deadlocks(db)
    if before is not None and after is not None:
        run.deadlocks = after - before
    run.load = os.getloadavg()[0]
    if claimed != 2 * run.delegations:
        print(f"  warning: claimed {claimed} of {2 * run.delegations}", file=sys.stderr)
    coord.close()
    return run


def _pg_scratch(admin_url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"coord_bench_{os.getpid()}_{os.urandom(3).hex()}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def _flush(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()


ENGINES = {"sqlite": "SQLite+SqliteHuey", "postgres": "PostgreSQL+Redis"}


def _one_config(engine: str, n: int, args: argparse.Namespace, tmp: Path) -> Run:
    state = Path(tempfile.mkdtemp(prefix=f"{engine}-{n}-", dir=tmp))
    env = {"COORD_STATE_DIR": str(state)}
    drop = None
    if engine == "postgres":
        url, drop = _pg_scratch(args.pg_url)
        env.update(COORD_DATABASE_URL=url, COORD_QUEUE_URL=args.redis_url)
        _flush(args.redis_url)
    try:
        return run_one(ENGINES[engine], n, args.delegations, env, state)
    finally:
        if drop:
            _flush(args.redis_url)
            drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delegations", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration; rates: the best round")
    parser.add_argument("--pg-url", default=os.environ.get("COORD_TEST_DATABASE_URL")
                        or "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    from coord.logs import configure_logging

    configure_logging("warning")
    counts = [int(x) for x in args.workers.split(",")]
    engines = args.engines.split(",")
    print(f"{args.delegations} delegations per run; workers {counts}; {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    runs: dict[tuple[str, int], list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Configurations interleaved, round after round: a change in the machine's other load hits all of them.
        for _round in range(args.rounds):
            for n in counts:
                for engine in engines:
                    try:
                        run = _one_config(engine, n, args, Path(tmp))
                    except Exception as exc:  # e.g. the shared server restarted under the run: once more
                        print(f"  {ENGINES[engine]} x{n}: run failed ({type(exc).__name__}: {exc}); again",
                              flush=True)
                        time.sleep(5)
                        run = _one_config(engine, n, args, Path(tmp))
                    print(f"  {run.engine} x{n}: delegate {run.delegate_per_s:.0f}/s, end to end "
                          f"{run.dispatched_per_s:.0f}/s, drain {run.drain_per_s:.0f}/s, claims "
                          f"{run.claims_per_s:.0f}/s; CPU ms per delegation: agents {run.agent_cpu_ms:.2f}, "
                          f"workers {run.worker_cpu_ms:.2f}; machine {100 * run.busy:.0f}% busy "
                          f"(load {run.load:.1f})", flush=True)
                    runs.setdefault((engine, n), []).append(run)
    print()
    head = (f"{'engine':<18} {'workers':>7} {'delegate()/s':>12} {'end-to-end/s':>12} {'drain/s':>8} "
            f"{'claims/s':>9} {'errors':>6} {'job errors':>10} {'reruns':>6} {'failed':>6} {'deadlocks':>9} "
            f"{'agent ms':>8} {'worker ms':>9} {'busy':>5} {'CPU ms/job':>10} {'start CPU s':>11} {'RSS MB':>6} "
            f"{'load':>5}")
    print(head)
    print("-" * len(head))
    for engine in engines:
        for n in counts:
            rs = runs[(engine, n)]
            deadlocks = [r.deadlocks for r in rs if r.deadlocks is not None]
            print(f"{rs[0].engine:<18} {n:>7} {max(r.delegate_per_s for r in rs):>12.0f} "
                  f"{max(r.dispatched_per_s for r in rs):>12.0f} {max(r.drain_per_s for r in rs):>8.0f} "
                  f"{max(r.claims_per_s for r in rs):>9.0f} {sum(r.errors for r in rs):>6} "
                  f"{sum(r.job_errors for r in rs):>10} {sum(r.job_reruns for r in rs):>6} "
                  f"{sum(r.jobs_failed for r in rs):>6} {sum(deadlocks) if deadlocks else '-':>9} "
                  f"{min(r.agent_cpu_ms for r in rs):>8.2f} {min(r.worker_cpu_ms for r in rs):>9.2f} "
                  f"{max(r.busy for r in rs):>5.0%} "
                  f"{min(r.cpu_ms_per_job for r in rs):>10.2f} {min(r.startup_cpu_s for r in rs):>11.2f} "
                  f"{max(max(r.rss_mb) for r in rs):>6.0f} "
                  f"{max(r.load for r in rs):>5.1f}")
    every = [r for rs in runs.values() for r in rs]
    print(f"""
delegate()/s: N agent processes calling delegate() while N workers run. end-to-end/s: from the first
delegate() to the last notification committed. drain/s: the N workers alone on a backlog of as many bells.
claims/s: N agent processes claim + complete, workers stopped. Rates: best of {args.rounds} rounds; errors,
job errors (any error a job hit: lock timeouts, serialization failures ...), reruns, failed, deadlocks:
summed over the rounds. agent ms, worker ms: CPU per delegation while delegating (the agents' side of
delegate(), and all workers': bells, batches, idle polls); busy: how much of the machine's CPU anyone
used meanwhile (100% = every core: rates cannot grow past it). CPU ms/job: all workers' CPU per job
during the drain. start CPU s: CPU each daemon used until ready (imports, migration check). RSS MB: peak
per worker.
Worker start-up: {sum(r.startup_cpu_s for r in every) / len(every):.1f} CPU s per daemon.
load: the machine's highest 1-minute load average after a run; now {os.getloadavg()[0]:.1f}.""")


if __name__ == "__main__":
    main()
