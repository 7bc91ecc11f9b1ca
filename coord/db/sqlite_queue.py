"""The task queue's hot paths on SQLite (delegate, claim, complete), as plain DB-API statements.

Agents run these in loops, so they should cost what SQLite costs: one `BEGIN IMMEDIATE` ... `COMMIT`
each, with a statement or two inside. Built through SQLAlchemy they cost several times the transaction
itself in Python (statement building, cache keys, result processing); here they are fixed SQL text that
sqlite3 keeps prepared. Only the common case runs here: a delegation to a missing agent (a gap, ranked
alternatives) and every error take the ORM path in coord/delegation.py.

PostgreSQL runs the same operations as Core statements (coord/delegation.py, Backend.claim_statement):
there a server round trip dwarfs the Python. The suite runs both engines through the same tests, so the
two stay in step. Values are written in the formats SQLAlchemy uses for these columns on SQLite (naive
UTC `YYYY-MM-DD HH:MM:SS.ffffff`, JSON text), so the ORM reads back exactly what this writes.

A claim first looks without any lock (a WAL read) whether the agent is active and has pending work:
agents that poll an empty queue never take the write lock from those that have work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

from coord.db.gate import GatedConnection
from coord.ids import new_id

_PEEK = (
    "SELECT (SELECT status FROM agents WHERE id = ?1),"
    " EXISTS (SELECT 1 FROM tasks WHERE to_agent = ?1 AND status = 'pending')"
)
# The pick's ORDER BY matches ix_tasks_claim column for column: one index seek, no sort.
_CLAIM = (
    "UPDATE tasks SET status = 'claimed', claimed_by = ?2, claimed_at = ?3, lease_expires_at = ?4,"
    " lease_token = lease_token + 1, attempts = attempts + 1, updated_at = ?3"
    " WHERE id = (SELECT id FROM tasks WHERE to_agent = ?1 AND status = 'pending'"
    "             ORDER BY priority DESC, created_at, id LIMIT 1)"
    " AND EXISTS (SELECT 1 FROM agents WHERE id = ?1 AND status = 'active')"
    " RETURNING id, lease_token, from_agent, task_type, priority, payload, attempts"
)
_COMPLETE = (
    "UPDATE tasks SET status = 'completed', completed_at = ?3, result = ?4, lease_expires_at = NULL,"
    " updated_at = ?3"
    " WHERE id = ?1 AND status = 'claimed' AND lease_token = ?2 AND lease_expires_at > ?3"
    " RETURNING from_agent, to_agent"
)
_STATE = "SELECT status, lease_token, lease_expires_at FROM tasks WHERE id = ?"
_NOTIFY = (
    "INSERT INTO inbox (id, agent_id, kind, ref_id, body, created_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_AGENTS = "SELECT (SELECT status FROM agents WHERE id = ?), (SELECT status FROM agents WHERE id = ?)"
_EXISTING = "SELECT from_agent, to_agent, payload_hash FROM tasks WHERE id = ?"
_NEW_TASK = (
    "INSERT INTO tasks (id, from_agent, to_agent, task_type, payload, payload_hash, priority, status,"
    " created_at, updated_at, lease_token, attempts, max_attempts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, 0, 0, ?)"
)
_NEW_JOB = (
    "INSERT INTO outbox (id, job, ref_id, payload, status, attempts, max_attempts, created_at, next_attempt_at)"
    " VALUES (?, ?, ?, '{}', 'pending', 0, ?, ?, ?)"
)
# A fresh job of the kind that no worker has taken yet: its bell is on its way, and the batch that bell
# starts takes every fresh row of the kind (coord.outbox.run_batch), one committed after it included.
_WAITING = "SELECT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending' AND job = ? AND attempts = 0)"


class ClaimedRow(NamedTuple):
    id: str
    lease_token: int
    from_agent: str
    task_type: str
    priority: int
    payload: dict[str, Any]
    attempts: int


class TaskState(NamedTuple):
    status: str
    lease_token: int
    lease_expires_at: datetime | None


def stored(moment: datetime) -> str:
    """A UTC datetime as SQLAlchemy's DateTime stores it on SQLite (see coord.db.types.UTCDateTime)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def loaded(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None


@contextmanager
def _immediate(con: GatedConnection) -> Iterator[None]:
    con.begin("BEGIN IMMEDIATE")  # through the writer gate (coord/db/gate.py)
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


class Delegated(NamedTuple):
    """What `delegate` found: `outbox_id` is set when the task was written (`ring`: whether it needs a
    bell of its own); else `from_status` or `existing` (from_agent, to_agent, payload_hash) say why not.
    Neither: the target is not an active agent (the caller's ORM path records the gap)."""

    outbox_id: str | None = None
    ring: bool = True
    from_status: str | None = "active"
    existing: tuple[str, str, str] | None = None


def delegate(db: Any, task: dict[str, Any], job: str, max_job_attempts: int, *, coalesce: bool) -> Delegated:
    """Write a pending task for an active target and its dispatch job, in one transaction; `task` holds
    the columns of coord/delegation.py's row. Checks in the ORM path's order: delegator, replay, target.

    Doorbell coalescing: while an earlier job of the kind waits untaken, its bell will start a batch
    that takes this one too, so this one is not rung: under load, one bell a batch instead of one a
    delegation (every extra bell costs the worker a queue round trip for nothing). If that bell is lost,
    the reconciler rings, as for any lost bell (invariant 1). Only with `coalesce`, i.e. when a worker
    runs the jobs in batches; a bell run in-process (`dispatch = "inline"`) runs its own row alone."""
    at = stored(task["created_at"])
    with db.raw_connection() as con, _immediate(con):
        from_status, to_status = con.execute(_AGENTS, (task["from_agent"], task["to_agent"])).fetchone()
        if from_status != "active":
            return Delegated(from_status=from_status)
        existing = con.execute(_EXISTING, (task["id"],)).fetchone()
        if existing is not None:
            return Delegated(existing=tuple(existing))
        if to_status != "active":
            return Delegated()
        con.execute(_NEW_TASK, (
            task["id"], task["from_agent"], task["to_agent"], task["task_type"], json.dumps(task["payload"]),
            task["payload_hash"], task["priority"], at, at, task["max_attempts"],
        ))
        waiting = coalesce and con.execute(_WAITING, (job,)).fetchone()[0]
        outbox_id = new_id()
        con.execute(_NEW_JOB, (outbox_id, job, task["id"], max_job_attempts, at, at))
    return Delegated(outbox_id=outbox_id, ring=not waiting)


def _claimed(row: tuple | None) -> ClaimedRow | None:
    return None if row is None else ClaimedRow(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])


def claim(db: Any, agent_id: str, claimer: str, now: datetime, lease_until: datetime) -> tuple[str | None, Any]:
    """(the agent's status, the claimed row or None). Nothing is claimed unless the agent is active."""
    with db.raw_connection() as con:
        agent_status, pending = con.execute(_PEEK, (agent_id,)).fetchone()
        if agent_status != "active" or not pending:
            return agent_status, None
        with _immediate(con):
            # None when another claimer took the last task between the look and the lock
            row = con.execute(_CLAIM, (agent_id, claimer, stored(now), stored(lease_until))).fetchone()
    return agent_status, _claimed(row)


def complete(
    db: Any,
    task_id: str,
    token: int,
    result: dict[str, Any],
    now: datetime,
    notice: str,
    next_claim: tuple[str, str, datetime] | None = None,
) -> tuple[bool, TaskState | None, ClaimedRow | None]:
    """(done, state, claimed). Done: the delegator is notified with `notice`, and with `next_claim` =
    (agent, claimer, lease end) that agent's next task is claimed in the same transaction. Not done:
    nothing changed, `state` is the task's state (None if there is no such task), for the error."""
    at = stored(now)
    with db.raw_connection() as con, _immediate(con):
        done = con.execute(_COMPLETE, (task_id, token, at, json.dumps(result))).fetchone()
        if done is None:
            state = con.execute(_STATE, (task_id,)).fetchone()
            return False, TaskState(state[0], state[1], loaded(state[2])) if state else None, None
        from_agent, to_agent = done
        con.execute(_NOTIFY, (new_id(), from_agent, notice, task_id, json.dumps({"to_agent": to_agent}), at))
        claimed = None
        if next_claim is not None:
            agent_id, claimer, lease_until = next_claim
            claimed = _claimed(con.execute(_CLAIM, (agent_id, claimer, at, stored(lease_until))).fetchone())
    return True, None, claimed
