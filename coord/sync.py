"""Agent folders -> registry: reconcile on start, sync changed files, create agent files (no watchdog here;
reading and parsing the files is coord.agentscan).

The folders are where agent definitions live; the registry mirrors them. Each file has a row in
`agent_files` (its last good parse and the stat/hash of the bytes last read), and the registry is the
projection of those rows by precedence: for each name, the file in the highest-precedence folder wins
(project before user, as Claude Code). Consequences that the rest of this module relies on:

- A bad file keeps its last good parse, so it never erases a registry entry (invariant 8); its problem is
  a `sync_errors` row, cleared when the file is fixed or deleted.
- Two files with one name in one folder: both get a `duplicate_name` error and the registry keeps what it
  had (possibly nothing) until one is renamed or removed.
- The rows and the registry change in the same transaction, batch by batch, and a reconcile ends by
  re-projecting every name whose registry entry disagrees with its rows. A process killed mid-sync
  leaves committed batches that agree with their files; the next reconcile finishes the rest.
- Syncing never writes to the folders; only create_agent_file does, then syncs that one file at once.
  The watcher's later event finds the same stat or the same hash and changes nothing (no echo).
- Agents registered through the API (origin "api") are never removed by folder sync.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from coord import fsutil, registry
from coord.agentfiles import agent_path, parse_agent_text
from coord.agentscan import (
    MAX_PATH_CHARS,
    Job,
    Scan,
    error_message,
    is_agent_filename,
    list_folder,
    read_all,
    read_file,
    signature,
)
from coord.clock import utcnow
from coord.db.backend import Backend
from coord.db.models import Agent, AgentFileState, SyncError
from coord.errors import Conflict, InvalidInput, SettingsError
from coord.logs import get_logger

log = get_logger(__name__)

BATCH_FILES = 500  # files per transaction: big enough to amortize a commit, small enough to hold locks briefly
ERROR_REASON_MAX = 32

Progress = Callable[[int, int], None]  # (files done, files to do)


# ---- folders ------------------------------------------------------------------------------------------


def configured_folders(settings: Any) -> list[str]:
    """Agent folders, highest precedence first, as absolute paths (the form events and rows use).

    The folder coord creates agents in is watched too, after the others, so an agent it writes always
    reaches the registry.
    """
    out: list[str] = []
    extra = [settings.agent_write_dir] if getattr(settings, "agent_write_dir", None) else []
    for folder in [*settings.agent_dirs, *extra]:
        path = os.path.abspath(os.path.expanduser(str(folder)))
        if path not in out:
            out.append(path)
    return out


def _agent_spec(name: str, spec: dict[str, Any]) -> registry.AgentSpec:
    return registry.AgentSpec(name=name, description=spec["description"], expertise=list(spec["expertise"]),
                              tools=spec["tools"], mcp_servers=list(spec["mcp_servers"]), model=spec["model"],
                              collaboration=dict(spec.get("collaboration") or {}))


# ---- applying scans to the database -------------------------------------------------------------------


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


def _set_error(session: Session, path: str, folder: str, reason: str, message: str, now: datetime) -> None:
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


def _clear_errors(session: Session, paths: Iterable[str], *, reason: str | None = None,
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


def _resolve(session: Session, backend: Backend, folders: list[str], names: set[str], now: datetime,
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
                _set_error(session, r.path, r.folder, "duplicate_name",
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
        _clear_errors(session, unique_paths, reason="duplicate_name")
        events = registry.upsert_agents(session, backend, upserts, now=now)
        for event in events.values():
            report.count(event)
        report.count("removed", len(registry.mark_removed_many(session, backend, removals, now=now)))


_FILES = AgentFileState.__table__
# Table (Core) statements for file rows: a reconcile writes thousands, and the ORM's per-object
# bookkeeping would cost more than the parsing.
_UPDATE_FILE = update(_FILES).where(_FILES.c.path == bindparam("_path"))


def _apply(session: Session, backend: Backend, settings: Any, folders: list[str], scans: list[Scan],
           now: datetime, report: SyncReport, origins: dict[str, str] | None = None) -> None:
    """Record one batch of scans and re-project the names they touch, in the caller's transaction."""
    backend.lock_agent_sync(session)
    rows = {r.path: r for r in session.execute(select(_FILES).where(_FILES.c.path.in_([s.path for s in scans])))}
    names: set[str] = set()
    gone: list[str] = []
    good: list[str] = []  # parsed fine: their errors go, except a name clash, which _resolve decides
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
            _set_error(session, scan.path, scan.folder, scan.error[0], scan.error[1], now)
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
        _clear_errors(session, gone)
    if inserts:
        session.execute(insert(_FILES), inserts)
    if updates:
        session.execute(_UPDATE_FILE, updates)
    _clear_errors(session, good, keep="duplicate_name")
    _resolve(session, backend, folders, names, now, report, origins)


def _projection_mismatches(session: Session, folders: list[str]) -> set[str]:
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


def _count_errors(db: Any) -> int:
    from sqlalchemy import func

    with db.reader() as s:
        return int(s.scalar(select(func.count()).select_from(SyncError)) or 0)


# ---- entry points -------------------------------------------------------------------------------------


def reconcile(settings: Any, db: Any, *, progress: Progress | None = None, workers: int | None = None,
              batch: int = BATCH_FILES) -> SyncReport:
    """Bring the registry in line with every configured folder: the start-up (and periodic) full sync.

    Unchanged files (same size, mtime, ctime and inode) are not read; changed ones are hashed and only
    parsed when their bytes changed. Each batch of `batch` files is one transaction. With no folder
    configured at all nothing is touched: a missing setting must not read as "every agent file deleted".
    """
    started = time.perf_counter()
    folders = configured_folders(settings)
    report = SyncReport(folders=folders)
    if not folders:
        log.info("sync.no_folders")
        return report
    on_disk: dict[str, tuple[str, os.stat_result]] = {}
    unlistable: set[str] = set()
    for folder in folders:
        listing = list_folder(folder)
        if listing is None:
            log.warning("sync.folder_unreadable", folder=folder)
            unlistable.add(folder)
        for path, st in (listing or {}).items():
            on_disk[path] = (folder, st)
    report.files = len(on_disk)
    with db.reader() as s:
        known = {r.path: r for r in s.execute(select(
            AgentFileState.path, AgentFileState.folder, AgentFileState.size, AgentFileState.mtime_ns,
            AgentFileState.ctime_ns, AgentFileState.inode, AgentFileState.seen_hash))}
    now_ns = time.time_ns()
    jobs: list[Job] = []
    for path, (folder, st) in on_disk.items():
        row = known.get(path)
        if row is not None and row.folder == folder and row.mtime_ns is not None and \
                (row.size, row.mtime_ns, row.ctime_ns, row.inode) == signature(st, now_ns):
            report.skipped += 1
            continue
        jobs.append((path, folder, row.seen_hash if row is not None and row.folder == folder else None))
    # Rows of files that are gone, or of folders no longer configured.
    gone = [Scan(path=p, folder=r.folder, gone=True) for p, r in known.items()
            if p not in on_disk and r.folder not in unlistable]
    total = len(jobs) + len(gone)
    done = 0
    if progress:
        progress(0, total)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    pending: list[Scan] = list(gone)

    def flush() -> None:
        nonlocal done
        with db.session() as s:
            _apply(s, db.backend, settings, folders, pending, utcnow(), report)
        done += len(pending)
        pending.clear()
        if progress:
            progress(done, total)

    for scan in read_all(jobs, settings.max_agent_file_bytes, workers):
        report.read += 1
        pending.append(scan)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    with db.reader() as s:
        mismatched = _projection_mismatches(s, folders)
    with db.session() as s:
        db.backend.lock_agent_sync(s)
        now = utcnow()
        # A folder that cannot be listed is an error of its own; its files keep their last known state.
        for folder in unlistable:
            _set_error(s, folder, folder, "folder_unreadable", "cannot list the folder; check its permissions "
                       "(its agents are kept as last seen)", now)
        _clear_errors(s, [f for f in folders if f not in unlistable])
        s.execute(delete(SyncError.__table__).where(SyncError.__table__.c.folder.not_in(folders)))
        if mismatched:
            log.info("sync.reproject", names=len(mismatched))
            _resolve(s, db.backend, folders, mismatched, now, report)
    report.errors = _count_errors(db)
    report.seconds = time.perf_counter() - started
    log.info("sync.reconciled", **report.to_dict())
    return report


def folder_of(path: str, folders: list[str]) -> str | None:
    """The configured folder `path` is an agent file of, or None."""
    parent = os.path.dirname(path)
    ok = parent in folders and is_agent_filename(os.path.basename(path)) and len(path) <= MAX_PATH_CHARS
    return parent if ok else None


def sync_paths(settings: Any, db: Any, paths: Iterable[str | Path], *, origin: str | None = None) -> SyncReport:
    """Sync these files (created, changed, deleted or renamed): the watcher's path after debouncing.

    Paths outside the configured folders, or not named like agent files, are ignored.
    """
    started = time.perf_counter()
    folders = configured_folders(settings)
    report = SyncReport(folders=folders)
    targets = sorted({os.path.abspath(str(p)) for p in paths})
    targets = [p for p in targets if folder_of(p, folders)]
    report.files = len(targets)
    for i in range(0, len(targets), BATCH_FILES):
        chunk = targets[i:i + BATCH_FILES]
        with db.reader() as s:
            known = {path: seen for path, seen in s.execute(
                select(AgentFileState.path, AgentFileState.seen_hash).where(AgentFileState.path.in_(chunk)))}
        scans = [read_file(p, folder_of(p, folders) or "", settings.max_agent_file_bytes, known.get(p))
                 for p in chunk]
        report.read += len(scans)
        with db.session() as s:
            _apply(s, db.backend, settings, folders, scans, utcnow(), report,
                   {p: origin for p in chunk} if origin else None)
    report.seconds = time.perf_counter() - started
    return report


def register_agent_file(session: Session, backend: Backend, settings: Any, path: str | Path, *,
                        now: datetime, origin: str = "coord") -> SyncReport:
    """Sync one file inside the caller's transaction (agent creation registers with its proposal)."""
    folders = configured_folders(settings)
    target = os.path.abspath(str(path))
    folder = folder_of(target, folders)
    if folder is None:
        raise InvalidInput(f"{target} is not in a configured agent folder ({', '.join(folders) or 'none'})")
    report = SyncReport(folders=folders, files=1, read=1)
    known = session.scalar(select(AgentFileState.seen_hash).where(AgentFileState.path == target))
    scan = read_file(target, folder, settings.max_agent_file_bytes, known)
    _apply(session, backend, settings, folders, [scan], now, report, {target: origin})
    return report


def write_new_agent(folder: str | Path, text: str) -> tuple[Path, bool]:
    """Write a new agent file atomically under its validated name; never overwrites another file.

    Returns (path, written): an identical file already there is success without a write (idempotent).
    """
    agent = parse_agent_text(text)  # invalid text never reaches the folder
    path = agent_path(Path(folder), agent.name)
    if path.is_symlink():
        raise Conflict(f"{path} is a symbolic link; coord does not write through links", path=str(path))
    data = text.encode("utf-8")
    written = False

    def transform(current: bytes | None) -> bytes:
        nonlocal written
        if current is None:
            written = True
            return data
        if current == data:
            return current
        raise Conflict(f"{path} already exists with other content; coord never overwrites an agent file. "
                       "Remove or rename it, or choose another name", path=str(path))

    fsutil.update_file(path, transform, make_backup=False)
    if written:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644)  # mkstemp makes 0600; Claude Code and the user must read it
    return path, written


def create_agent_file(settings: Any, db: Any, text: str, *, folder: str | Path | None = None) -> Path:
    """Write a new agent file (folder first, invariant 5) and register it now, through the sync path.

    The watcher's event for the same file later finds nothing to do. Raises Conflict when a different
    file of that name exists, or when another definition of that name already wins the registry.
    """
    target = Path(folder) if folder else settings.agent_create_dir
    if target is None:
        raise SettingsError("no folder to create agents in: set agent_write_dir or agent_dirs")
    target = Path(os.path.abspath(os.path.expanduser(str(target))))
    if str(target) not in configured_folders(settings):
        raise InvalidInput(f"{target} is not a configured agent folder: the registry would never see the file")
    path = agent_path(target, parse_agent_text(text).name)
    with db.reader() as s:
        agent = s.get(Agent, path.stem)
        if agent is not None and agent.status == "active" and agent.source_path != str(path):
            raise Conflict(f"agent {path.stem!r} already exists ({agent.source_path or 'registered via the API'})",
                           agent_id=path.stem)
    path, written = write_new_agent(path.parent, text)
    sync_paths(settings, db, [path], origin="coord")
    log.info("sync.agent_file_created", path=str(path), written=written)
    return path


@dataclass
class SyncErrorInfo:
    path: str
    folder: str
    reason: str
    message: str
    first_seen: datetime
    last_seen: datetime

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


def list_errors(db: Any, limit: int | None = None) -> list[SyncErrorInfo]:
    with db.reader() as s:
        stmt = select(SyncError).order_by(SyncError.folder, SyncError.path)
        if limit:
            stmt = stmt.limit(limit)
        return [SyncErrorInfo(e.path, e.folder, e.reason, e.message, e.first_seen, e.last_seen)
                for e in s.scalars(stmt)]


_reconcile_lock = threading.Lock()  # one full reconcile at a time per process (watcher + periodic rescan)


def reconcile_once(settings: Any, db: Any, **kwargs: Any) -> SyncReport | None:
    """reconcile() unless one is already running in this process (then None)."""
    if not _reconcile_lock.acquire(blocking=False):
        return None
    try:
        return reconcile(settings, db, **kwargs)
    finally:
        _reconcile_lock.release()


__all__ = [
    "SyncErrorInfo",
    "SyncReport",
    "configured_folders",
    "create_agent_file",
    "list_errors",
    "reconcile",
    "register_agent_file",
    "sync_paths",
    "write_new_agent",
]
