"""Approve and expire racing on the same requests from two processes (invariant 6 under concurrency).

The two processes move in lockstep: before each request both wait at a barrier, then one approves it
(at a time just inside its TTL) while the other runs the periodic expiry (at a time just past that
request's expiry, so the expiry may take that request and no later one), each after a few random
milliseconds. Every request is thus contested by both at the same moment. Afterwards every request is in
exactly one final state, its proposal agrees, and an `execute` job exists for exactly the approved ones.

Iterations: 1,000 requests on SQLite, 300 on PostgreSQL (each PostgreSQL approval is a handful of round
trips; 1,000 there adds ~20 s on a 2-core machine). COORD_TEST_RACE_N overrides both.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_settings
from sqlalchemy import insert, select

from coord.db import open_database
from coord.db.models import Approval, AuditEvent, OutboxJob, Proposal

N = {"sqlite": 1_000, "postgres": 300}
N_OVERRIDE = int(os.environ.get("COORD_TEST_RACE_N", "0"))
T0 = datetime(2030, 1, 1, tzinfo=UTC)
TTL = timedelta(hours=24)
STEP = timedelta(seconds=1)  # request i expires at T0 + TTL + i * STEP
BARRIER_TIMEOUT = 120.0
# The expiry is one statement and an approval a few, so without a random start the expiry would nearly
# always reach a request first; the jitter lets either side win any request.
JITTER = 0.004


def expires(i: int) -> datetime:
    return T0 + TTL + i * STEP


def _open(url: str) -> object:
    from coord.db.engine import Database
    from coord.logs import configure_logging

    configure_logging("error")
    db = Database(url, sqlite_synchronous="NORMAL")
    db.ping()  # imports done and a connection open before the start line
    return db


def _approver(url: str, ids: list[str], barrier: object) -> None:
    from coord.approvals import approve
    from coord.errors import Conflict

    db = _open(url)
    for i, approval_id in enumerate(ids):
        barrier.wait(BARRIER_TIMEOUT)  # type: ignore[attr-defined]
        time.sleep(random.uniform(0, JITTER))
        try:
            with db.session() as s:  # type: ignore[attr-defined]
                approve(s, db.backend, approval_id, by="alice", now=expires(i) - STEP / 2)  # type: ignore[attr-defined]
        except Conflict:
            pass  # expiry won this one: the refusal is the expected answer
    db.dispose()  # type: ignore[attr-defined]


def _expirer(url: str, n: int, barrier: object) -> None:
    from coord.approvals import expire_due

    db = _open(url)
    for i in range(n):
        barrier.wait(BARRIER_TIMEOUT)  # type: ignore[attr-defined]
        time.sleep(random.uniform(0, JITTER))
        with db.session() as s:  # type: ignore[attr-defined]
            expire_due(s, expires(i), limit=1)
    db.dispose()  # type: ignore[attr-defined]


def _seed(db: object, n: int) -> list[str]:
    proposals, approvals = [], []
    for i in range(n):
        pid, aid = f"p{i:05d}", f"a{i:05d}"
        proposals.append(dict(id=pid, kind="create_agent", details={}, proposed_by="coordination-system",
                              confidence=0.8, confidence_basis={}, status="pending_approval",
                              dedupe_key=f"race:{i}", created_at=T0, updated_at=T0))
        approvals.append(dict(id=aid, proposal_id=pid, action="create_agent", details={},
                              requested_by="coordination-system", safety_score=0.9, reason="race",
                              status="pending", created_at=T0, expires_at=expires(i)))
    with db.session() as s:  # type: ignore[attr-defined]
        s.execute(insert(Proposal), proposals)
        s.execute(insert(Approval), approvals)
    return [a["id"] for a in approvals]


@pytest.mark.slow
def test_approve_and_expire_race(tmp_path: Path, db_url: str) -> None:
    n = N_OVERRIDE or N["sqlite" if db_url.startswith("sqlite") else "postgres"]
    db = open_database(make_settings(tmp_path, db_url, sqlite_synchronous="NORMAL"))
    ids = _seed(db, n)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_approver, args=(db_url, ids, barrier)),
             ctx.Process(target=_expirer, args=(db_url, n, barrier))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0, 0]

    with db.reader() as s:
        approvals = {a.id: a for a in s.scalars(select(Approval))}
        proposals = {p.id: p.status for p in s.scalars(select(Proposal))}
        executes = Counter(s.scalars(select(OutboxJob.ref_id).where(OutboxJob.job == "execute")))
        decisions = Counter(s.scalars(select(AuditEvent.subject_id).where(
            AuditEvent.action.in_(["approval.approved", "approval.expired"]))))
    db.dispose()
    outcome = Counter(a.status for a in approvals.values())
    assert set(outcome) <= {"approved", "expired"} and sum(outcome.values()) == n, outcome
    for a in approvals.values():
        assert proposals[a.proposal_id] == a.status
        assert executes[a.proposal_id] == (1 if a.status == "approved" else 0)
        assert decisions[a.id] == 1  # one decision each, never two
        assert a.decided_by == ("alice" if a.status == "approved" else "expiry")
    # Both sides won some: each request really was contested.
    assert outcome["approved"] > 0 and outcome["expired"] > 0, outcome
