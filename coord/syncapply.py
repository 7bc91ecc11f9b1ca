"""Scans -> database: file rows, sync errors and the registry, in the caller's transaction.

coord.sync decides what to read and when (reconcile, the watcher's paths, one created file) and hands the
scans of each batch to `apply_scans`; this module records them and re-projects the registry entries of
the names they touch. The rules it keeps are listed in coord.sync's docstring.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from coord import registry
from coord.agentscan import Scan, error_message, read_file, signature
from coord.db.backend import Backend
from coord.db.models import Agent, AgentFileState, SyncError
from coord.errors import InvalidInput
from coord.logs import get_logger

log = get_logger(__name__)

BATCH_FILES = 500  # files per transaction: big enough to amortize a commit, small enough to hold locks briefly
ERROR_REASON_MAX = 32


def _agent_spec(name: str, spec: dict[str, Any]) -> registry.AgentSpec:
    return registry.AgentSpec(name=name, description=spec["description"], instructions=spec.get("instructions") or "",
                              expertise=list(spec["expertise"]),
                              tools=spec["tools"], mcp_servers=list(spec["mcp_servers"]), model=spec["model"],
                              collaboration=dict(spec.get("collaboration") or {}))


@dataclass
class SyncReport:
    """What a sync did; `events` counts registry history events (registered, updated, restored, removed)."""

    folders: list[str] = field(default_factory=list)
    files: int = 0
    read: int = 0
    skipped: int = 0
    events: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # sync_errors rows after the sync
    seconds: float = 0.0

    def count(self, event: str | None, n: int = 1) -> None:
        if event and n:
            self.events[event] = self.events.get(event, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"folders": self.folders, "files": self.files, "read": self.read, "skipped": self.skipped,
                "events": dict(self.events), "errors": self.errors, "seconds": round(self.seconds, 3)}


def set_error(session: Session, path: str, folder: str, reason: str, message: str, now: datetime) -> None:
    row = session.get(SyncError, path)
    reason = reason[:ERROR_REASON_MAX]
    if row is None:
        session.add(SyncError(path=path, folder=folder, reason=reason, message=message, first_seen=now,
                              last_seen=now))
        log.info("sync.bad_file", path=path, reason=reason, error=message)
    else:
        if (row.reason, row.message) != (reason, message):
            row.first_seen = now
            log.info("sync.bad_file", path=path, reason=reason, error=message)
        row.reason, row.message, row.folder, row.last_seen = reason, message, folder, now


def clear_errors(session: Session, paths: Iterable[str], *, reason: str | None = None,
                 keep: str | None = None) -> None:
    """Delete the errors of `paths` (only those with `reason`, or all but those with `keep`)."""
    table = SyncError.__table__
    paths = list(paths)
    for i in range(0, len(paths), BATCH_FILES):
        where = [table.c.path.in_(paths[i:i + BATCH_FILES])]
        if reason is not None:
            where.append(table.c.reason == reason)
        if keep is not None:
            where.append(table.c.reason != keep)
        if session.execute(select(table.c.path).where(*where).limit(1)).first() is None:
            continue  # the usual case: nothing to clear, and no ORM bookkeeping for it
        for row in session.scalars(select(SyncError).where(*where)):
            session.delete(row)


_AMBIGUOUS = object()


def _winner(rows: list[Any], rank: dict[str, int]) -> Any:
    """The row whose file defines this name: the only one in the highest-precedence folder holding it.

    None when no configured folder holds it; _AMBIGUOUS when that folder holds it twice.
    """
    ranked = [r for r in rows if r.folder in rank]
    if not ranked:
        return None
    top = min(rank[r.folder] for r in ranked)
    best = [r for r in ranked if rank[r.folder] == top]
    return best[0] if len(best) == 1 else _AMBIGUOUS


def _duplicates(rows: list[Any], rank: dict[str, int]) -> set[str]:
    """Paths of files that share their name with another file of the same (configured) folder."""
    by_folder: dict[str, list[str]] = {}
    for r in rows:
        if r.folder in rank:
            by_folder.setdefault(r.folder, []).append(r.path)
    return {p for paths in by_folder.values() if len(paths) > 1 for p in paths}


def resolve_names(session: Session, backend: Backend, folders: list[str], names: set[str], now: datetime,
                  report: SyncReport, origins: dict[str, str] | None = None) -> None:
    """Make the registry entries of `names` the projection of their file rows."""
    rank = {f: i for i, f in enumerate(folders)}
    origins = origins or {}
    names_list = sorted(n for n in names if n)
    for i in range(0, len(names_list), BATCH_FILES):
        chunk = names_list[i:i + BATCH_FILES]
        rows_by_name: dict[str, list[Any]] = {}
        for row in session.execute(select(_FILES).where(_FILES.c.name.in_(chunk))):
            rows_by_name.setdefault(row.name or "", []).append(row)
        agents = {a.id: a for a in session.scalars(select(Agent).where(Agent.id.in_(chunk)))}
        upserts: list[registry.Upsert] = []
        removals: list[str] = []
        unique_paths: set[str] = set()
        for name in chunk:
            rows = rows_by_name.get(name, [])
            dups = _duplicates(rows, rank)
            unique_paths |= {r.path for r in rows if r.path not in dups}
            for r in (r for r in rows if r.path in dups):
                current = session.get(SyncError, r.path)
                if current is not None and current.reason != "duplicate_name":
                    continue  # the file's own problem (bad YAML...) is the one to show
                twins = sorted(p for p in dups if p != r.path and os.path.dirname(p) == r.folder)
                set_error(session, r.path, r.folder, "duplicate_name",
                          f"agent name {name!r} is also used by {', '.join(twins)} in the same folder; rename "
                          "or remove one (the registry keeps the previous definition)", now)
            win = _winner(rows, rank)
            agent = agents.get(name)
            if win is _AMBIGUOUS:
                continue
            if win is None:
                if agent is not None and agent.status == "active" and agent.origin != "api":
                    removals.append(name)
                continue
            if agent is not None and agent.status == "active" and agent.source_path == win.path \
                    and agent.content_hash == win.content_hash:
                continue
            keep = agent is not None and agent.origin == "coord" and agent.source_path == win.path
            origin = origins.get(win.path) or ("coord" if keep else "file")
            upserts.append(registry.Upsert(_agent_spec(name, win.spec or {}), origin, win.path, win.content_hash,
                                           tags=list((win.spec or {}).get("tags") or [])))
        clear_errors(session, unique_paths, reason="duplicate_name")
        events = registry.upsert_agents(session, backend, upserts, now=now)
        for event in events.values():
            report.count(event)
        report.count("removed", len(registry.mark_removed_many(session, backend, removals, now=now)))


_FILES = AgentFileState.__table__
# Table (Core) statements for file rows: a reconcile writes thousands, and the ORM's per-object
# bookkeeping would cost more than the parsing.
_UPDATE_FILE = update(_FILES).where(_FILES.c.path == bindparam("_path"))


def apply_scans(session: Session, backend: Backend, settings: Any, folders: list[str], scans: list[Scan],
                now: datetime, report: SyncReport, origins: dict[str, str] | None = None) -> None:
    """Record one batch of scans and re-project the names they touch, in the caller's transaction."""
    backend.lock_agent_sync(session)
    rows = {r.path: r for r in session.execute(select(_FILES).where(_FILES.c.path.in_([s.path for s in scans])))}
    names: set[str] = set()
    gone: list[str] = []
    good: list[str] = []  # parsed fine: their errors go, except a name clash, which resolve_names decides
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for scan in scans:
        row = rows.get(scan.path)
        if not scan.gone and scan.sig is not None:
            # Another syncer may have committed a newer read of this file while we parsed: re-check under
            # the lock, so what we commit is never older than what is already there.
            try:
                now_sig = signature(os.stat(scan.path), time.time_ns())
            except OSError:
                now_sig = None
            if now_sig is None or now_sig[0] != scan.sig[0] or now_sig[2:] != scan.sig[2:]:
                scan = read_file(scan.path, scan.folder, settings.max_agent_file_bytes,
                                 row.seen_hash if row else None)
        if row is not None:
            names.add(row.name or "")
        if scan.gone:
            gone.append(scan.path)
            continue
        assert scan.sig is not None
        size, mtime_ns, ctime_ns, inode = scan.sig
        values: dict[str, Any] = {"folder": scan.folder, "size": size, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns,
                                  "inode": inode, "seen_hash": scan.seen_hash, "synced_at": now}
        if scan.error is None and not scan.unchanged:
            try:  # the registry's own limits (description length), per file like any other problem
                _agent_spec(scan.name or "", scan.spec or {}).validated()
            except InvalidInput as exc:
                scan.error = (str(exc.details.get("reason") or "invalid_field"), error_message(exc, scan.path))
        if scan.error is not None:
            set_error(session, scan.path, scan.folder, scan.error[0], scan.error[1], now)
        if scan.unchanged or scan.error is not None:  # the row keeps its last good parse
            values.update(name=row.name if row else None, content_hash=row.content_hash if row else None,
                          spec=row.spec if row else None)
        else:
            values.update(name=scan.name, content_hash=scan.content_hash, spec=scan.spec)
            names.add(scan.name or "")
            good.append(scan.path)
        if row is None:
            inserts.append({"path": scan.path, **values})
        else:
            updates.append({"_path": scan.path, **values})
    if gone:
        session.execute(delete(_FILES).where(_FILES.c.path.in_(gone)))
        clear_errors(session, gone)
    if inserts:
        session.execute(insert(_FILES), inserts)
    if updates:
        session.execute(_UPDATE_FILE, updates)
    clear_errors(session, good, keep="duplicate_name")
    resolve_names(session, backend, folders, names, now, report, origins)


def projection_mismatches(session: Session, folders: list[str]) -> set[str]:
    """Names whose registry entry is not what their file rows project to (after a crash, a config change)."""
    rank = {f: i for i, f in enumerate(folders)}
    rows_by_name: dict[str, list[Any]] = {}
    for row in session.execute(select(AgentFileState.path, AgentFileState.folder, AgentFileState.name,
                                      AgentFileState.content_hash).where(AgentFileState.name.is_not(None))):
        rows_by_name.setdefault(row.name, []).append(row)
    agents = {a.id: a for a in session.execute(
        select(Agent.id, Agent.status, Agent.origin, Agent.source_path, Agent.content_hash))}
    out = set()
    for name, rows in rows_by_name.items():
        win, agent = _winner(rows, rank), agents.get(name)
        if win is _AMBIGUOUS:
            continue
        if win is None:
            if agent is not None and agent.status == "active" and agent.origin != "api":
                out.add(name)
        elif agent is None or agent.status != "active" or (agent.source_path, agent.content_hash) != \
                (win.path, win.content_hash):
            out.add(name)
    for agent in agents.values():
        if agent.id not in rows_by_name and agent.status == "active" and agent.origin != "api":
            out.add(agent.id)
    return out


def count_errors(db: Any) -> int:
    from sqlalchemy import func

    with db.reader() as s:
        return int(s.scalar(select(func.count()).select_from(SyncError)) or 0)
