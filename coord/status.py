"""What `coord status` reports: engine and reachability, queue health, workers, recent failures.

Each section is a small function so later features (folder sync, installer sandbox, matching mode) add
their own section here rather than growing the CLI.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from coord.clock import utcnow
from coord.db.models import CapabilityGap, OutboxJob, SyncError, Task, WorkerHeartbeat
from coord.errors import CoordError

WORKER_STALE = timedelta(seconds=60)


def _database(db: Any) -> dict[str, Any]:
    from coord.db.migrate import current_revision, head_revision

    out: dict[str, Any] = {"engine": db.dialect, "url": db.safe_url}
    try:
        db.ping()
        out.update(reachable=True, schema=current_revision(db), schema_head=head_revision())
    except CoordError as exc:
        out.update(reachable=False, error=exc.message)
    return out


def _queue(s: Any, now: Any) -> dict[str, Any]:
    pending = s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.status == "pending")) or 0
    oldest = s.scalar(select(func.min(OutboxJob.created_at)).where(OutboxJob.status == "pending"))
    hour_ago = now - timedelta(hours=1)
    failed_recent = (
        s.scalar(
            select(func.count())
            .select_from(OutboxJob)
            .where(OutboxJob.status == "failed", OutboxJob.finished_at >= hour_ago)
        )
        or 0
    )
    errors = s.execute(
        select(OutboxJob.id, OutboxJob.job, OutboxJob.status, OutboxJob.attempts, OutboxJob.last_error)
        .where(OutboxJob.last_error.is_not(None))
        .order_by(OutboxJob.finished_at.desc().nulls_last(), OutboxJob.started_at.desc())
        .limit(5)
    ).all()
    return {
        "pending_jobs": int(pending),
        "oldest_pending_age_s": round((now - oldest).total_seconds(), 1) if oldest else None,
        "failed_last_hour": int(failed_recent),
        "last_errors": [dict(id=r[0], job=r[1], status=r[2], attempts=r[3], error=r[4]) for r in errors],
    }


def _workers(s: Any, now: Any) -> list[dict[str, Any]]:
    rows = s.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.seen_at.desc()).limit(20))
    return [
        {
            "worker_id": w.worker_id,
            "host": w.hostname,
            "pid": w.pid,
            "status": w.status,
            "alive": w.status == "running" and now - w.seen_at < WORKER_STALE,
            "seen_s_ago": round((now - w.seen_at).total_seconds(), 1),
            **(w.info or {}),
        }
        for w in rows
    ]


def collect(settings: Any, db: Any) -> dict[str, Any]:
    now = utcnow()
    report: dict[str, Any] = {
        "state_dir": str(settings.state_dir),
        "database": _database(db),
        "queue": {"url": settings.queue_location},
    }
    if not report["database"]["reachable"]:
        return report
    with db.reader() as s:
        report["tasks"] = {k: int(v) for k, v in s.execute(select(Task.status, func.count()).group_by(Task.status))}
        report["queue"].update(_queue(s, now))
        report["workers"] = _workers(s, now)
        report["gaps"] = int(s.scalar(select(func.count()).select_from(CapabilityGap)) or 0)
        report["sync_errors"] = int(s.scalar(select(func.count()).select_from(SyncError)) or 0)
    return report
