"""Agent folders -> registry: reconcile on start, sync changed files, create agent files (no watchdog here;
reading and parsing the files is coord.agentscan, recording what was read is coord.syncapply).

The folders are where agent definitions live; the registry mirrors them. Each file has a row in
`agent_files` (its last good parse and the stat/hash of the bytes last read), and the registry is the
projection of those rows by precedence: for each name, the file in the highest-precedence folder wins
(project before user, as Claude Code). Consequences that this module and coord.syncapply rely on:

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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from coord import fsutil
from coord.agentfiles import agent_path, parse_agent_text
from coord.agentscan import MAX_PATH_CHARS, Job, Scan, is_agent_filename, list_folder, read_all, read_file, signature
from coord.clock import utcnow
from coord.db.backend import Backend
from coord.db.models import Agent, AgentFileState, SyncError
from coord.errors import Conflict, InvalidInput, SettingsError
from coord.logs import get_logger
from coord.syncapply import (
    BATCH_FILES,
    SyncReport,
    apply_scans,
    clear_errors,
    count_errors,
    projection_mismatches,
    resolve_names,
    set_error,
)

log = get_logger(__name__)

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
            apply_scans(s, db.backend, settings, folders, pending, utcnow(), report)
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
        mismatched = projection_mismatches(s, folders)
    with db.session() as s:
        db.backend.lock_agent_sync(s)
        now = utcnow()
        # A folder that cannot be listed is an error of its own; its files keep their last known state.
        for folder in unlistable:
            set_error(s, folder, folder, "folder_unreadable", "cannot list the folder; check its permissions "
                      "(its agents are kept as last seen)", now)
        clear_errors(s, [f for f in folders if f not in unlistable])
        s.execute(delete(SyncError.__table__).where(SyncError.__table__.c.folder.not_in(folders)))
        if mismatched:
            log.info("sync.reproject", names=len(mismatched))
            resolve_names(s, db.backend, folders, mismatched, now, report)
    report.errors = count_errors(db)
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
            apply_scans(s, db.backend, settings, folders, scans, utcnow(), report,
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
    apply_scans(session, backend, settings, folders, [scan], now, report, {target: origin})
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


def list_errors(db: Any, limit: int | None = None, *, warnings: bool = False) -> list[SyncErrorInfo]:
    """Files that could not be synced; with `warnings`, also files synced with a warning (their last good
    read carried one, e.g. frontmatter read leniently), reason prefixed `warning:`."""
    with db.reader() as s:
        stmt = select(SyncError).order_by(SyncError.folder, SyncError.path)
        if limit:
            stmt = stmt.limit(limit)
        rows = [SyncErrorInfo(e.path, e.folder, e.reason, e.message, e.first_seen, e.last_seen)
                for e in s.scalars(stmt)]
        if warnings:
            failing = {r.path for r in rows}
            files = s.execute(select(AgentFileState.path, AgentFileState.folder, AgentFileState.spec,
                                     AgentFileState.synced_at).order_by(AgentFileState.folder, AgentFileState.path))
            rows += [SyncErrorInfo(path, folder, f"warning: {reason}", message, synced, synced)
                     for path, folder, spec, synced in files if path not in failing
                     for reason, message in (spec or {}).get("warnings", [])]
    return rows[:limit] if limit else rows


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
