"""Install history and rollback (invariant 7): what `coord installs ls|show|rollback` reads and does.

Rollback undoes an install's recorded changes, newest first: each client-config entry it wrote (the exact
previous bytes while the file still holds what coord wrote, else only coord's entry; with
`restore_backup`, the backup taken before the write, whatever happened since), then its prefix and
`bin/` links (restoring any link it replaced). A prefix another live install still uses is kept. The
install ends `rolled_back` (or `rollback_failed` with the reasons, and may be rolled back again: every
step is idempotent), with an audit event naming who asked.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coord import audit
from coord.clock import utcnow
from coord.db.models import Install, InstallAttempt
from coord.errors import Conflict, CoordError, InvalidInput, NotFound
from coord.fsutil import update_file
from coord.installer.install import uninstall
from coord.installer.mcpconfig import ConfigChange
from coord.installer.mcpconfig import rollback as rollback_config
from coord.installer.service import backup_dir_for
from coord.logs import get_logger

log = get_logger(__name__)

STATUSES = ("pending", "queued", "running", "retrying", "interrupted", "installed", "failed", "denied", "drifted",
            "rolling_back", "rollback_failed", "rolled_back")
LIVE = ("installed", "drifted")  # what a prefix or config entry still belongs to
ROLLBACKABLE = (*LIVE, "rolling_back", "rollback_failed")
TAIL_LINES = 40


def summary(i: Install) -> dict[str, Any]:
    return {"id": i.id, "kind": i.kind, "name": i.name, "status": i.status, "attempts": i.attempts,
            "approved_by": i.approved_by, "created_at": i.created_at, "finished_at": i.finished_at,
            "error": i.error}


def list_installs(session: Session, *, status: str | None = None, kind: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
    stmt = select(Install).order_by(Install.created_at.desc(), Install.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Install.status == status)
    if kind is not None:
        stmt = stmt.where(Install.kind == kind)
    return [summary(i) for i in session.scalars(stmt)]


def _load(session: Session, install_id: str) -> Install:
    install = session.get(Install, install_id)
    if install is None:
        raise NotFound(f"install {install_id!r} does not exist (see `coord installs ls`)")
    return install


def describe(session: Session, install_id: str) -> dict[str, Any]:
    """Everything recorded about one install: plan, who approved, each step of each attempt, changes made,
    and the secrets the user must set."""
    i = _load(session, install_id)
    attempts = session.scalars(select(InstallAttempt).where(InstallAttempt.install_id == i.id)
                               .order_by(InstallAttempt.id)).all()
    return {
        **summary(i), "proposal_id": i.proposal_id, "approval_id": i.approval_id, "plan": i.plan,
        "prefix": i.prefix, "changes": i.changes, "details": i.details, "rolled_back_at": i.rolled_back_at,
        "required_secrets": (i.details or {}).get("required_secrets") or [],
        "steps": [{"attempt": a.attempt, "step": a.step, "status": a.status, "exit_code": a.exit_code,
                   "duration": a.duration, "sandbox": a.sandbox, "argv": a.argv, "worker": a.worker,
                   "started_at": a.started_at, "finished_at": a.finished_at,
                   "output_tail": "\n".join((a.output_tail or "").splitlines()[-TAIL_LINES:])} for a in attempts],
    }


def _restore_backup(change: ConfigChange, backup_dir: Path) -> None:
    """Put the backup's bytes back whatever the file holds now (the current bytes are backed up first)."""
    original = Path(change.backup or "").read_bytes()
    update_file(change.path, lambda _current: original, backup_dir=backup_dir)


def _undo(settings: Any, change: dict[str, Any], shared: set[str], restore_backup: bool) -> str:
    kind = change.get("type")
    if kind == "config":
        cc = ConfigChange.from_dict(change)
        backup_dir = backup_dir_for(settings, cc.path)
        if restore_backup and cc.backup and cc.backup.exists():
            _restore_backup(cc, backup_dir)
            return f"restored {cc.path} from {cc.backup}"
        rollback_config(cc, backup_dir=backup_dir)
        return f"removed {cc.name!r} from {cc.path}" + (" (previous entry restored)" if cc.previous else "")
    if kind == "prefix":
        prefix = change["prefix"]
        if prefix in shared:
            return f"kept {prefix}: another installed install uses it"
        links = [Path(p) for p in (change.get("bins") or {}).values()]
        uninstall(Path(prefix), links, {Path(k): v for k, v in (change.get("replaced_links") or {}).items()})
        return f"removed {prefix} and its links {sorted(change.get('bins') or {})}"
    return f"nothing to undo for a {kind} record"


def rollback_install(db: Any, settings: Any, install_id: str, *, by: str, restore_backup: bool = False,
                     now: datetime | None = None) -> dict[str, Any]:
    """Undo an install's changes (see the module docstring); rolling back twice changes nothing."""
    if not isinstance(by, str) or not by.strip():
        raise InvalidInput("say who rolls back with --by NAME")
    now = now or utcnow()
    with db.session() as s:
        install = _load(s, install_id)
        if install.status == "rolled_back":
            return {"id": install.id, "status": "rolled_back", "changed": False, "undone": [], "problems": []}
        if install.status not in ROLLBACKABLE:
            raise Conflict(f"install {install.id} is {install.status}: only an installed one can be rolled back "
                           "(a failed or denied install left nothing behind)", status=install.status)
        s.execute(update(Install).where(Install.id == install.id, Install.status.in_(ROLLBACKABLE))
                  .values(status="rolling_back").execution_options(synchronize_session=False))
        changes = list(install.changes or [])
        others = s.scalars(select(Install.prefix).where(Install.id != install.id, Install.status.in_(LIVE),
                                                        Install.prefix.is_not(None))).all()
    shared = set(others)
    undone, problems = [], []
    for change in reversed(changes):  # newest first: config entries, then the prefix they point into
        try:
            undone.append(_undo(settings, change, shared, restore_backup))
        except (CoordError, OSError) as exc:
            problems.append(f"{change.get('path') or change.get('prefix')}: {getattr(exc, 'message', exc)}")
    with db.session() as s:
        install = s.get(Install, install_id)
        install.details = {**(install.details or {}), "rollback": {"by": by, "at": now.isoformat(),
                                                                   "undone": undone, "problems": problems}}
        if problems:
            install.status, install.error = "rollback_failed", "; ".join(problems)
        else:
            install.status, install.rolled_back_at = "rolled_back", now
        action = "install.rollback_failed" if problems else "install.rolled_back"
        audit.record(s, by, action, "install", install.id, now, undone=undone, problems=problems or None,
                     restore_backup=restore_backup or None)
    log.info(action, install_id=install_id, by=by, undone=undone, problems=problems)
    return {"id": install_id, "status": "rollback_failed" if problems else "rolled_back", "changed": True,
            "undone": undone, "problems": problems}


class InstallDesk:
    """The CLI's (and later a web page's) entry point to install history."""

    def __init__(self, settings: Any, db: Any) -> None:
        self.settings, self.db = settings, db

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.reader() as s:
            return list_installs(s, status=status, kind=kind, limit=limit)

    def show(self, install_id: str) -> dict[str, Any]:
        with self.db.reader() as s:
            return describe(s, install_id)

    def rollback(self, install_id: str, *, by: str, restore_backup: bool = False) -> dict[str, Any]:
        return rollback_install(self.db, self.settings, install_id, by=by, restore_backup=restore_backup)


__all__ = ["InstallDesk", "describe", "list_installs", "rollback_install"]
