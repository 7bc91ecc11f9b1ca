"""The task queue's hot paths on PostgreSQL (delegate, claim, complete), each one statement.

The PostgreSQL counterpart of coord/db/sqlite_queue.py. Built as ORM/Core units these cost a pool ping,
BEGIN, four or five statements and COMMIT: eight round trips and ~3 ms of client CPU for one delegation,
on a server where each round trip is two context switches. Here each operation is one fixed SQL text
(psycopg prepares it after a few runs) sent on a connection in autocommit mode: a data-modifying CTE
is one statement, so it is still one atomic transaction, without the BEGIN and COMMIT round trips.
Only the common case runs here: a delegation to a missing agent (a gap, ranked alternatives), a
replay that raced its original, and every error take the ORM path in coord/delegation.py.

Values are written as SQLAlchemy writes these columns (naive UTC timestamps, JSONB), so the ORM reads
back exactly what this writes. The suite runs both engines through the same tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from coord.db.sqlite_queue import ClaimedRow, TaskState  # the same answers on both engines
from coord.ids import new_id
from coord.states import PRIORITY_NAMES

# Priority names by number (0 low .. 3 critical): SQL arrays count from 1.
_PRIORITY_NAMES = [PRIORITY_NAMES[i] for i in range(len(PRIORITY_NAMES))]

# One statement: check both agents and a replay, then the task and its job. Every CTE sees the same
# snapshot; a concurrent delegation with the same id that commits first makes the task insert a no-op
# (ON CONFLICT), and the caller then takes the ORM path, which reads it.
_DELEGATE = """
WITH who AS (
  SELECT (SELECT status FROM agents WHERE id = %(from_agent)s) AS from_status,
         (SELECT status FROM agents WHERE id = %(to_agent)s) AS to_status
), old AS (
  SELECT from_agent, to_agent, payload_hash FROM tasks WHERE id = %(id)s
), task AS (
  INSERT INTO tasks (id, from_agent, to_agent, task_type, payload, payload_hash, priority, status,
                     created_at, updated_at, lease_token, attempts, max_attempts)
  SELECT %(id)s, %(from_agent)s, %(to_agent)s, %(task_type)s, %(payload)s, %(payload_hash)s, %(priority)s,
         'pending', %(at)s, %(at)s, 0, 0, %(max_attempts)s
  FROM who WHERE from_status = 'active' AND to_status = 'active' AND NOT EXISTS (SELECT 1 FROM old)
  ON CONFLICT DO NOTHING
  RETURNING id
), job AS (
  INSERT INTO outbox (id, job, ref_id, payload, status, attempts, max_attempts, created_at, next_attempt_at)
  SELECT %(job_id)s, %(job)s, id, '{}', 'pending', 0, %(job_attempts)s, %(at)s, %(at)s FROM task
  ON CONFLICT DO NOTHING
  RETURNING id
)
SELECT who.from_status, who.to_status, old.from_agent, old.to_agent, old.payload_hash,
       (SELECT id FROM task) IS NOT NULL,
       COALESCE((SELECT id FROM job), (SELECT id FROM outbox WHERE job = %(job)s AND ref_id = %(id)s))
FROM who LEFT JOIN old ON true
"""

# The pick's ORDER BY matches ix_tasks_claim column for column; SKIP LOCKED: concurrent claimers skip a
# row being claimed instead of queueing behind it. The same statement as Backend.claim_statement.
_PICK = (
    "SELECT id FROM tasks WHERE to_agent = %(agent)s AND status = 'pending'"
    " ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_CLAIM_SET = (
    "status = 'claimed', claimed_by = %(claimer)s, claimed_at = %(at)s, lease_expires_at = %(until)s,"
    " lease_token = lease_token + 1, attempts = attempts + 1, updated_at = %(at)s"
)
_CLAIMED_COLUMNS = "id, lease_token, from_agent, task_type, priority, payload, attempts"
_CLAIM = (
    f"UPDATE tasks SET {_CLAIM_SET} WHERE id = ({_PICK})"
    " AND EXISTS (SELECT 1 FROM agents WHERE id = %(agent)s AND status = 'active')"
    f" RETURNING {_CLAIMED_COLUMNS}"
)
_AGENT = "SELECT status FROM agents WHERE id = %s"
_STATE = "SELECT status, lease_token, lease_expires_at FROM tasks WHERE id = %s"
_DONE = """
WITH done AS (
  UPDATE tasks SET status = 'completed', completed_at = %(at)s, result = %(result)s, lease_expires_at = NULL,
                   updated_at = %(at)s
  WHERE id = %(id)s AND status = 'claimed' AND lease_token = %(token)s AND lease_expires_at > %(at)s
  RETURNING from_agent, to_agent
), note AS (
  INSERT INTO inbox (id, agent_id, kind, ref_id, body, created_at)
  SELECT %(note_id)s, from_agent, %(kind)s, %(id)s, jsonb_build_object('to_agent', to_agent), %(at)s FROM done
  ON CONFLICT DO NOTHING
)
"""
_COMPLETE = _DONE + "SELECT from_agent FROM done"
# Complete and claim the agent's next task, one statement: the claim runs only if the completion did.
_COMPLETE_CLAIM = (
    _DONE
    + f", claimed AS (UPDATE tasks SET {_CLAIM_SET} WHERE id = ({_PICK}) AND EXISTS (SELECT 1 FROM done)"
    " AND EXISTS (SELECT 1 FROM agents WHERE id = %(agent)s AND status = 'active')"
    f" RETURNING {_CLAIMED_COLUMNS})"
    f" SELECT done.from_agent, claimed.* FROM done LEFT JOIN claimed ON true"
)
# The worker's half of a batch of delegations: every target told, in one statement (delegation.dispatch).
_DISPATCH = """
WITH found AS (
  SELECT t.id, t.from_agent, t.to_agent, t.priority, t.payload -> 'title' AS title, n.note_id
  FROM unnest(%(ids)s::text[], %(notes)s::text[]) AS n(task_id, note_id) JOIN tasks t ON t.id = n.task_id
), told AS (
  INSERT INTO inbox (id, agent_id, kind, ref_id, body, created_at)
  SELECT note_id, to_agent, 'new_coordination_task', id,
         jsonb_build_object('from_agent', from_agent, 'priority', (%(names)s::text[])[priority + 1], 'title', title),
         %(at)s
  FROM found
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(DISTINCT id) FROM found), (SELECT count(*) FROM told)
"""
_EXISTING = "SELECT id FROM tasks WHERE id = ANY(%s::text[])"
_PEEK = "SELECT status, next_attempt_at, attempts, job FROM outbox WHERE id = %s"


class Peek(NamedTuple):
    status: str
    next_attempt_at: datetime
    attempts: int
    job: str


class Delegated(NamedTuple):
    """What `delegate` found: `outbox_id` is set when the task was written; else `from_status`, `to_status`
    or `existing` (from_agent, to_agent, payload_hash) say why not. Neither: a concurrent delegation with
    the same id won the insert (the caller reads it through the ORM path)."""

    outbox_id: str | None
    from_status: str | None
    to_status: str | None
    existing: tuple[str, str, str] | None
    ring: bool = True  # every delegation rings its own bell here (sqlite_queue may coalesce them)


def _jsonb(value: Any) -> Any:
    from psycopg.types.json import Jsonb  # here, not at import: SQLite-only processes never load psycopg

    return Jsonb(value)


def stored(moment: datetime) -> datetime:
    """A UTC datetime as the columns hold it (naive UTC, coord.db.types.UTCDateTime)."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def loaded(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def delegate(db: Any, task: dict[str, Any], job: str, max_job_attempts: int) -> Delegated:
    """Write a pending task for an active target and its dispatch job, in one statement; `task` holds the
    columns of coord/delegation.py's row. Replayable (the task id is the key): a lost connection retries."""
    params = dict(task, payload=_jsonb(task["payload"]), at=stored(task["created_at"]), job_id=new_id(), job=job,
                  job_attempts=max_job_attempts)

    def run(con: Any) -> Any:
        return con.execute(_DELEGATE, params).fetchone()

    from_status, to_status, old_from, old_to, old_hash, written, outbox_id = db.autocommit(run, replayable=True)
    existing = None if old_from is None else (old_from, old_to, old_hash)
    return Delegated(outbox_id if written else None, from_status, to_status, existing)


def _claimed(row: tuple | None) -> ClaimedRow | None:
    return None if row is None or row[0] is None else ClaimedRow(*row)


def claim(db: Any, agent_id: str, claimer: str, now: datetime, lease_until: datetime) -> tuple[str | None, Any]:
    """(the agent's status, the claimed row or None). Nothing is claimed unless the agent is active; the
    agent's status costs a second statement only when nothing was claimed."""
    params = {"agent": agent_id, "claimer": claimer, "at": stored(now), "until": stored(lease_until)}

    def run(con: Any) -> tuple[str | None, Any]:
        row = con.execute(_CLAIM, params).fetchone()
        if row is not None:
            return "active", ClaimedRow(*row)
        found = con.execute(_AGENT, (agent_id,)).fetchone()
        return (found[0] if found else None), None

    return db.autocommit(run)


def complete(
    db: Any,
    task_id: str,
    token: int,
    result: Any,
    now: datetime,
    notice: str,
    next_claim: tuple[str, str, datetime] | None = None,
) -> tuple[bool, TaskState | None, ClaimedRow | None]:
    """(done, state, claimed), as sqlite_queue.complete: done, the delegator is notified with `notice` and,
    with `next_claim` = (agent, claimer, lease end), that agent's next task is claimed, all in one
    statement. Not done: nothing changed, `state` is the task's state (None if there is no such task)."""
    params = {"id": task_id, "token": token, "at": stored(now), "result": _jsonb(result), "note_id": new_id(),
              "kind": notice}
    if next_claim is not None:
        params.update(agent=next_claim[0], claimer=next_claim[1], until=stored(next_claim[2]))

    def run(con: Any) -> tuple[bool, TaskState | None, ClaimedRow | None]:
        row = con.execute(_COMPLETE if next_claim is None else _COMPLETE_CLAIM, params).fetchone()
        if row is not None:
            return True, None, None if next_claim is None else _claimed(row[1:])
        state = con.execute(_STATE, (task_id,)).fetchone()
        return False, TaskState(state[0], state[1], loaded(state[2])) if state else None, None

    return db.autocommit(run)


def dispatch(conn: Any, task_ids: list[str], now: datetime) -> tuple[int, int]:
    """Tell each task's target (an inbox row, once per task), on `conn` (the batch's SQLAlchemy connection,
    in its transaction). (how many of the tasks exist, how many were told now)."""
    ids = list(dict.fromkeys(task_ids))
    params = {"ids": ids, "notes": [new_id() for _ in ids], "at": stored(now), "names": _PRIORITY_NAMES}
    cur = conn.connection.driver_connection.cursor()
    try:
        found, told = cur.execute(_DISPATCH, params).fetchone()
    finally:
        cur.close()
    return int(found), int(told)


def existing_tasks(conn: Any, task_ids: list[str]) -> list[str]:
    cur = conn.connection.driver_connection.cursor()
    try:
        return [row[0] for row in cur.execute(_EXISTING, (list(task_ids),))]
    finally:
        cur.close()


def peek(db: Any, outbox_id: str) -> Peek | None:
    """An outbox row's (status, next_attempt_at, attempts, job), for the worker's bell: a read, replayable."""

    def run(con: Any) -> Any:
        return con.execute(_PEEK, (outbox_id,)).fetchone()

    row = db.autocommit(run, replayable=True)
    return None if row is None else Peek(row[0], loaded(row[1]), row[2], row[3])
