"""Claiming under leases (invariant 2): exactly once under real concurrency, expiry, fencing, order.

The concurrency test runs real processes (spawn), each with its own Coordinator built from the same
setting values, against a real SQLite file and a real PostgreSQL database.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from conftest import make_settings
from sqlalchemy import func, insert, select

from coord.client import Coordinator
from coord.clock import utcnow
from coord.db import sqlite_queue
from coord.db.models import InboxMessage, Task
from coord.delegation import reap_expired_leases
from coord.errors import LeaseLost, NotFound
from coord.settings import Settings, load_settings

N_TASKS = 5_000
N_PROCS = 8
WORKER = "worker-agent"
BOSS = "boss-agent"


def _values(settings: Settings) -> dict[str, Any]:
    """Plain setting values a spawned child can rebuild its own Settings from. SQLite: WAL without an
    fsync per commit (the locking is the same, the waiting is shorter)."""
    return {"state_dir": str(settings.state_dir), "database_url": settings.db_url, "dispatch": "inline",
            "sqlite_synchronous": "NORMAL"}


def _claimer(values: dict[str, Any], name: str) -> list[tuple[str, int, str]]:
    """Child process: claim and complete until nothing is left; any exception fails the parent's test.
    Odd-numbered claimers complete and claim the next task in one call, the others in two."""
    from coord.logs import configure_logging

    configure_logging("warning")
    coordinator = Coordinator(load_settings(overrides=values, env={}).settings)
    combined = int(name.rsplit("-", 1)[1]) % 2 == 1
    seen: list[tuple[str, int, str]] = []
    try:
        claim = coordinator.claim_next(WORKER, claimer=name, lease_seconds=600)
        while claim is not None:
            seen.append((claim.task_id, claim.token, name))
            if combined:
                claim = coordinator.complete_and_claim(
                    claim.task_id, claim.token, {"by": name}, agent_id=WORKER, claimer=name, lease_seconds=600
                )
            else:
                coordinator.complete(claim.task_id, claim.token, {"by": name})
                claim = coordinator.claim_next(WORKER, claimer=name, lease_seconds=600)
    finally:
        coordinator.close()
    return seen


def _register(c: Coordinator) -> None:
    c.register_agent(BOSS, "Plans the work and hands it out", expertise=["planning"])
    c.register_agent(WORKER, "Does the work it is given", expertise=["work"])


def _bulk_tasks(c: Coordinator, n: int) -> list[str]:
    """n pending tasks in the real schema, in one executemany (the API path is tested elsewhere)."""
    now = utcnow()
    rows = [
        dict(id=f"t{i:05d}", from_agent=BOSS, to_agent=WORKER, task_type="delegation", payload={"n": i},
             payload_hash=f"{i:064x}", priority=i % 4, status="pending", created_at=now + timedelta(microseconds=i),
             updated_at=now, lease_token=0, attempts=0, max_attempts=3)
        for i in range(n)
    ]
    with c.db.session() as s:
        s.execute(insert(Task), rows)
    return [r["id"] for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes on a loaded 2-core machine; a hang still fails
def test_every_task_is_claimed_exactly_once_by_concurrent_processes(coordinator: Coordinator, settings: Settings):
    _register(coordinator)
    ids = _bulk_tasks(coordinator, N_TASKS)

    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with ctx.Pool(N_PROCS) as pool:
        per_proc = pool.starmap(_claimer, [(_values(settings), f"claimer-{p}") for p in range(N_PROCS)])
    elapsed = time.monotonic() - started

    claims = [c for proc in per_proc for c in proc]
    counts = Counter(task_id for task_id, _token, _who in claims)
    assert [t for t, n in counts.items() if n > 1] == [], "a task was claimed twice"
    assert set(counts) == set(ids), f"{len(set(ids) - set(counts))} tasks were never claimed"
    assert {token for _t, token, _w in claims} == {1}
    busy = [len(proc) for proc in per_proc]
    assert sum(1 for n in busy if n) >= 2, f"claims were not concurrent: {busy}"

    with coordinator.db.reader() as s:
        status = dict(s.execute(select(Task.status, func.count()).group_by(Task.status)).all())
        attempts = set(s.scalars(select(Task.attempts).distinct()))
        by = dict(s.execute(select(Task.id, Task.result)).all())
        notified = s.scalar(select(func.count()).select_from(InboxMessage).where(InboxMessage.kind == "task_completed"))
    assert status == {"completed": N_TASKS}
    assert attempts == {1}
    assert all(by[t]["by"] == who for t, _tok, who in claims), "a result was written by a non-holder"
    assert notified == N_TASKS
    print(f"\n{N_TASKS} claims+completes by {N_PROCS} processes on {coordinator.db.dialect}: "
          f"{elapsed:.1f}s, per process {busy}")


# --- leases, with a clock the test moves ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clocked(settings: Settings):
    clock = Clock()
    c = Coordinator(settings, clock=clock)
    _register(c)
    yield c, clock
    c.close()


def _reap(c: Coordinator) -> dict[str, int]:
    with c.db.session() as s:
        return reap_expired_leases(s, c.db.backend, c.now())


def _delegate(c: Coordinator, title: str, **kw: Any) -> str:
    return c.delegate(BOSS, WORKER, {"title": title}, **kw).coordination_id


def test_stalled_holder_loses_its_lease_to_the_next_claimer(coordinator: Coordinator):
    """Real time: a 0.3 s lease runs out while its holder stalls; its late complete is refused."""
    _register(coordinator)
    task_id = _delegate(coordinator, "slow job")
    first = coordinator.claim_next(WORKER, claimer="stalled", lease_seconds=0.3)
    assert first is not None and first.task_id == task_id
    assert coordinator.claim_next(WORKER, claimer="eager") is None, "a live lease was taken"

    time.sleep(0.45)
    assert _reap(coordinator) == {"requeued": 1, "failed": 0}
    second = coordinator.claim_next(WORKER, claimer="eager")
    assert second is not None and second.task_id == task_id and second.token > first.token

    with pytest.raises(LeaseLost, match="claimed again"):
        coordinator.complete(task_id, first.token, {"by": "stalled"})
    with pytest.raises(LeaseLost):
        coordinator.heartbeat(task_id, first.token)
    coordinator.complete(task_id, second.token, {"by": "eager"})

    info = coordinator.get_task(task_id)
    assert (info.status, info.result, info.attempts) == ("completed", {"by": "eager"}, 2)


def test_expired_lease_without_reaper_refuses_complete(clocked):
    c, clock = clocked
    task_id = _delegate(c, "job")
    claim = c.claim_next(WORKER, lease_seconds=5)
    clock.advance(6)
    with pytest.raises(LeaseLost, match="expired"):
        c.complete(task_id, claim.token)
    assert c.get_task(task_id).status == "claimed"  # nothing changed; the reaper will requeue it


def test_task_fails_after_max_attempts_expiries(clocked):
    c, clock = clocked
    assert c.settings.max_task_attempts == 3
    task_id = _delegate(c, "doomed")
    for attempt in (1, 2, 3):
        claim = c.claim_next(WORKER, lease_seconds=1)
        assert claim is not None and claim.attempt == attempt
        clock.advance(2)
        outcome = _reap(c)
        assert outcome == ({"requeued": 1, "failed": 0} if attempt < 3 else {"requeued": 0, "failed": 1})
    info = c.get_task(task_id)
    assert (info.status, info.attempts) == ("failed", 3)
    assert c.claim_next(WORKER) is None
    assert [m.kind for m in c.inbox(BOSS)] == ["task_failed"]


def test_heartbeat_extends_the_lease(clocked):
    c, clock = clocked
    task_id = _delegate(c, "long job")
    claim = c.claim_next(WORKER, lease_seconds=10)
    clock.advance(8)
    until = c.heartbeat(task_id, claim.token, lease_seconds=10)
    assert until == clock.now + timedelta(seconds=10)
    clock.advance(8)  # 16 s after the claim: past the first lease, inside the extended one
    assert _reap(c) == {"requeued": 0, "failed": 0}
    c.complete(task_id, claim.token, {"ok": True})
    assert c.get_task(task_id).status == "completed"


def test_foreign_token_is_refused(clocked):
    c, _clock = clocked
    task_id = _delegate(c, "mine")
    claim = c.claim_next(WORKER)
    for call in (lambda t: c.complete(task_id, t), lambda t: c.heartbeat(task_id, t),
                 lambda t: c.fail(task_id, t, "nope"), lambda t: c.release(task_id, t)):
        with pytest.raises(LeaseLost):
            call(claim.token + 1)
    info = c.get_task(task_id)
    assert (info.status, info.attempts, info.result) == ("claimed", 1, None)
    c.complete(task_id, claim.token)


def test_release_does_not_count_an_attempt(clocked):
    c, _clock = clocked
    task_id = _delegate(c, "give back")
    first = c.claim_next(WORKER)
    c.release(task_id, first.token)
    info = c.get_task(task_id)
    assert (info.status, info.attempts, info.claimed_by) == ("pending", 0, None)
    second = c.claim_next(WORKER)
    assert (second.task_id, second.attempt) == (task_id, 1)
    assert second.token > first.token
    with pytest.raises(LeaseLost):
        c.complete(task_id, first.token)


def test_claims_follow_priority_then_age(clocked):
    c, clock = clocked
    order = [("low-old", "low"), ("crit-old", "critical"), ("medium", "medium"), ("high", "high"),
             ("crit-new", "critical"), ("low-new", "low")]
    ids = {}
    for title, prio in order:
        ids[_delegate(c, title, priority=prio)] = title
        clock.advance(1)
    claimed = []
    while (claim := c.claim_next(WORKER)) is not None:
        claimed.append(ids[claim.task_id])
    assert claimed == ["crit-old", "crit-new", "high", "medium", "low-old", "low-new"]


def test_complete_and_claim_takes_the_next_task_in_one_call(clocked):
    c, clock = clocked
    ids = {}
    for title, prio in [("second", "high"), ("first", "critical"), ("third", "low")]:
        ids[_delegate(c, title, priority=prio)] = title
        clock.advance(1)
    claim = c.claim_next(WORKER, lease_seconds=30)
    done = []
    while claim is not None:
        info = c.get_task(claim.task_id)
        assert (info.status, info.lease_expires_at) == ("claimed", claim.lease_expires_at)
        done.append(ids[claim.task_id])
        claim = c.complete_and_claim(claim.task_id, claim.token, {"n": len(done)}, agent_id=WORKER, lease_seconds=30)
    assert done == ["first", "second", "third"]
    assert {c.get_task(t).status for t in ids} == {"completed"}
    assert sorted(m.ref_id for m in c.inbox(BOSS) if m.kind == "task_completed") == sorted(ids)


def test_complete_and_claim_with_a_stale_token_changes_nothing(clocked):
    c, clock = clocked
    first, second = _delegate(c, "one"), _delegate(c, "two")
    claim = c.claim_next(WORKER, lease_seconds=5)
    clock.advance(6)
    with pytest.raises(LeaseLost, match="expired"):
        c.complete_and_claim(claim.task_id, claim.token, {"late": True}, agent_id=WORKER)
    assert [c.get_task(t).status for t in (first, second)] == ["claimed", "pending"]
    assert c.inbox(BOSS) == []


def test_complete_and_claim_replayed_claims_afresh(clocked):
    """The answer of the first call was lost: the replay completes nothing twice and hands out a task
    nobody holds (the one claimed by the lost answer waits for its lease to lapse)."""
    c, _clock = clocked
    a, b, d = (_delegate(c, t) for t in ("a", "b", "c"))
    claim = c.claim_next(WORKER)
    lost = c.complete_and_claim(claim.task_id, claim.token, {"ok": 1}, agent_id=WORKER)
    again = c.complete_and_claim(claim.task_id, claim.token, {"ok": 1}, agent_id=WORKER)
    assert (claim.task_id, lost.task_id, again.task_id) == (a, b, d)
    assert [m.ref_id for m in c.inbox(BOSS)] == [a]


def test_complete_and_claim_on_an_empty_queue_returns_none(clocked):
    c, _clock = clocked
    task_id = _delegate(c, "only")
    claim = c.claim_next(WORKER)
    assert c.complete_and_claim(task_id, claim.token, agent_id=WORKER) is None
    assert c.get_task(task_id).status == "completed"


def test_a_removed_agent_claims_nothing(clocked):
    c, _clock = clocked
    _delegate(c, "orphan")
    c.remove_agent(WORKER)
    with pytest.raises(NotFound, match="was removed"):
        c.claim_next(WORKER)
    assert [t.status for t in c.tasks(agent_id=WORKER)] == ["pending"]


def test_a_claim_is_one_index_seek_however_long_the_queue(tmp_path):
    """SQLite: the claim's ORDER BY is the claim index's order, so no sort of the pending tasks."""
    c = Coordinator(make_settings(tmp_path))
    try:
        with c.db.raw_connection() as con:
            plan = con.execute("EXPLAIN QUERY PLAN " + sqlite_queue._CLAIM, ("w", "me", "t0", "t1")).fetchall()
    finally:
        c.close()
    details = " | ".join(row[-1] for row in plan)
    assert "ix_tasks_claim" in details and "TEMP B-TREE" not in details, details
