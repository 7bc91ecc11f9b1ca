"""Scale-out on PostgreSQL + Redis with the real daemon: several `coord worker` processes (as on several
hosts: each its own state dir) and several agent processes on one database and one queue.

- 3 workers, 4 agent processes, 5,000 delegations, workers SIGKILLed 5 times during the run (each replaced,
  as systemd's Restart= would): nothing lost, nothing claimed twice, no notification twice.
- PostgreSQL restarted (`pg_ctlcluster ... restart`) in the middle of a run: the daemons ride it out by
  themselves (same processes), nothing is lost. Skipped, with the reason, where the test cannot control
  the server (not root, no pg_ctlcluster, a remote server).

Agent processes behave like well-written agents: a call that fails with Unavailable (the server went
away) is replayed with the same id (invariant 3); a task whose lease was lost is left to the reaper.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, REDIS_URL, _reachable_pg, child_env, pg_skip_reason, redis_skip_reason
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from coord.client import Coordinator
from coord.db.models import InboxMessage, OutboxJob, Task, WorkerHeartbeat
from coord.errors import LeaseLost, Unavailable
from coord.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.serial]

BOSS, TARGET = "boss-agent", "worker-agent"
# Redis database numbers of their own (other suites use 15): flushed before and after, never others.
REDIS_DB_KILL, REDIS_DB_RESTART = 13, 14
# Settings every process of a run shares (the env file of docs/scale-out.md, with short test intervals).
DAEMON_ENV = {
    "COORD_RECONCILE_INTERVAL_SECONDS": "1",
    "COORD_OUTBOX_LEASE_SECONDS": "3",  # a job taken by a killed worker runs again after 3 s
    "COORD_HEARTBEAT_INTERVAL_SECONDS": "1",
    "COORD_WORKER_CONCURRENCY": "2",
    "COORD_WORKER_TYPE": "thread",
    "COORD_SHUTDOWN_GRACE_SECONDS": "5",
    "COORD_LOG_LEVEL": "warning",
    "COORD_LOG_FORMAT": "json",
}


def _skip_without_servers() -> None:
    for reason in (pg_skip_reason(), redis_skip_reason()):
        if reason:
            print(f"SKIP scale-out: {reason}")
            pytest.skip(reason)


def _redis_db(number: int) -> str:
    return make_url(REDIS_URL).set(database=str(number)).render_as_string(hide_password=False)


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


class Cluster:
    """The worker daemons of one run; each has its own state dir, like a separate host."""

    def __init__(self, root: Path, db_url: str, queue_url: str) -> None:
        self.root, self.db_url, self.queue_url = root, db_url, queue_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.started = 0

    def start(self, host: str) -> None:
        state = self.root / host
        state.mkdir(parents=True, exist_ok=True)
        env = child_env(COORD_DATABASE_URL=self.db_url, COORD_QUEUE_URL=self.queue_url, COORD_STATE_DIR=str(state),
                        **DAEMON_ENV)
        log = open(self.root / f"{host}.{self.started}.log", "wb")  # noqa: SIM115 -- the child writes it
        self.procs[host] = subprocess.Popen([sys.executable, "-m", "coord.cli", "worker"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.started += 1

    def kill(self, host: str) -> None:
        proc = self.procs[host]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def alive(self) -> list[str]:
        return [h for h, p in self.procs.items() if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs_tail(self, n: int = 30) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(lines[-n:]))
        return "\n".join(out)


def _replay(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an API call; on Unavailable (the server is away) wait and replay it. Safe: the calls replayed
    here carry their ids (delegate) or their fencing token (complete)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call(*args, **kwargs)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _agent(values: dict[str, Any], name: str, n_tasks: int, lease: float, stop: Any, ready: Any, out: Any) -> None:
    """Child process: an agent that delegates `n_tasks` to the target (a thread) while it claims and
    completes the target's tasks, until the parent says stop. Says when it is connected; reports every
    claim it got."""
    from coord.logs import configure_logging

    configure_logging("warning", "json")
    coord = Coordinator(load_settings(overrides=values, env={}).settings)
    ready.put(name)
    errors: list[str] = []

    def produce() -> None:
        try:
            for i in range(n_tasks):
                _replay(coord.delegate, BOSS, TARGET, {"title": f"{name} #{i}"}, id=f"{name}-{i:05d}")
        except Exception as exc:
            errors.append(f"delegate: {type(exc).__name__}: {exc}")

    producer = threading.Thread(target=produce)
    producer.start()
    claims: list[tuple[str, int]] = []
    lost_leases = 0
    try:
        while not stop.is_set():
            try:
                claim = coord.claim_next(TARGET, claimer=name, lease_seconds=lease)
            except Unavailable:
                time.sleep(0.2)  # a claim is not replayed blindly: a lost one comes back when its lease ends
                continue
            if claim is None:
                time.sleep(0.2)  # an idle agent polls gently: the machine is shared with the workers
                continue
            claims.append((claim.task_id, claim.token))
            try:
                _replay(coord.complete, claim.task_id, claim.token, {"by": name})
            except LeaseLost:
                lost_leases += 1
    except Exception as exc:
        errors.append(f"claim: {type(exc).__name__}: {exc}")
    producer.join()
    coord.close()
    out.put({"name": name, "claims": claims, "lost_leases": lost_leases, "errors": errors})


def _state(coord: Coordinator) -> dict[str, int]:
    with coord.db.reader() as s:
        tasks = dict(s.execute(select(Task.status, func.count()).group_by(Task.status)).all())
        outbox = dict(s.execute(select(OutboxJob.status, func.count()).group_by(OutboxJob.status)).all())
        notified = s.scalar(
            select(func.count()).select_from(InboxMessage).where(InboxMessage.kind == "new_coordination_task")
        )
        reruns = s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.attempts > 1))
    return {"tasks": sum(tasks.values()), "completed": tasks.get("completed", 0),
            "outbox_pending": outbox.get("pending", 0), "outbox_done": outbox.get("done", 0),
            "outbox_failed": outbox.get("failed", 0), "notified": int(notified or 0), "job_reruns": int(reruns or 0)}


def _duplicate_notifications(coord: Coordinator) -> int:
    with coord.db.reader() as s:
        rows = s.execute(
            select(InboxMessage.agent_id, InboxMessage.kind, InboxMessage.ref_id, func.count())
            .group_by(InboxMessage.agent_id, InboxMessage.kind, InboxMessage.ref_id)
            .having(func.count() > 1)
        ).all()
    return len(rows)


def _wait_settled(coord: Coordinator, total: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        st = _state(coord)
        if (st["tasks"] == total and st["completed"] == total and st["outbox_pending"] == 0
                and st["notified"] == total):
            return st
        if time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def _setup(tmp_path: Path, db_url: str, queue_url: str) -> tuple[Coordinator, dict[str, Any]]:
    _flush(queue_url)
    values = {"state_dir": str(tmp_path / "agents"), "database_url": db_url, "queue_url": queue_url,
              "dispatch": "queue", "log_level": "warning"}
    coord = Coordinator(load_settings(overrides=values, env={}).settings)
    coord.register_agent(BOSS, "Plans the work and hands it out", expertise=["planning"])
    coord.register_agent(TARGET, "Does the work it is given", expertise=["work"])
    return coord, values


class Agents:
    """The agent processes of one run (spawned: each its own interpreter and Coordinator). Returns once
    every one is connected, so a fault the test injects next hits agents that are running, not one still
    opening its Coordinator (which, by design, fails at once when the database is unreachable)."""

    def __init__(self, values: dict[str, Any], n_procs: int, per_proc: int, lease: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.out, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_agent, daemon=True,
                                  args=(values, f"agent{p}", per_proc, lease, self.stop, ready, self.out))
                      for p in range(n_procs)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            ready.get(timeout=120)

    def collect(self) -> list[dict[str, Any]]:
        self.stop.set()
        results = [self.out.get(timeout=120) for _ in self.procs]
        for proc in self.procs:
            proc.join(timeout=30)
        return results

    def terminate(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _wait_workers(coord: Coordinator, cluster: Cluster, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {p.pid for p in cluster.procs.values() if p.poll() is None}
        with coord.db.reader() as s:
            seen = set(s.scalars(select(WorkerHeartbeat.pid).where(WorkerHeartbeat.pid.in_(pids))))
        if len(seen) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"workers did not report within {timeout}s\n{cluster.logs_tail()}")


N_DELEGATIONS = 5_000
N_WORKERS, N_AGENTS, N_KILLS = 3, 4, 5


def test_three_workers_four_agents_5000_delegations_with_sigkills(tmp_path: Path, pg_database: str) -> None:
    _skip_without_servers()
    queue_url = _redis_db(REDIS_DB_KILL)
    coord, values = _setup(tmp_path, pg_database, queue_url)
    cluster = Cluster(tmp_path / "hosts", pg_database, queue_url)
    hosts = [f"host{i}" for i in range(N_WORKERS)]
    started = time.monotonic()
    agents = None
    try:
        for host in hosts:
            cluster.start(host)
        _wait_workers(coord, cluster, N_WORKERS)
        agents = Agents(values, N_AGENTS, N_DELEGATIONS // N_AGENTS, lease=600)
        # Kill while work is flowing: one SIGKILL per step of the delegation run, each victim replaced.
        kills = 0
        while kills < N_KILLS:
            time.sleep(1.5)
            if _state(coord)["tasks"] < (kills + 1) * N_DELEGATIONS // (N_KILLS + 2):
                continue
            victim = hosts[kills % N_WORKERS]
            cluster.kill(victim)
            cluster.start(victim)
            kills += 1
        final = _wait_settled(coord, N_DELEGATIONS, timeout=150)
        results = agents.collect()
        alive = cluster.alive()
    finally:
        if agents is not None:
            agents.terminate()
        cluster.stop()
        _flush(queue_url)
    elapsed = time.monotonic() - started

    claims = Counter(task_id for r in results for task_id, _ in r["claims"])
    claimed_twice = sum(1 for n in claims.values() if n > 1)
    lost = N_DELEGATIONS - final["completed"] + final["outbox_pending"] + (N_DELEGATIONS - final["notified"])
    dupes = _duplicate_notifications(coord)
    with coord.db.reader() as s:
        retried_tasks = s.scalar(select(func.count()).select_from(Task).where(Task.attempts != 1))
    coord.close()
    print(f"\nscale-out: {N_WORKERS} workers, {N_AGENTS} agent processes, {N_DELEGATIONS} delegations, "
          f"{N_KILLS} SIGKILLs, {elapsed:.1f}s: lost {lost}, claimed twice {claimed_twice}, "
          f"duplicate notifications {dupes}; outbox jobs run again after a kill {final['job_reruns']}; "
          f"state {final}")
    assert not [e for r in results for e in r["errors"]], [r["errors"] for r in results]
    assert sorted(alive) == hosts, cluster.logs_tail()
    assert final["tasks"] == N_DELEGATIONS
    assert lost == 0, f"{final}\n{cluster.logs_tail()}"
    assert final["outbox_failed"] == 0
    assert claimed_twice == 0 and sum(claims.values()) == N_DELEGATIONS and retried_tasks == 0
    assert dupes == 0


def _pg_control() -> tuple[list[str] | None, str]:
    """The pg_ctlcluster command for the test server, or None and why the test cannot restart it."""
    host = make_url(PG_URL).host or "localhost"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None, f"PostgreSQL at {host} is not on this machine"
    if os.geteuid() != 0:
        return None, "restarting PostgreSQL needs root (pg_ctlcluster)"
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        return None, "pg_ctlcluster is not installed"
    port = str(make_url(PG_URL).port or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
    for version, cluster, cluster_port, *_rest in (line.split() for line in listing.splitlines() if line.strip()):
        if cluster_port == port:
            return ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster], ""
    return None, f"no local PostgreSQL cluster listens on port {port}"


def _pg_ready() -> bool:
    return _reachable_pg() is None


@pytest.fixture
def restart_database() -> Any:
    """Like conftest's pg_database, but dropped through a connection opened after the restart (a pooled
    one from before it is dead)."""
    from sqlalchemy import create_engine, text

    _skip_without_servers()
    name = f"coord_t_{os.getpid()}_{os.urandom(4).hex()}"

    def admin(sql: str) -> None:
        engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        try:
            with engine.connect() as c:
                c.execute(text(sql))
        finally:
            engine.dispose()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_restart_mid_run_daemon_recovers(tmp_path: Path, restart_database: str) -> None:
    pg_database = restart_database
    control, why = _pg_control()
    if control is None:
        print(f"SKIP PostgreSQL restart: {why}")
        pytest.skip(why)
    queue_url = _redis_db(REDIS_DB_RESTART)
    n_delegations, n_agents = 600, 2
    coord, values = _setup(tmp_path, pg_database, queue_url)
    cluster = Cluster(tmp_path / "hosts", pg_database, queue_url)
    agents = None
    try:
        for host in ("host0", "host1"):
            cluster.start(host)
        _wait_workers(coord, cluster, 2)
        pids = {h: p.pid for h, p in cluster.procs.items()}
        # A short claim lease: a claim whose answer was lost in the restart comes back to pending soon.
        agents = Agents(values, n_agents, n_delegations // n_agents, lease=5)
        while _replay(_state, coord)["tasks"] < n_delegations // 3:
            time.sleep(0.3)
        restart_at = time.time()
        done = subprocess.run([*control, "restart"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        restart_s = time.time() - restart_at
        final = _replay(_wait_settled, coord, n_delegations, timeout=120)
        results = agents.collect()

        def beats() -> dict[int, Any]:
            with coord.db.reader() as s:
                return dict(s.execute(select(WorkerHeartbeat.pid, WorkerHeartbeat.seen_at)
                                      .where(WorkerHeartbeat.pid.in_(pids.values()))).all())

        # Each daemon beats again after the restart (every second; the first try may meet the server still
        # starting and wait its reconnect pause): the work can settle before that.
        deadline = time.monotonic() + 30
        while not all(seen.timestamp() > restart_at + restart_s for seen in _replay(beats).values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        last_beats = _replay(beats)
        alive = cluster.alive()
    finally:
        if agents is not None:
            agents.terminate()
        cluster.stop()
        _flush(queue_url)
        if not _pg_ready():  # whatever happened, leave the server running for everyone else
            subprocess.run([*(control or []), "start"], capture_output=True, timeout=120)

    lost = n_delegations - final["completed"] + final["outbox_pending"] + (n_delegations - final["notified"])
    dupes = _duplicate_notifications(coord)
    coord.close()
    print(f"\nPostgreSQL restart ({restart_s:.1f}s) mid-run: lost {lost}, duplicate notifications {dupes}, "
          f"claims whose lease was lost {sum(r['lost_leases'] for r in results)}, "
          f"outbox jobs run again {final['job_reruns']}; state {final}")
    assert not [e for r in results for e in r["errors"]], [r["errors"] for r in results]
    assert sorted(alive) == ["host0", "host1"], f"a daemon died in the restart\n{cluster.logs_tail()}"
    assert len(last_beats) == 2 and all(seen.timestamp() > restart_at + restart_s for seen in last_beats.values()), (
        last_beats, cluster.logs_tail())
    assert lost == 0 and final["outbox_failed"] == 0, f"{final}\n{cluster.logs_tail()}"
    assert dupes == 0
