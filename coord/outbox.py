"""The outbox: the only door from coord to the queue (invariant 1).

Producers call `add_job` inside the transaction that makes the change; after commit the client rings
the bell with the new ids. A worker runs a row with `run_job`, which takes it under a lease first, so a
crash mid-job is counted and healed by the reconciler (`due_jobs`) once the lease has passed. Handlers
are idempotent on the row: running a row twice has the effect of running it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, func, or_, select, union_all, update
from sqlalchemy.orm import Session

from coord.clock import utcnow
from coord.db import pg_queue
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


@dataclass(frozen=True)
class OwnTransactions:
    """A handler run outside the row's transaction, opening short sessions itself: `fn(db, outbox_id, ctx)`.

    For jobs that run processes for minutes (installs): a transaction held that long would hold SQLite's
    only write lock. The row is marked done in a transaction of its own afterwards, so the handler must be
    idempotent across a crash between its last write and that one, as every handler is.
    """

    fn: Callable[[Any, str, Any], list[str] | None]


@dataclass(frozen=True)
class ManyAtOnce:
    """A handler that runs a whole batch of taken rows in one call: `fn(session, rows, ctx)`. For short
    database-only jobs whose per-row statements would cost more than the work (dispatch). Called with one
    row, it is an ordinary handler (single runs, and the per-job savepoints of a batch that failed).

    It must not be able to take its process down (database work only): a fresh batch is taken and run in
    one transaction (run_batch), so a crash leaves no attempt counted that would stop a poison job."""

    fn: Callable[[Session, list[OutboxJob], Any], list[str] | None]

    def __call__(self, session: Session, row: OutboxJob, ctx: Any) -> list[str] | None:
        return self.fn(session, [row], ctx)


Handler = Callable[[Session, OutboxJob, Any], list[str] | None] | OwnTransactions


def _due(now: datetime) -> Any:
    """A row may run: never tried (whatever its clock says: a delegation committed a moment after the
    worker read its clock, or on a host whose clock runs ahead, is due at once), or its retry is due."""
    return (OutboxJob.attempts == 0) | (OutboxJob.next_attempt_at <= now)


def _take(session: Session, outbox_id: str, now: datetime, lease: timedelta) -> OutboxJob | None:
    return session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == outbox_id, OutboxJob.status == "pending", _due(now))
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
    with db.reader() as s:
        # A re-rung bell for a finished row is the common no-op: answer it without taking the write lock.
        peek = s.get(OutboxJob, outbox_id)
        if peek is None or peek.status != "pending":
            return JobOutcome(outbox_id, "skipped", peek.attempts if peek else 0), []
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
            gave_up = f"gave up after {max_attempts} attempts that never finished"
            taken.last_error = f"{taken.last_error} | {gave_up}" if taken.last_error else gave_up
            log.error("job.failed", outbox_id=outbox_id, job=job, attempts=attempts, error=taken.last_error)
            return JobOutcome(outbox_id, "failed", attempts, taken.last_error), []

    with bound(outbox_id=outbox_id, job=job, ref_id=row.ref_id, attempt=attempts):
        try:
            handler = handlers[job]
            if isinstance(handler, OwnTransactions):
                follow_ups = handler.fn(db, outbox_id, ctx) or []
                with db.session() as s:
                    fresh = s.get(OutboxJob, outbox_id)
                    fresh.status, fresh.finished_at, fresh.last_error = "done", now(), None
            else:
                with db.session() as s:
                    fresh = s.get(OutboxJob, outbox_id)
                    follow_ups = handler(s, fresh, ctx) or []
                    fresh.status, fresh.finished_at, fresh.last_error = "done", now(), None
            log.info("job.done", follow_ups=len(follow_ups))
            return JobOutcome(outbox_id, "done", attempts), follow_ups
        except Exception as exc:
            with db.session() as s:
                outcome = _settle_error(s.get(OutboxJob, outbox_id), exc, now())
            return outcome, []


def _settle_error(row: OutboxJob, exc: Exception, now: datetime) -> JobOutcome:
    """A handler raised on attempt `row.attempts`: retry after a backoff, or fail at the attempt limit."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    row.last_error = error
    final = row.attempts >= row.max_attempts
    if final:
        row.status, row.finished_at = "failed", now
    else:
        row.next_attempt_at = now + backoff(row.attempts)
    log.warning("job.error", outbox_id=row.id, job=row.job, attempt=row.attempts, error=error, final=final)
    return JobOutcome(row.id, "failed" if final else "retry", row.attempts, error)


# Built once: every bell runs it, and building a statement costs more than running it.
_PEEK = select(OutboxJob.status, OutboxJob.next_attempt_at, OutboxJob.attempts, OutboxJob.job).where(
    OutboxJob.id == bindparam("id")
)

_NEXT_FRESH = (
    select(OutboxJob.id)
    .where(OutboxJob.status == "pending", OutboxJob.job == bindparam("job"), OutboxJob.attempts == 0)
    .order_by(OutboxJob.created_at)
    .limit(1)
)


def run_batch(
    db: Any,
    outbox_id: str,
    handlers: dict[str, Handler],
    ctx: Any,
    *,
    batchable: frozenset[str] = frozenset(),
    limit: int = 50,
    now: Callable[[], datetime] = utcnow,
    lease: Callable[[str], timedelta] = lambda job: DEFAULT_LEASE,
) -> tuple[list[JobOutcome], list[str]]:
    """The worker's `run_job`: under load, one bell runs up to `limit` fresh rows of its kind at once.

    Same guarantees as `run_job` (the take is committed before any handler runs, so a crash is counted),
    two transactions per batch instead of two per job; one for a ManyAtOnce handler, which cannot crash
    its process. Only rows never tried before (`attempts == 0`) of a `batchable` kind join a batch, run
    in one transaction (again with a savepoint per job if one of them raised, so a failure stays with
    its job); anything else, including every retry and every row whose worker died, runs alone through
    `run_job`, so a poison job is isolated after its first try.
    """
    # Most bells of a busy queue are for rows a batch already ran: answer those with one cheap read.
    if db.dialect == "postgresql":
        peek = pg_queue.peek(db, outbox_id)  # one round trip: no ping, BEGIN or ROLLBACK
    else:
        with db.read_engine.connect() as conn:
            peek = conn.execute(_PEEK, {"id": outbox_id}).first()
    if peek is None or peek.status != "pending" or (peek.attempts and peek.next_attempt_at > now()):
        # Finished, or leased by a worker running it, or a retry not yet due: a no-op, without the write lock.
        return [JobOutcome(outbox_id, "skipped", peek.attempts if peek else 0)], []
    job, fresh = peek.job, peek.attempts == 0
    if not fresh or job not in batchable or isinstance(handlers.get(job), OwnTransactions):
        outcome, follow_ups = run_job(db, outbox_id, handlers, ctx, now=now, lease=lease)
        return [outcome], follow_ups

    handler = handlers[job]
    taken: list[str] = []
    if isinstance(handler, ManyAtOnce):
        # Database-only work that cannot take its process down: the take and the work share one
        # transaction (a crash rolls the take back with the work, and the reconciler rings again), so the
        # worker holds the write lock once a batch. If a handler raises, the two-step path below runs.
        try:
            with db.session() as s:
                # Taken and marked done by one statement that returns the rows: if the handler raises, the
                # transaction rolls both back.
                rows = _take_fresh(s, outbox_id, job, limit, now(), lease(job), done=True)
                taken = [row.id for row in rows]
                follow_ups = (handler.fn(s, rows, ctx) or []) if rows else []
                outcomes = [JobOutcome(row.id, "done", row.attempts) for row in rows]
        except Exception as exc:
            log.info("jobs.batch_retry_isolated", job=job, error=f"{type(exc).__name__}: {exc}"[:300])
        else:
            return _batch_done(db, job, taken, limit, outcomes, follow_ups) if taken else _nothing(outbox_id)

    with db.session() as s:
        taken = _take_fresh(s, outbox_id, job, limit, now(), lease(job))
    if not taken:
        return _nothing(outbox_id)

    try:
        outcomes, follow_ups = _run_taken(db, taken, job, handler, ctx, now, isolate=False)
    except Exception as exc:
        # Some handler raised: nothing of the batch was committed. Again, one savepoint per job, so the
        # failure stays with its job (the rows are still ours: the take's lease runs).
        log.info("jobs.batch_retry_isolated", job=job, batch=len(taken), error=f"{type(exc).__name__}: {exc}"[:300])
        outcomes, follow_ups = _run_taken(db, taken, job, handler, ctx, now, isolate=True)
    return _batch_done(db, job, taken, limit, outcomes, follow_ups)


def _nothing(outbox_id: str) -> tuple[list[JobOutcome], list[str]]:
    """Nothing fresh was left to take, this bell's own row included: another worker's batch holds it (and
    runs it, or rolls back and takes it again), or ran it, or it failed and its retry has a bell of its
    own. Waiting for that worker's row locks (the single path's take does) would only stall this one."""
    return [JobOutcome(outbox_id, "skipped")], []


def _batch_done(db: Any, job: str, taken: list[str], limit: int, outcomes: list[JobOutcome],
                follow_ups: list[str]) -> tuple[list[JobOutcome], list[str]]:
    log.info("jobs.done", job=job, batch=len(taken), done=sum(o.status == "done" for o in outcomes))
    if len(taken) == limit:
        # A full batch may have left fresh rows behind that have no bell of their own (coalesced bells,
        # coord/db/sqlite_queue.py): ring for the oldest, so the backlog drains batch after batch.
        with db.read_engine.connect() as conn:
            follow_ups = follow_ups + list(conn.execute(_NEXT_FRESH, {"job": job}).scalars())
    return outcomes, follow_ups


def _run_taken(db: Any, taken: list[str], job: str, handler: Any, ctx: Any, now: Callable[[], datetime], *,
               isolate: bool) -> tuple[list[JobOutcome], list[str]]:
    with db.session() as s:
        return _run_rows(s, taken, job, handler, ctx, now, isolate=isolate)


def _run_rows(s: Session, taken: list[str], job: str, handler: Any, ctx: Any, now: Callable[[], datetime], *,
              isolate: bool) -> tuple[list[JobOutcome], list[str]]:
    """Run taken rows in transaction `s`; `isolate`: a savepoint per job (else any error aborts the batch)."""
    outcomes: list[JobOutcome] = []
    follow_ups: list[str] = []
    if not taken:
        return outcomes, follow_ups
    rows = {r.id: r for r in s.scalars(select(OutboxJob).where(OutboxJob.id.in_(taken)))}
    if isinstance(handler, ManyAtOnce) and not isolate:
        follow_ups.extend(handler.fn(s, [rows[row_id] for row_id in taken], ctx) or [])
        outcomes = [JobOutcome(row_id, "done", rows[row_id].attempts) for row_id in taken]
    else:
        for row_id in taken:
            row = rows[row_id]
            with bound(outbox_id=row_id, job=job, ref_id=row.ref_id, attempt=row.attempts):
                try:
                    with s.begin_nested() if isolate else nullcontext():
                        follow_ups.extend(handler(s, row, ctx) or [])
                except Exception as exc:
                    if not isolate:
                        raise
                    outcomes.append(_settle_error(row, exc, now()))
                    continue
            outcomes.append(JobOutcome(row_id, "done", row.attempts))
    done = [o.outbox_id for o in outcomes if o.status == "done"]
    if done:
        s.execute(update(OutboxJob).where(OutboxJob.id.in_(done))
                  .values(status="done", finished_at=now(), last_error=None)
                  .execution_options(synchronize_session=False))
    return outcomes, follow_ups


def _take_fresh(s: Session, outbox_id: str, job: str, limit: int, now: datetime, lease: timedelta, *,
                done: bool = False) -> Any:
    """Take `outbox_id` and up to `limit - 1` other fresh rows of `job`, oldest first, in one statement;
    their ids. With `done`, for a handler that runs in the same transaction: the rows are marked done by
    the same statement, which returns them, oldest first, as read-only rows with OutboxJob's columns (what
    a ManyAtOnce handler reads of them).

    PostgreSQL: the rows are picked, the bell's own and the oldest others, with `FOR UPDATE SKIP LOCKED`, so
    a take never waits for a row: two workers whose batches overlap split the rows instead of each
    waiting for the other's (a deadlock when each held a row the other's UPDATE wanted). SQLite ignores
    the lock clause; its writers are serialised anyway.
    """
    fresh = (OutboxJob.status == "pending", OutboxJob.job == job, OutboxJob.attempts == 0)  # due (see _due)
    # The bell's own row, then the oldest others: two picks, so that the second reads ix_outbox_fresh in
    # its order and stops after `limit - 1` rows (one pick ordered by "own row first" sorted the backlog).
    own = select(OutboxJob.id).where(OutboxJob.id == outbox_id, *fresh).with_for_update(skip_locked=True)
    oldest = (
        select(OutboxJob.id)
        .where(*fresh, OutboxJob.id != outbox_id)
        .order_by(OutboxJob.created_at)
        .limit(max(limit - 1, 0))
        .with_for_update(skip_locked=True)
    )
    if s.get_bind().dialect.name == "postgresql":
        # Picked once: PostgreSQL may run an `IN (subquery)` again for each row it scans, and each run
        # skips the rows the runs before it locked, so the LIMIT bounded nothing (one bell took 890 rows of
        # a 2,000-row backlog, in seconds). A MATERIALIZED CTE is evaluated once per statement.
        # Two CTEs: PostgreSQL refuses FOR UPDATE in the branches of a UNION.
        mine = own.cte("own").prefix_with("MATERIALIZED")
        others = oldest.cte("oldest").prefix_with("MATERIALIZED")
        chosen = OutboxJob.id.in_(union_all(select(mine.c.id), select(others.c.id)))
    else:  # SQLite evaluates an IN subquery once, into a temporary index
        chosen = or_(OutboxJob.id == outbox_id, OutboxJob.id.in_(oldest.scalar_subquery()))
    # A Core UPDATE of the table: the ORM's bulk-update machinery cost more than the statement itself.
    outbox = OutboxJob.__table__
    take = (
        update(outbox)
        .where(chosen, *fresh)
        .values(attempts=outbox.c.attempts + 1, next_attempt_at=now + lease, started_at=now)
    )
    if done:  # the rows as Core rows: the same attributes as OutboxJob, read-only
        taken = s.execute(take.values(status="done", finished_at=now, last_error=None).returning(*outbox.c)).all()
        return sorted(taken, key=lambda r: (r.created_at, r.id))
    rows = s.execute(take.returning(OutboxJob.id, OutboxJob.created_at)).all()
    # If the bell's own row was taken meanwhile, the others are still ours and run now (their lease runs).
    return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]))]


def due_jobs(session: Session, now: datetime, limit: int = 500, *, quiet: timedelta = timedelta(0)) -> list[str]:
    """Pending rows whose bell may have been lost (or whose retry is due), oldest first.

    `quiet`: skip rows rung (or created) less than this long ago, whose bell is most likely still in
    the queue; re-ringing them would only add no-op messages behind a backlog.
    """
    rung = func.coalesce(OutboxJob.rung_at, OutboxJob.created_at)
    return list(
        session.scalars(
            select(OutboxJob.id)
            .where(OutboxJob.status == "pending", OutboxJob.next_attempt_at <= now, rung <= now - quiet)
            .order_by(OutboxJob.next_attempt_at)
            .limit(limit)
        )
    )


def mark_rung(session: Session, ids: Iterable[str], now: datetime) -> None:
    ids = list(ids)
    if ids:
        session.execute(update(OutboxJob).where(OutboxJob.id.in_(ids)).values(rung_at=now))
