"""The periodic jobs that close the loops (design: "one delegation, end to end", step 4), huey-free.

- `reconcile`: ring outbox rows whose bell was lost (a crash between commit and enqueue, a worker
  killed mid-job once its lease has passed) or whose retry is due;
- `reap_leases`: expired task leases go back to `pending`, or to `failed` after the attempt limit;
- `expire_approvals`: pending approvals past their TTL become `expired` (never `approved`);
- `expire_collaborations`: open collaboration requests past their deadline (or, without one, older than
  `collaboration_ttl`) become `unanswered` and their requester is told.

`run_periodic` runs one of them at most once per period however many consumers share the queue: it
claims the period with one conditional UPDATE of its `periodic_runs` row, in the same transaction as the
job, so the job and the claim commit (or roll back) together. worker/periodic.py schedules them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from coord.collaboration import expire_unanswered
from coord.db.backend import insert_ignore
from coord.db.models import PeriodicRun, WorkerHeartbeat
from coord.delegation import reap_expired_leases
from coord.logs import get_logger
from coord.matching.index import backfill as embed_backfill
from coord.outbox import due_jobs, mark_rung

log = get_logger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HEARTBEAT_RETENTION = timedelta(days=7)
APPROVALS_MODULE = "coord.approvals"
BACKLOG_QUIET_FACTOR = 6
BACKLOG_MIN_MESSAGES = 10


def period_start(now: datetime, interval: float) -> datetime:
    """The start of the period `now` falls in; periods are aligned on the epoch, so every consumer
    computes the same one."""
    seconds = (now - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=(seconds // interval) * interval)


def claim_period(session: Session, backend: Any, name: str, start: datetime, *, worker_id: str, now: datetime) -> bool:
    """True for exactly one caller per (name, period): PostgreSQL's row lock makes a second UPDATE re-check
    `period_start` after the first commits; SQLite serializes the two write transactions."""
    insert_ignore(session, backend, PeriodicRun.__table__, dict(name=name, period_start=EPOCH, runs=0, result={}))
    claimed = session.execute(
        update(PeriodicRun)
        .where(PeriodicRun.name == name, PeriodicRun.period_start < start)
        .values(period_start=start, runs=PeriodicRun.runs + 1, worker_id=worker_id, started_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return bool(claimed)


# --- the jobs: (session, backend, settings, now) -> a small result dict --------------------------------


def reconcile(session: Session, backend: Any, settings: Any, now: datetime, *, queued: int = 0,
              room: int = 500) -> dict[str, Any]:
    """Outbox rows to ring again, at most `room` of them (the caller passes what the queue can take).

    `queued`: messages waiting in the queue. When (next to) none wait, a due row has lost its bell (a
    taken row is not due until its lease passes), so a row quiet for one reconcile interval is rung.
    While a backlog waits, a due row's bell is most likely in it: only rows quiet for
    BACKLOG_QUIET_FACTOR intervals (at least a minute) are rung, so a backlog is not buried under
    no-op rings. (A few messages, e.g. other periodic jobs', drain in milliseconds: not a backlog.)
    """
    if room <= 0:
        return {"ring": [], "skipped": "queue full"}
    interval = settings.reconcile_interval_seconds
    backlog = queued > BACKLOG_MIN_MESSAGES
    quiet = timedelta(seconds=max(interval * BACKLOG_QUIET_FACTOR, 60.0) if backlog else interval)
    ids = due_jobs(session, now, limit=room, quiet=quiet)
    mark_rung(session, ids, now)
    return {"ring": ids}


def reap_leases(session: Session, backend: Any, settings: Any, now: datetime) -> dict[str, Any]:
    result = dict(reap_expired_leases(session, backend, now))
    result["heartbeats_pruned"] = int(
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - HEARTBEAT_RETENTION)).rowcount
        or 0
    )
    return result


def expire_approvals(session: Session, backend: Any, settings: Any, now: datetime) -> dict[str, Any]:
    # The approvals service lives in coord.approvals; a build without it has nothing to expire.
    if importlib.util.find_spec(APPROVALS_MODULE) is None:
        return {"skipped": f"{APPROVALS_MODULE} is not installed"}
    approvals = importlib.import_module(APPROVALS_MODULE)
    return {"expired": int(approvals.expire_due(session, now) or 0)}


def expire_collaborations(session: Session, backend: Any, settings: Any, now: datetime) -> dict[str, Any]:
    return {"expired": expire_unanswered(session, now, ttl=settings.collaboration_ttl)}


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval: Callable[[Any], float]  # seconds, from the (live) settings
    run: Callable[..., dict[str, Any]]


JOBS: dict[str, PeriodicJob] = {
    "reconcile_outbox": PeriodicJob("reconcile_outbox", lambda s: s.reconcile_interval_seconds, reconcile),
    "reap_leases": PeriodicJob("reap_leases", lambda s: s.reconcile_interval_seconds, reap_leases),
    "expire_approvals": PeriodicJob("expire_approvals", lambda s: 60.0, expire_approvals),
    # Deadlines are minutes to days: a requester learns within a minute that nobody took its request.
    "expire_collaborations": PeriodicJob("expire_collaborations", lambda s: 60.0, expire_collaborations),
    # Agents left without a vector (extra installed later, model changed, a job failed for good).
    "embed_backfill": PeriodicJob("embed_backfill", lambda s: 60.0, embed_backfill),
}


def run_periodic(
    db: Any, settings: Any, name: str, *, worker_id: str, now: datetime, **kwargs: Any
) -> dict[str, Any] | None:
    """Run job `name` for the period `now` falls in, unless another consumer already did: None then."""
    job = JOBS[name]
    start = period_start(now, job.interval(settings))
    try:
        with db.session() as s:
            if not claim_period(s, db.backend, name, start, worker_id=worker_id, now=now):
                return None
            result = job.run(s, db.backend, settings, now, **kwargs)
            s.execute(
                update(PeriodicRun)
                .where(PeriodicRun.name == name)
                .values(finished_at=now, result={k: v for k, v in result.items() if k != "ring"}, last_error=None)
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("periodic.failed", job=name, period=start.isoformat(), error=error)
        # The claim rolled back with the job, so the next tick of this period may try again.
        with db.session() as s:
            s.execute(update(PeriodicRun).where(PeriodicRun.name == name).values(last_error=error))
        raise
    log.info("periodic.ran", job=name, period=start.isoformat(), worker_id=worker_id,
             **{k: (len(v) if k == "ring" else v) for k, v in result.items()})
    return result
