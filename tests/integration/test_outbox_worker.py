"""The worker's side of the outbox on SQLite and PostgreSQL: batches, the reconciler, periodic claims."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from sqlalchemy import insert, update

from coord.client import Coordinator
from coord.clock import utcnow
from coord.db.models import OutboxJob, Task
from coord.outbox import SilentBell, run_batch
from coord.periodic import claim_period, period_start, reconcile, run_periodic
from coord.states import JOB_DISPATCH
from worker.reload import merge_live


@pytest.fixture
def coord(tmp_path: Path, db_url: str) -> Any:
    c = Coordinator(make_settings(tmp_path, db_url, dispatch="queue", reconcile_interval_seconds=1), bell=SilentBell())
    c.register_agent("sender", "delegates")
    c.register_agent("receiver", "receives")
    with c.db.session() as s:  # the registrations' `embed` jobs (coord.matching.index) are not these tests' rows
        s.execute(update(OutboxJob).where(OutboxJob.job == "embed").values(status="done"))
    yield c
    c.close()


def _rows(c: Coordinator) -> dict[str, OutboxJob]:
    with c.db.reader() as s:
        return {r.ref_id: r for r in s.query(OutboxJob)}


def test_one_bell_runs_a_batch_of_fresh_rows_and_the_other_bells_are_no_ops(coord: Coordinator) -> None:
    ids = [coord.delegate("sender", "receiver", {"title": str(i)}, id=f"t{i}").coordination_id for i in range(5)]
    outbox = {ref: r.id for ref, r in _rows(coord).items()}
    calls: list[str] = []

    def handler(session: Any, row: OutboxJob, ctx: Any) -> list[str]:
        calls.append(row.ref_id)
        if row.ref_id == "t2":
            raise RuntimeError("only this one fails")
        return []

    outcomes, _ = run_batch(coord.db, outbox["t4"], {JOB_DISPATCH: handler}, None, batchable=frozenset({JOB_DISPATCH}))
    # Oldest first, all in one batch; t2's error aborted the first pass, then each ran in a savepoint of its own.
    assert calls[-len(ids):] == ids
    assert {o.outbox_id: o.status for o in outcomes}[outbox["t2"]] == "retry"
    assert sum(o.status == "done" for o in outcomes) == 4
    rows = _rows(coord)
    assert rows["t2"].status == "pending" and rows["t2"].attempts == 1 and "only this one" in rows["t2"].last_error
    assert all(rows[t].status == "done" for t in ("t0", "t1", "t3", "t4"))
    # The other rows' bells: nothing to do, no second run.
    assert run_batch(coord.db, outbox["t0"], {JOB_DISPATCH: handler}, None)[0][0].status == "skipped"
    # The failed row is no longer fresh: once due it runs alone.
    with coord.db.session() as s:
        s.execute(update(OutboxJob).where(OutboxJob.id == outbox["t2"]).values(next_attempt_at=utcnow()))
    coord.delegate("sender", "receiver", {"title": "new"}, id="t9")
    calls.clear()
    run_batch(coord.db, outbox["t2"], {JOB_DISPATCH: lambda s, r, c: calls.append(r.ref_id)}, None,
              batchable=frozenset({JOB_DISPATCH}))
    assert calls == ["t2"]


def test_reconcile_rings_lost_bells_but_not_a_backlog_or_a_running_job(coord: Coordinator) -> None:
    for i in range(3):
        coord.delegate("sender", "receiver", {"title": str(i)}, id=f"r{i}")
    rows = _rows(coord)
    now = utcnow() + timedelta(seconds=5)
    with coord.db.session() as s:  # r1 is running: taken under a lease
        lease = now + timedelta(seconds=600)
        s.execute(update(OutboxJob).where(OutboxJob.ref_id == "r1").values(attempts=1, next_attempt_at=lease))
    with coord.db.session() as s:
        assert reconcile(s, coord.db.backend, coord.settings, now, queued=500)["ring"] == []  # backlog: wait
    with coord.db.session() as s:
        rung = reconcile(s, coord.db.backend, coord.settings, now, queued=0)["ring"]
    assert sorted(rung) == sorted([rows["r0"].id, rows["r2"].id])
    with coord.db.session() as s:  # just rung: quiet for an interval before ringing again
        assert reconcile(s, coord.db.backend, coord.settings, now, queued=0)["ring"] == []
    with coord.db.session() as s:
        later = now + timedelta(seconds=61)
        assert len(reconcile(s, coord.db.backend, coord.settings, later, queued=500)["ring"]) == 2
    with coord.db.session() as s:
        assert reconcile(s, coord.db.backend, coord.settings, now, queued=0, room=0)["ring"] == []


def test_a_period_is_claimed_once(coord: Coordinator) -> None:
    now = utcnow()
    start = period_start(now, 10)
    assert start <= now < start + timedelta(seconds=10) and start.timestamp() % 10 == 0
    with coord.db.session() as s:
        assert claim_period(s, coord.db.backend, "job", start, worker_id="a", now=now)
    with coord.db.session() as s:
        assert not claim_period(s, coord.db.backend, "job", start, worker_id="b", now=now)
        assert claim_period(s, coord.db.backend, "job", start + timedelta(seconds=10), worker_id="b", now=now)
    assert run_periodic(coord.db, coord.settings, "reap_leases", worker_id="a", now=now) is not None
    assert run_periodic(coord.db, coord.settings, "reap_leases", worker_id="b", now=now) is None
    result = run_periodic(coord.db, coord.settings, "expire_approvals", worker_id="a", now=now)
    assert result is not None and ("expired" in result or "skipped" in result)


def test_reload_applies_live_settings_and_holds_the_rest(tmp_path: Path) -> None:
    old = make_settings(tmp_path, safe_mode=True, worker_concurrency=2)
    new = make_settings(tmp_path, safe_mode=False, worker_concurrency=8, log_level="debug")
    merged, live, restart = merge_live(old, new)
    assert (merged.safe_mode, merged.log_level, merged.worker_concurrency) == (False, "debug", 2)
    assert set(live) == {"safe_mode", "log_level"} and restart == ["worker_concurrency"]


def test_overlapping_batches_of_concurrent_workers_split_the_rows(coord: Coordinator) -> None:
    """Four workers take the bells of one backlog in queue order, as consumers of one queue do, so their
    batches overlap all the time. Every row runs exactly once, every target is told once, and no take
    waits on another (on PostgreSQL a take that locked its own row outside SKIP LOCKED deadlocked here)."""
    from concurrent.futures import ThreadPoolExecutor

    from coord.jobs import HANDLERS, JobContext

    n = 600
    bells = _backlog(coord, n)
    ctx = JobContext(coord.settings, coord.db)

    queue = iter(bells)  # next() on one iterator from four threads: each bell is taken by one worker

    def worker(_k: int) -> list[Any]:
        outcomes = []
        for bell in queue:
            done, _ = run_batch(coord.db, bell, HANDLERS, ctx, batchable=frozenset({JOB_DISPATCH}), limit=10)
            outcomes.extend(done)
        return outcomes

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for part in pool.map(worker, range(4)) for o in part]
    ran = [o.outbox_id for o in outcomes if o.status == "done"]
    assert sorted(ran) == sorted(bells), "a row ran twice or never"
    assert {o.status for o in outcomes} <= {"done", "skipped"}
    assert len(coord.inbox("receiver", limit=10 * n)) == n


def _backlog(c: Coordinator, n: int) -> list[str]:
    """`n` delegations with their fresh dispatch rows, in two statements (delegate() is tested elsewhere)."""
    now = utcnow()
    with c.db.session() as s:
        s.execute(insert(Task), [
            dict(id=f"t{i}", from_agent="sender", to_agent="receiver", task_type="delegation", payload={"n": i},
                 payload_hash=f"{i:064x}", priority=1, status="pending", created_at=now + timedelta(microseconds=i),
                 updated_at=now, lease_token=0, attempts=0, max_attempts=3)
            for i in range(n)
        ])
        s.execute(insert(OutboxJob), [
            dict(id=f"o{i:04d}", job=JOB_DISPATCH, ref_id=f"t{i}", payload={}, status="pending", attempts=0,
                 max_attempts=5, created_at=now + timedelta(microseconds=i), next_attempt_at=now)
            for i in range(n)
        ])
    return [f"o{i:04d}" for i in range(n)]


def test_a_batch_takes_at_most_its_limit_from_a_long_backlog(coord: Coordinator) -> None:
    """Seen on PostgreSQL: `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` may run its
    subquery again for each row it scans, and each run skips the rows the earlier ones locked: one bell took
    890 rows of a 2,000-row backlog in a single statement that ran for seconds, while the other workers idled."""
    from coord.jobs import HANDLERS, JobContext

    bells = _backlog(coord, 1500)
    done, _ = run_batch(coord.db, bells[700], HANDLERS, JobContext(coord.settings, coord.db),
                        batchable=frozenset({JOB_DISPATCH}), limit=50)
    ran = [o.outbox_id for o in done if o.status == "done"]
    assert len(ran) == 50 and bells[700] in ran
    assert sorted(set(ran) - {bells[700]}) == bells[:49], "the bell's own row, then the oldest"
    assert sum(r.status == "done" for r in _rows(coord).values() if r.job == JOB_DISPATCH) == 50


def test_a_delegation_behind_an_untaken_one_shares_its_bell_and_full_batches_ring_on(tmp_path: Path) -> None:
    """SQLite, queue dispatch: while an earlier dispatch job waits untaken, a new delegation rings no bell
    of its own (the earlier bell's batch takes it); a batch that hit its limit rings for the rest."""
    from conftest import RecordingBell

    from coord.jobs import HANDLERS, JobContext

    bell = RecordingBell()
    c = Coordinator(make_settings(tmp_path, dispatch="queue"), bell=bell)
    try:
        c.register_agent("sender", "delegates")
        c.register_agent("receiver", "receives")
        bell.rung.clear()  # the registrations' embed jobs
        for i in range(5):
            c.delegate("sender", "receiver", {"title": str(i)}, id=f"t{i}")
        rows = _rows(c)
        assert bell.rung == [rows["t0"].id], "only the first delegation needed a bell"

        ctx = JobContext(c.settings, c.db)
        outcomes, follow_ups = run_batch(c.db, bell.rung[0], HANDLERS, ctx, batchable=frozenset({JOB_DISPATCH}),
                                         limit=3)
        assert [o.status for o in outcomes] == ["done"] * 3
        assert follow_ups == [rows["t3"].id], "a full batch rings for the oldest row left"
        outcomes, follow_ups = run_batch(c.db, follow_ups[0], HANDLERS, ctx, batchable=frozenset({JOB_DISPATCH}),
                                         limit=3)
        assert [o.status for o in outcomes] == ["done"] * 2 and follow_ups == []
        assert sorted(m.ref_id for m in c.inbox("receiver")) == [f"t{i}" for i in range(5)]

        c.delegate("sender", "receiver", {"title": "after"}, id="t5")
        assert bell.rung[-1] == _rows(c)["t5"].id, "nothing waits untaken any more: a bell of its own"
    finally:
        c.close()


def test_inline_dispatch_rings_every_delegation(tmp_path: Path) -> None:
    """In-process dispatch runs each rung row alone: no delegation may rely on another's bell."""
    c = Coordinator(make_settings(tmp_path, dispatch="inline"))
    try:
        c.register_agent("sender", "delegates")
        c.register_agent("receiver", "receives")
        for i in range(3):
            c.delegate("sender", "receiver", {"title": str(i)}, id=f"t{i}")
        assert sorted(m.ref_id for m in c.inbox("receiver")) == ["t0", "t1", "t2"]
    finally:
        c.close()


def test_a_many_at_once_batch_that_raises_is_rerun_a_job_at_a_time(coord: Coordinator) -> None:
    """The one-transaction batch rolls back whole (its take included); the two-step path then takes the
    rows, and a savepoint per job keeps the failure with its own row."""
    from coord.outbox import ManyAtOnce

    for i in range(4):
        coord.delegate("sender", "receiver", {"title": str(i)}, id=f"t{i}")
    outbox = {ref: r.id for ref, r in _rows(coord).items()}
    seen: list[list[str]] = []

    def dispatch_all(session: Any, rows: list[OutboxJob], ctx: Any) -> list[str]:
        seen.append([r.ref_id for r in rows])
        if any(r.ref_id == "t1" for r in rows):
            raise RuntimeError("t1 cannot be dispatched")
        return []

    outcomes, _ = run_batch(coord.db, outbox["t0"], {JOB_DISPATCH: ManyAtOnce(dispatch_all)}, None,
                            batchable=frozenset({JOB_DISPATCH}))
    assert seen[0] == ["t0", "t1", "t2", "t3"]  # the one-transaction try
    assert {o.outbox_id: o.status for o in outcomes} == {
        outbox["t0"]: "done", outbox["t1"]: "retry", outbox["t2"]: "done", outbox["t3"]: "done"}
    rows = _rows(coord)
    assert (rows["t1"].status, rows["t1"].attempts) == ("pending", 1)
    assert "cannot be dispatched" in rows["t1"].last_error
    assert all(rows[t].attempts == 1 for t in ("t0", "t2", "t3")), "the failed try counted no attempt of its own"
