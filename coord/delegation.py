"""Delegation (seed `delegateTask`) and the agent side of the queue: claim, heartbeat, complete, fail.

Every state change of a claimed task is one conditional UPDATE that checks the lease owner's fencing
token and the lease's expiry, so a late or foreign call changes nothing and gets LeaseLost.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from coord.db import pg_queue, sqlite_queue
from coord.db.backend import Backend, insert_ignore
from coord.db.engine import Database
from coord.db.models import InboxMessage, Task
from coord.errors import Conflict, InvalidInput, LeaseLost, NotFound
from coord.gaps import record_gap
from coord.ids import check_id, new_id
from coord.matching.hybrid import rank_agents
from coord.outbox import add_job
from coord.payloads import check_payload
from coord.registry import agent_state, inactive_agent, require_active
from coord.results import Claim, DelegationResult, TaskInfo
from coord.states import JOB_DISPATCH, PRIORITIES, PRIORITY_NAMES, TASK_TYPES

TASKS = Task.__table__  # Core statements on the hot paths (see Backend.claim_statement)
NOTICE_COMPLETED = "task_completed"


def check_priority(priority: str | int) -> int:
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise InvalidInput(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")


def _describe(payload: dict[str, Any]) -> str:
    return " ".join(str(payload.get(k, "")) for k in ("title", "description", "expertise")).strip()


def delegate(
    db: Database,
    settings: Any,
    *,
    task_id: str,
    from_agent: str,
    to_agent: str,
    payload: Any,
    priority: str = "medium",
    task_type: str = "delegation",
    now: datetime,
) -> tuple[DelegationResult, list[str]]:
    """Seed `delegateTask`: a pending task for an active target plus its dispatch job (the target's
    notification is the worker's part); an unknown target is a recorded gap and ranked alternatives."""
    check_id(task_id, "task id")
    check_id(to_agent, "target agent id")
    if task_type not in TASK_TYPES:
        raise InvalidInput(f"task type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if isinstance(payload, dict) and "priority" in payload and priority == "medium":
        priority = payload["priority"]  # the seed passes priority inside the task data
    prio = check_priority(priority)
    data, digest = check_payload(payload, what="task data", max_bytes=settings.max_payload_bytes)
    row = dict(
        id=task_id,
        from_agent=from_agent,
        to_agent=to_agent,
        task_type=task_type,
        payload=data,
        payload_hash=digest,
        priority=prio,
        status="pending",
        created_at=now,
        updated_at=now,
        max_attempts=settings.max_task_attempts,
    )
    found: sqlite_queue.Delegated | pg_queue.Delegated | None = None
    if db.dialect == "sqlite":  # the common case as plain statements (see sqlite_queue)
        found = sqlite_queue.delegate(
            db, row, JOB_DISPATCH, settings.outbox_max_attempts, coalesce=settings.dispatch == "queue"
        )
    elif db.dialect == "postgresql":  # the same, one statement (see pg_queue)
        found = pg_queue.delegate(db, row, JOB_DISPATCH, settings.outbox_max_attempts)
    if found is not None:
        if found.from_status != "active":
            raise inactive_agent(from_agent, found.from_status, "delegating agent")
        if found.existing is not None:
            return _replayed(task_id, found.existing, from_agent, to_agent, digest), []
        if found.outbox_id is not None:
            return DelegationResult("delegated", task_id, to_agent), [found.outbox_id] if found.ring else []
    with db.session() as session:  # a target that is missing, a replay that raced its original
        return _delegate(session, db.backend, settings, row, now)


def _delegate(
    session: Session, backend: Backend, settings: Any, row: dict[str, Any], now: datetime
) -> tuple[DelegationResult, list[str]]:
    task_id, from_agent, to_agent, data = row["id"], row["from_agent"], row["to_agent"], row["payload"]
    require_active(session, from_agent, "delegating agent")
    existing = session.get(Task, task_id)
    if existing is not None:
        return _replayed(task_id, _key(existing), from_agent, to_agent, row["payload_hash"]), []

    if agent_state(session, to_agent) != "active":
        gap, outbox = record_gap(
            session,
            backend,
            report_id=task_id,
            capability_type="agent",
            name=to_agent,
            agent_id=from_agent,
            context={"task": data},
            now=now,
            max_attempts=settings.outbox_max_attempts,
        )
        fallback = rank_agents(
            session, backend, _describe(data) or to_agent.replace("-", " "), limit=3, exclude=(from_agent,),
            matching=settings.matching,
        )
        return DelegationResult(
            "agent_not_found", task_id, to_agent, fallback, gap.gap_id, gap.status == "replayed"
        ), outbox

    if not insert_ignore(session, backend, Task.__table__, row):
        # A concurrent call with the same id committed first (on PostgreSQL both pass the check above):
        # answer it as the replay, or the conflict, that it is instead of failing on the primary key.
        existing = _key(session.get(Task, task_id))
        return _replayed(task_id, existing, from_agent, to_agent, row["payload_hash"]), []
    job = add_job(session, backend, JOB_DISPATCH, task_id, now=now, max_attempts=settings.outbox_max_attempts)
    return DelegationResult("delegated", task_id, to_agent), [job]


def _key(task: Task) -> tuple[str, str, str]:
    return task.from_agent, task.to_agent, task.payload_hash


def _replayed(
    task_id: str, existing: tuple[str, str, str], from_agent: str, to_agent: str, digest: str
) -> DelegationResult:
    if tuple(existing) != (from_agent, to_agent, digest):
        raise Conflict(f"task id {task_id!r} was already used for a different delegation; use a new id")
    return DelegationResult("delegated", task_id, to_agent, replayed=True)


def notify(
    session: Session, backend: Backend, agent_id: str, kind: str, ref_id: str, body: dict, now: datetime
) -> bool:
    """Write one inbox row; a second call for the same (agent, kind, ref) does nothing."""
    return insert_ignore(
        session,
        backend,
        InboxMessage.__table__,
        dict(id=new_id(), agent_id=agent_id, kind=kind, ref_id=ref_id, body=body, created_at=now),
    )


def dispatch(session: Session, backend: Backend, task_ids: list[str], now: datetime) -> int:
    """The worker's half of delegations: tell each target, in two statements however many tasks.
    Idempotent on the task ids (the inbox is unique per agent, kind and task). Returns how many it told."""
    if backend.dialect == "postgresql":  # one statement (see pg_queue)
        found, notified = pg_queue.dispatch(session.connection(), task_ids, now)
        if found < len(set(task_ids)):
            gone = sorted(set(task_ids) - set(pg_queue.existing_tasks(session.connection(), task_ids)))
            raise NotFound(f"task {gone[0]!r} vanished before dispatch")
        return notified
    t = TASKS.c
    tasks = session.execute(
        select(t.id, t.from_agent, t.to_agent, t.priority, t.payload).where(t.id.in_(task_ids))
    ).all()
    if len(tasks) < len(set(task_ids)):
        gone = sorted(set(task_ids) - {task.id for task in tasks})
        raise NotFound(f"task {gone[0]!r} vanished before dispatch")
    notices = [
        dict(
            id=new_id(), agent_id=task.to_agent, kind="new_coordination_task", ref_id=task.id, created_at=now,
            body={"from_agent": task.from_agent, "priority": PRIORITY_NAMES[task.priority],
                  "title": task.payload.get("title")},
        )
        for task in tasks
    ]
    stmt = backend.insert(InboxMessage.__table__).on_conflict_do_nothing()
    return session.execute(stmt, notices, execution_options={"preserve_rowcount": True}).rowcount


def claim_next(db: Database, agent_id: str, *, claimer: str, lease: timedelta, now: datetime) -> Claim | None:
    """The best pending task of `agent_id`, moved to claimed under a fresh lease and fencing token."""
    if db.dialect == "sqlite":  # every claimer's hot path: plain DB-API statements (see sqlite_queue)
        agent_status, row = sqlite_queue.claim(db, agent_id, claimer, now, now + lease)
    elif db.dialect == "postgresql":  # one statement (see pg_queue)
        agent_status, row = pg_queue.claim(db, agent_id, claimer, now, now + lease)
    else:
        with db.connection() as conn:
            agent_status = agent_state(conn, agent_id)
            row = None
            if agent_status == "active":
                row = conn.execute(db.backend.claim_statement(agent_id, claimer, now, now + lease)).one_or_none()
    if agent_status != "active":
        raise inactive_agent(agent_id, agent_status)
    return _claim(row, now + lease)


def _claim(row: Any, lease_until: datetime) -> Claim | None:
    if row is None:
        return None
    return Claim(
        task_id=row.id,
        token=row.lease_token,
        lease_expires_at=lease_until,
        from_agent=row.from_agent,
        task_type=row.task_type,
        priority=PRIORITY_NAMES[row.priority],
        payload=row.payload,
        attempt=row.attempts,
    )




def _held(task_id: str, token: int, now: datetime) -> Any:
    t = TASKS.c
    return (t.id == task_id, t.status == "claimed", t.lease_token == token, t.lease_expires_at > now)


def _state(session: Session | Connection, task_id: str) -> Any:
    return session.execute(
        select(TASKS.c.status, TASKS.c.lease_token, TASKS.c.lease_expires_at).where(TASKS.c.id == task_id)
    ).one_or_none()


def _lost(session: Session | Connection, task_id: str, token: int) -> Exception:
    return lease_error(task_id, token, _state(session, task_id))


def lease_error(task_id: str, token: int, state: Any) -> Exception:
    """Why a call carrying `token` may not change the task, from its (status, lease_token, lease_expires_at)."""
    if state is None:
        return NotFound(f"task {task_id!r} does not exist")
    status, current_token, expired = state
    if current_token != token:
        return LeaseLost(f"task {task_id!r} was claimed again after your lease (token {token} is stale)")
    if status != "claimed":
        return LeaseLost(f"task {task_id!r} is {status}: your lease is over")
    return LeaseLost(f"the lease on task {task_id!r} expired at {expired:%H:%M:%S}Z; claim it again")


def heartbeat(session: Session, task_id: str, token: int, *, lease: timedelta, now: datetime) -> datetime:
    until = now + lease
    done = session.execute(
        update(Task).where(*_held(task_id, token, now)).values(lease_expires_at=until, updated_at=now)
    )
    if not done.rowcount:
        raise _lost(session, task_id, token)
    return until


def complete(
    db: Database,
    task_id: str,
    token: int,
    result: Any,
    *,
    max_bytes: int,
    now: datetime,
    next_claim: tuple[str, str, timedelta] | None = None,
) -> Claim | None:
    """Finish a claimed task and tell the delegator; refused (LeaseLost) unless the caller still holds the
    lease. A replay by the same holder after success changes nothing.

    With `next_claim` = (agent, claimer, lease), that agent's next task is claimed in the same transaction
    and returned (None when nothing is pending): a worker's steady loop then costs one transaction a task.
    """
    data, _ = check_payload(result, what="result", max_bytes=max_bytes, required=False)
    then = None if next_claim is None else (next_claim[0], next_claim[1], now + next_claim[2])
    if db.dialect == "sqlite":  # the hot path (see claim_next)
        done, state, row = sqlite_queue.complete(db, task_id, token, data, now, NOTICE_COMPLETED, then)
    elif db.dialect == "postgresql":
        done, state, row = pg_queue.complete(db, task_id, token, data, now, NOTICE_COMPLETED, then)
    else:
        with db.connection() as conn:
            done, state, row = _complete(conn, db.backend, task_id, token, data, now, then)
    if not done and (state is None or (state.status, state.lease_token) != ("completed", token)):
        raise lease_error(task_id, token, state)
    if next_claim is None:
        return None
    if not done:  # a replay: the first call's claim, if any, is lost with its answer; its lease will lapse
        return claim_next(db, next_claim[0], claimer=next_claim[1], lease=next_claim[2], now=now)
    return _claim(row, now + next_claim[2])


def _complete(
    conn: Connection, backend: Backend, task_id: str, token: int, data: Any, now: datetime, then: Any
) -> tuple[bool, Any, Any]:
    done = conn.execute(
        update(TASKS)
        .where(*_held(task_id, token, now))
        .values(status="completed", completed_at=now, result=data, lease_expires_at=None, updated_at=now)
        .returning(TASKS.c.from_agent, TASKS.c.to_agent)
    ).one_or_none()
    if done is None:
        return False, _state(conn, task_id), None
    notify(conn, backend, done.from_agent, NOTICE_COMPLETED, task_id, {"to_agent": done.to_agent}, now)
    row = None if then is None else conn.execute(backend.claim_statement(*then[:2], now, then[2])).one_or_none()
    return True, None, row


def fail(
    session: Session, backend: Backend, task_id: str, token: int, error: str, *, retry: bool, now: datetime
) -> str:
    """Fail the current attempt; with retry the task goes back to pending while attempts remain."""
    if not isinstance(error, str) or not error.strip():
        raise InvalidInput("say why the task failed (error text is required)")
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist")
    final = not retry or task.attempts >= task.max_attempts
    status = "failed" if final else "pending"
    done = session.execute(
        update(Task)
        .where(*_held(task_id, token, now))
        .values(
            status=status,
            error=error[:4000],
            lease_expires_at=None,
            claimed_by=None,
            updated_at=now,
            completed_at=now if final else None,
        )
    )
    if not done.rowcount:
        raise _lost(session, task_id, token)
    if final:
        notify(session, backend, task.from_agent, "task_failed", task_id, {"error": error[:500]}, now)
    return status


def release(session: Session, task_id: str, token: int, *, now: datetime) -> None:
    """Give a task back untouched: the attempt is not counted."""
    done = session.execute(
        update(Task)
        .where(*_held(task_id, token, now))
        .values(status="pending", claimed_by=None, lease_expires_at=None, attempts=Task.attempts - 1, updated_at=now)
    )
    if not done.rowcount:
        raise _lost(session, task_id, token)


def reap_expired_leases(session: Session, backend: Backend, now: datetime) -> dict[str, int]:
    """Expired leases go back to pending, or to failed once the attempts are used up."""
    expired = (Task.status == "claimed", Task.lease_expires_at <= now)
    failed = session.execute(
        update(Task)
        .where(*expired, Task.attempts >= Task.max_attempts)
        .values(
            status="failed",
            error="lease expired on the last attempt",
            lease_expires_at=None,
            updated_at=now,
            completed_at=now,
        )
        .returning(Task.id, Task.from_agent)
    ).all()
    for task_id, from_agent in failed:
        notify(session, backend, from_agent, "task_failed", task_id, {"error": "lease expired"}, now)
    requeued = session.execute(
        update(Task).where(*expired).values(status="pending", claimed_by=None, lease_expires_at=None, updated_at=now)
    ).rowcount
    return {"requeued": int(requeued or 0), "failed": len(failed)}


def task_info(task: Task) -> TaskInfo:
    return TaskInfo(
        id=task.id,
        from_agent=task.from_agent,
        to_agent=task.to_agent,
        task_type=task.task_type,
        payload=task.payload,
        priority=PRIORITY_NAMES[task.priority],
        status=task.status,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        claimed_by=task.claimed_by,
        lease_expires_at=task.lease_expires_at,
        created_at=task.created_at,
        completed_at=task.completed_at,
        result=task.result,
        error=task.error,
    )


def list_tasks(
    session: Session, *, agent_id: str | None = None, status: str | None = None, limit: int = 100
) -> list[TaskInfo]:
    stmt = select(Task).order_by(Task.created_at.desc()).limit(limit)
    if agent_id:
        stmt = stmt.where((Task.to_agent == agent_id) | (Task.from_agent == agent_id))
    if status:
        stmt = stmt.where(Task.status == status)
    return [task_info(t) for t in session.scalars(stmt)]


def get_task(session: Session, task_id: str) -> TaskInfo:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist (see `coord tasks ls`)")
    return task_info(task)


def task_counts(session: Session) -> dict[str, int]:
    return {s: int(n) for s, n in session.execute(select(Task.status, func.count()).group_by(Task.status))}
