"""What `coord status` reports: engine and reachability, queue health, workers, recent failures.

Each section is a small function so later features (folder sync, installer sandbox, matching mode) add
their own section here rather than growing the CLI.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from coord.clock import utcnow
from coord.db.models import CapabilityGap, Install, OutboxJob, PeriodicRun, SyncError, Task, WorkerHeartbeat
from coord.errors import CoordError

WORKER_STALE = timedelta(seconds=60)


def _database(db: Any, settings: Any) -> dict[str, Any]:
    """Which engine, reachable or not (and why), its schema, and the figures that matter when several
    worker hosts share it (PostgreSQL: connections in use against the server's limit, this host's pool)."""
    from coord.db.migrate import current_revision, head_revision

    out: dict[str, Any] = {"engine": db.dialect, "url": db.safe_url}
    try:
        db.ping()
        with db.reader() as s:
            server = db.backend.server_info(s)
        out.update(reachable=True, schema=current_revision(db), schema_head=head_revision(), server=server)
    except CoordError as exc:
        out.update(reachable=False, error=exc.message)
    if db.dialect != "sqlite":
        out["pool"] = {"size": settings.db_pool_size, "max_overflow": settings.db_max_overflow}
    return out


def _queue_engine(settings: Any) -> dict[str, Any]:
    """The Huey queue: SQLite file or Redis server, and whether the server answers (password hidden)."""
    from coord.db.engine import hide_password

    location = settings.queue_location
    if not location.startswith(("redis://", "rediss://", "unix://")):
        return {"engine": "sqlite", "url": location, **_sqlite_queue_file(Path(location))}
    out: dict[str, Any] = {"engine": "redis", "url": hide_password(location)}
    try:
        import redis

        redis.Redis.from_url(location, socket_connect_timeout=3, socket_timeout=3).ping()
        out["reachable"] = True
    except Exception as exc:  # redis errors, OSError, a malformed URL: all mean "not usable"
        out.update(reachable=False, error=f"queue {out['url']} is not reachable: {' '.join(str(exc).split())}")
    return out


def _sqlite_queue_file(path: Path) -> dict[str, Any]:
    """The SqliteHuey file can be used when it is readable and writable, or, not made yet, when the nearest
    existing folder above it is writable (the first worker creates it). Status itself creates nothing."""
    if path.exists():
        ok = os.access(path, os.R_OK | os.W_OK)
        return {"reachable": True} if ok else {"reachable": False, "error": f"queue file {path} is not writable"}
    folder = next(p for p in path.parents if p.exists())  # the root always exists
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return {"reachable": True}
    why = "is not a folder" if not folder.is_dir() else "is not writable"
    return {"reachable": False, "error": f"queue file {path} cannot be created: {folder} {why}"}


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


def _sandbox(settings: Any) -> str:
    """Which sandbox installs run in, the setting that chose it and why (probed once per process)."""
    from coord.installer.runner import probe_reason, probe_sandbox

    found = probe_sandbox()
    if settings.sandbox == "none":
        in_force = "none"
    elif settings.sandbox == "bwrap" and found != "bwrap":
        in_force = "UNAVAILABLE (installs will fail)"
    else:
        in_force = found
    return f"{in_force} (setting sandbox={settings.sandbox!r}; {probe_reason()})"


def _agent_folders(s: Any, settings: Any) -> dict[str, Any]:
    """Folder sync: how many agent files the registry mirrors, how many are bad, and the worst few."""
    from coord.db.models import AgentFileState
    from coord.sync import configured_folders

    bad = s.execute(select(SyncError.path, SyncError.reason).order_by(SyncError.last_seen.desc()).limit(3)).all()
    return {
        "folders": configured_folders(settings),
        "files": int(s.scalar(select(func.count()).select_from(AgentFileState)) or 0),
        "last_sync": s.scalar(select(func.max(AgentFileState.synced_at))),
        "bad_files": [f"{path} ({reason})" for path, reason in bad],  # all of them: `coord agents errors`
    }


def _matching(s: Any, settings: Any) -> str:
    """Hybrid or lexical, the model, and how many active agents have a vector (the model is not loaded)."""
    from coord.matching.hybrid import describe_mode

    return describe_mode(s, settings)


def _periodic(s: Any, now: Any) -> list[dict[str, Any]]:
    return [
        {
            "job": r.name,
            "runs": r.runs,
            "last_period": r.period_start.isoformat() if r.runs else None,
            "finished_s_ago": round((now - r.finished_at).total_seconds(), 1) if r.finished_at else None,
            "by": r.worker_id,
            "result": r.result,
            "last_error": r.last_error,
        }
        for r in s.scalars(select(PeriodicRun).order_by(PeriodicRun.name))
    ]


def reachability(part: dict[str, Any]) -> str:
    """`reachable`, or `UNREACHABLE: why`: one word a person can scan for, and the reason."""
    return "reachable" if part.get("reachable") else "UNREACHABLE: " + part.get("error", "no answer")


def healthy(report: dict[str, Any]) -> bool:
    """Both engines answer; otherwise `coord status` exits 69 (EX_UNAVAILABLE), as coord does everywhere."""
    return bool(report["database"]["reachable"] and report["queue"].get("reachable"))


def collect(settings: Any, db: Any) -> dict[str, Any]:
    now = utcnow()
    report: dict[str, Any] = {
        "state_dir": str(settings.state_dir),
        "database": _database(db, settings),
        "queue": _queue_engine(settings),
        "sandbox": _sandbox(settings),
    }
    if not report["database"]["reachable"]:
        return report
    if report["database"]["schema"] is None:  # a new, empty database (status does not create the schema)
        report["database"]["note"] = "no coord schema yet: `coord init` or any coord process creates it"
        report["queue"].update(pending_jobs=0, oldest_pending_age_s=None, failed_last_hour=0, last_errors=[])
        report.update(tasks={}, workers=[], gaps=0, sync_errors=0)
        return report
    with db.reader() as s:
        report["tasks"] = {k: int(v) for k, v in s.execute(select(Task.status, func.count()).group_by(Task.status))}
        report["queue"].update(_queue(s, now))
        report["workers"] = _workers(s, now)
        report["periodic"] = _periodic(s, now)
        report["gaps"] = int(s.scalar(select(func.count()).select_from(CapabilityGap)) or 0)
        report["sync_errors"] = int(s.scalar(select(func.count()).select_from(SyncError)) or 0)
        report["agent_folders"] = _agent_folders(s, settings)
        report["matching"] = _matching(s, settings)
        report["installs"] = {k: int(v) for k, v in s.execute(select(Install.status, func.count())
                                                              .group_by(Install.status))}
    return report
