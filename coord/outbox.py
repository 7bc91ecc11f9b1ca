"""The outbox: the only door from coord to the queue (invariant 1).

Producers call `add_job` inside the transaction that makes the change; after commit the client rings
the bell with the new ids. A worker runs a row with `run_job`, which takes it under a lease first, so a
crash mid-job is counted and healed by the reconciler (`due_jobs`) once the lease has passed. Handlers
are idempotent on the row: running a row twice has the effect of running it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coord.clock import utcnow
from coord.db.backend import insert_ignore
from coord.db.models import OutboxJob
from coord.ids import new_id
from coord.logs import bound, get_logger

log = get_logger(__name__)

DEFAULT_LEASE = timedelta(seconds=60)
MAX_BACKOFF_SECONDS = 300.0


class Bell(Protocol):
    """Rings the queue for outbox rows. Best effort: a lost ring is healed by the reconciler."""

    def ring(self, outbox_ids: list[str]) -> None: ...


class SilentBell:
    """For processes that only write (the reconciler of a running worker rings for them)."""

    def ring(self, outbox_ids: list[str]) -> None:
        return None


def backoff(attempts: int) -> timedelta:
    """Exponential backoff between attempts of one job: 2, 4, 8 ... seconds, capped at 5 minutes."""
    return timedelta(seconds=min(2.0 ** max(attempts, 1), MAX_BACKOFF_SECONDS))


def add_job(
    session: Session, backend: Any, job: str, ref_id: str, *, now: datetime, payload: dict | None = None,
    max_attempts: int = 5,
) -> str:
    """Write the job row (once per (job, ref_id)); returns its id, new or existing."""
    job_id = new_id()
    values = dict(
        id=job_id, job=job, ref_id=ref_id, payload=payload or {}, max_attempts=max_attempts,
        created_at=now, next_attempt_at=now,
    )
    if insert_ignore(session, backend, OutboxJob.__table__, values):
        return job_id
    return session.scalar(select(OutboxJob.id).where(OutboxJob.job == job, OutboxJob.ref_id == ref_id)) or job_id


@dataclass(frozen=True)
class JobOutcome:
    outbox_id: str
    status: str  # done | failed | retry | skipped
    attempts: int = 0
    error: str | None = None


Handler = Callable[[Session, OutboxJob, Any], list[str] | None]


def _take(session: Session, outbox_id: str, now: datetime, lease: timedelta) -> OutboxJob | None:
    return session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == outbox_id, OutboxJob.status == "pending", OutboxJob.next_attempt_at <= now)
        .values(attempts=OutboxJob.attempts + 1, next_attempt_at=now + lease, started_at=now)
        .returning(OutboxJob)
    ).scalar_one_or_none()


def run_job(
    db: Any,
    outbox_id: str,
    handlers: dict[str, Handler],
    ctx: Any,
    *,
    now: Callable[[], datetime] = utcnow,
    lease: Callable[[str], timedelta] = lambda job: DEFAULT_LEASE,
) -> tuple[JobOutcome, list[str]]:
    """Run one outbox row to completion. Returns the outcome and the follow-up outbox ids to ring."""
    with db.session() as s:
        row = s.get(OutboxJob, outbox_id)
        if row is None:
            return JobOutcome(outbox_id, "skipped"), []
        job = row.job
        taken = _take(s, outbox_id, now(), lease(job))
        if taken is None:  # done, failed, or another worker holds its lease: a re-rung bell is a no-op
            return JobOutcome(outbox_id, "skipped", row.attempts), []
        attempts, max_attempts = taken.attempts, taken.max_attempts
        if attempts > max_attempts:
            # The previous attempts never finished (each killed its worker): a poison job stops here.
            taken.status, taken.finished_at = "failed", now()
            taken.last_error = (taken.last_error or "") + f" | gave up after {max_attempts} attempts"
            log.error("job.failed", outbox_id=outbox_id, job=job, attempts=attempts, error=taken.last_error)
            return JobOutcome(outbox_id, "failed", attempts, taken.last_error), []

    with bound(outbox_id=outbox_id, job=job, ref_id=row.ref_id, attempt=attempts):
        try:
            with db.session() as s:
                fresh = s.get(OutboxJob, outbox_id)
                follow_ups = handlers[job](s, fresh, ctx) or []
                fresh.status, fresh.finished_at, fresh.last_error = "done", now(), None
            log.info("job.done", follow_ups=len(follow_ups))
            return JobOutcome(outbox_id, "done", attempts), follow_ups
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            with db.session() as s:
                fresh = s.get(OutboxJob, outbox_id)
                fresh.last_error = error
                if attempts >= max_attempts:
                    fresh.status, fresh.finished_at = "failed", now()
                else:
                    fresh.next_attempt_at = now() + backoff(attempts)
            status = "failed" if attempts >= max_attempts else "retry"
            log.warning("job.error", error=error, final=status == "failed")
            return JobOutcome(outbox_id, status, attempts, error), []


def due_jobs(session: Session, now: datetime, limit: int = 500) -> list[str]:
    """Pending rows whose bell may have been lost (or whose retry is due), oldest first."""
    return list(
        session.scalars(
            select(OutboxJob.id)
            .where(OutboxJob.status == "pending", OutboxJob.next_attempt_at <= now)
            .order_by(OutboxJob.next_attempt_at)
            .limit(limit)
        )
    )


def mark_rung(session: Session, ids: Iterable[str], now: datetime) -> None:
    ids = list(ids)
    if ids:
        session.execute(update(OutboxJob).where(OutboxJob.id.in_(ids)).values(rung_at=now))
