"""Carry out approved installs with the database (seed sections 4 and 5): the wiring around coord.installer.

Two outbox jobs, so that no transaction is open while install processes run for minutes:

1. `execute` (coord.execution, inside its job's transaction) calls `execute_install(session, install, ctx)`.
   The plan is rebuilt from the catalog and the operator's settings (coord.installer.targets). Unsafe
   names, catalog drift since the approval, unpinned versions, sources outside the allowlist and client
   config files that could not take the entry are refused here, before anything runs: the install
   ends `denied` (the allowlist, naming its patterns) or `failed` (the reason). Otherwise an `install`
   job is queued for the install row with max_attempts = settings.max_install_attempts.
2. `install` (`run_install_job`, an OwnTransactions handler) runs the plan in the sandboxed runner. Each
   step is an install_attempts row committed as `running` before its process starts, so a step cut short
   by a dead daemon is found later (`mark_interrupted`, or the next run of the job). An MCP server then
   gets its launch spec written into every configured client config file. A failure a retry may fix (a
   timeout, a download step) raises InstallRetry: run_job records it and runs the job again after a
   backoff, until max_attempts. The install ends `installed` or `failed` with the reason; the proposal
   `executed` or `failed`. An installed MCP server is started once, sandboxed, and its tools pinned
   (coord.installer.toolpin); when that cannot be done the install still succeeds and says why.

Install statuses: pending -> queued -> running -> installed | retrying | interrupted | failed; `denied`;
later `rolled_back` (coord.installer.history). Secrets an MCP server needs are written as `${VAR}`
references only; the variables to set are in `details.required_secrets` and the `install.needs_secrets`
log event.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coord import audit
from coord.clock import utcnow
from coord.db.models import Install, InstallAttempt, OutboxJob, Proposal
from coord.errors import Conflict, CoordError, InvalidInput, PolicyDenied
from coord.installer import toolpin
from coord.installer.install import InstallOutcome
from coord.installer.install import install as install_plan
from coord.installer.install import rollback as rollback_prefix
from coord.installer.mcpconfig import add_server, check_file
from coord.installer.mcpconfig import rollback as rollback_config
from coord.installer.plan import parse_plan
from coord.installer.runner import RunResult, resolve_sandbox, run
from coord.installer.steps import InstallOptions
from coord.installer.targets import Target, check_allowed, resolve
from coord.logs import get_logger
from coord.outbox import OwnTransactions, add_job
from coord.states import JOB_INSTALL

log = get_logger(__name__)

ACTOR = "coord"
STEPS_PER_ATTEMPT = 4  # the most one attempt runs: git clone, checkout, venv, build (then verify)
VERIFY_TIMEOUT = 60.0
LEASE_MARGIN = 120.0  # config writes (each may wait 30 s for a file lock) and the database round trips
RUNNABLE = ("queued", "retrying", "interrupted", "running")  # `running`: a dead worker's job, taken over
INTERRUPTED_NOTE = "coord: interrupted: the worker running this step stopped before it finished"


class InstallRetry(Exception):
    """The attempt failed in a way another attempt may fix; run_job runs the job again after a backoff."""


# ------------------------------------------------------------------------------------------ settings


def verify_timeout(settings: Any) -> float:
    return min(VERIFY_TIMEOUT, settings.install_timeout)


def install_lease(settings: Any) -> timedelta:
    """How long a worker holds an `install` job: every step of one attempt at its timeout, plus verify, the
    MCP tool pin and a margin. Shorter, and a second worker would start the same install while the first
    still runs."""
    return timedelta(seconds=settings.install_timeout * STEPS_PER_ATTEMPT + verify_timeout(settings)
                     + toolpin.pin_timeout(settings) + LEASE_MARGIN)


def options_for(settings: Any) -> InstallOptions:
    # Package managers read only what coord gives them: the machine's pip.conf / global npmrc could point
    # an install at another index than the one the allowlist and the operator's settings name. (User
    # config files are not read either: HOME is inside the prefix.)
    env = {"PIP_CONFIG_FILE": os.devnull, "npm_config_globalconfig": os.devnull}
    if settings.install_offline:
        env["npm_config_offline"] = "true"
    return InstallOptions(
        allowed_sources=tuple(settings.allowed_install_sources), timeout=settings.install_timeout,
        verify_timeout=verify_timeout(settings), sandbox=settings.sandbox,
        github_base_url=settings.install_github_url, env_extra=env,
    )


def backup_dir_for(settings: Any, path: Path) -> Path:
    """Backups of a client config file go under the state dir, in a folder mirroring the file's own, so a
    user's project does not collect `.bak` files and two `.mcp.json` backups never share a folder."""
    return Path(settings.state_dir) / "backups" / Path(path).absolute().parent.relative_to("/")


def config_paths(settings: Any) -> list[Path]:
    return [Path(p).expanduser().absolute() for p in settings.mcp_config_files]


# ----------------------------------------------------------------------------------- execute (step 1)


def _finish_proposal(session: Session, install: Install, status: str, now: datetime, *, error: str | None = None,
                     result: dict[str, Any] | None = None) -> None:
    from coord.execution import finish_proposal  # the one place a proposal's execution outcome is written

    proposal = session.get(Proposal, install.proposal_id) if install.proposal_id else None
    if proposal is not None and proposal.status in ("approved", "executing"):
        finish_proposal(session, proposal, status, now, error=error, result=result)


def _refuse(session: Session, install: Install, status: str, exc: CoordError, now: datetime) -> None:
    install.status, install.error, install.finished_at = status, exc.message, now
    install.details = {**(install.details or {}), "refused": {"error": exc.code, **exc.details}}
    audit.record(session, ACTOR, f"install.{status}", "install", install.id, now, reason=exc.message,
                 **({"patterns": exc.details.get("patterns")} if isinstance(exc, PolicyDenied) else {}))
    _finish_proposal(session, install, "denied" if status == "denied" else "failed", now, error=exc.message)
    log.warning(f"install.{status}", install_id=install.id, name=install.name, reason=exc.message)


def _check_config(path: Path, target: Target) -> None:
    key = target.server_key or ""
    try:
        check_file(path, key, target.launch_spec or {}, secret_vars=target.secrets)
    except Conflict:
        raise Conflict(f"{path} already has an MCP server {key!r} with a different entry, and coord never "
                       "overwrites one: remove that entry (or `coord installs rollback` the install that wrote it) "
                       "and approve again; nothing was installed", path=str(path), name=key) from None


def execute_install(session: Session, install: Install, ctx: Any) -> list[str]:
    """Called by the `execute` job, in its transaction, for a `pending` install row of an approved proposal:
    refuse it (nothing runs) or queue its `install` job. Returns the outbox ids to ring."""
    if install.status != "pending":
        return []  # a replay: already queued, refused or done
    settings, now = ctx.settings, utcnow()
    try:
        target = resolve(install, settings, getattr(ctx, "catalog", None))
        rule = check_allowed(target, settings)
        for path in config_paths(settings) if target.launch_spec is not None else []:
            _check_config(path, target)
    except PolicyDenied as exc:
        _refuse(session, install, "denied", exc, now)
        return []
    except CoordError as exc:  # InvalidInput (unsafe, unpinned, bad config file), NotFound, Conflict
        _refuse(session, install, "failed", exc, now)
        return []
    install.details = {
        **(install.details or {}), "approved_plan": dict(install.plan or {}), "rule": rule, "source": target.source,
        **({"server": target.server, "server_key": target.server_key, "launch_spec": target.launch_spec,
            "required_secrets": list(target.secrets)} if install.kind == "mcp" else {}),
        **({"prefix": str(target.prefix)} if target.prefix else {}),
    }
    install.plan = target.plan.model_dump(mode="json") if target.plan else {}
    install.status = "queued"
    job = add_job(session, ctx.db.backend, JOB_INSTALL, install.id, now=now,
                  max_attempts=settings.max_install_attempts)
    audit.record(session, ACTOR, "install.queued", "install", install.id, now, rule=rule, source=target.source,
                 approved_by=install.approved_by)
    log.info("install.queued", install_id=install.id, name=install.name, source=target.source, rule=rule)
    return [job]


# ------------------------------------------------------------------------------------ install (step 2)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Recorder:
    """The runner `install()` calls: each step is an install_attempts row, committed `running` before its
    process starts (a daemon killed mid-step leaves that evidence) and completed after it."""

    def __init__(self, db: Any, install_id: str, attempt: int, worker: str, runner: Callable[..., RunResult] = run):
        self.db, self.install_id, self.attempt, self.worker, self.runner = db, install_id, attempt, worker, runner
        self.sandbox: str | None = None

    def __call__(self, argv: list[str], **kw: Any) -> RunResult:
        with self.db.session() as s:
            row = InstallAttempt(install_id=self.install_id, attempt=self.attempt, step=kw.get("label") or "run",
                                 argv=list(argv), status="running", sandbox=resolve_sandbox(kw["sandbox"]),
                                 worker=self.worker, started_at=utcnow())
            s.add(row)
            s.flush()
            row_id = row.id
        try:
            result = self.runner(argv, **kw)
        except Exception as exc:  # refused by the runner (a bad argv or environment): nothing ran
            with self.db.session() as s:
                row = s.get(InstallAttempt, row_id)
                row.status, row.output_tail, row.finished_at = "failed", f"coord: {exc}", utcnow()
            raise
        with self.db.session() as s:
            row = s.get(InstallAttempt, row_id)
            row.status = "ok" if result.ok else "timed_out" if result.timed_out else "failed"
            row.exit_code, row.duration, row.output_tail = result.exit_code, result.duration, result.output_tail
            row.sandbox, row.finished_at = result.sandbox_used, utcnow()
        self.sandbox = result.sandbox_used
        return result


@dataclass
class _Snapshot:
    id: str
    kind: str
    name: str
    plan: dict[str, Any]
    details: dict[str, Any]


@dataclass
class _Result:
    status: str  # installed | failed | timed_out
    error: str | None = None
    retryable: bool = False
    prefix: str | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    pin: toolpin.InstallPin | None = None  # an MCP server's tools, listed once it is configured


def _prefix_change(outcome: InstallOutcome) -> dict[str, Any]:
    return {"type": "prefix", "prefix": str(outcome.prefix), "bins": {k: str(v) for k, v in outcome.bins.items()},
            "replaced_links": {str(k): v for k, v in outcome.replaced_links.items()},
            "created": not outcome.already_installed}


def _configure(settings: Any, snap: _Snapshot) -> list[dict[str, Any]]:
    """Write the server's entry into every configured client config; all or none (undone on an error)."""
    spec, key = snap.details["launch_spec"], snap.details["server_key"]
    secrets = snap.details.get("required_secrets") or []
    paths = config_paths(settings)
    if not paths:
        return [{"type": "launch_spec", "name": key, "entry": spec,
                 "note": "no client config files are configured (setting mcp_config_files); add this entry yourself"}]
    done = []
    try:
        for path in paths:
            done.append(add_server(path, key, spec, secret_vars=secrets, backup_dir=backup_dir_for(settings, path)))
    except CoordError:
        for change in reversed(done):
            rollback_config(change, backup_dir=backup_dir_for(settings, change.path))
        raise
    return [{"type": "config", **c.to_dict(), "entry": spec} for c in done]


def _attempt(db: Any, settings: Any, snap: _Snapshot, attempt: int, worker: str,
             runner: Callable[..., RunResult]) -> _Result:
    plan = parse_plan(snap.plan) if snap.plan else None
    result = _Result("installed", details={"worker": worker})
    outcome = None
    if plan is not None:
        recorder = _Recorder(db, snap.id, attempt, worker, runner)
        outcome = install_plan(plan, settings.tools_path, options_for(settings), runner=recorder)
        result.details.update(rule=outcome.rule, sandbox=recorder.sandbox,
                              bins={k: str(v) for k, v in outcome.bins.items()})
        if outcome.status != "installed":
            return _Result(outcome.status, outcome.error, outcome.retryable, details=result.details)
        result.prefix = str(outcome.prefix)
        result.changes.append(_prefix_change(outcome))
    if snap.kind == "mcp":
        try:
            if outcome is not None and str(outcome.prefix) != snap.details.get("prefix"):
                raise InvalidInput(f"the tools folder moved since the install was planned ({snap.details.get('prefix')}"
                                   f" -> {outcome.prefix}); propose it again")
            result.changes += _configure(settings, snap)
        except CoordError as exc:
            if outcome is not None and not outcome.already_installed:
                rollback_prefix(outcome)  # an unconfigured server is not an install; a retry starts clean
            return _Result("failed", exc.message, False, details=result.details)
        result.pin = toolpin.snapshot_at_install(settings, snap.details["launch_spec"])
    return result


def _retryable(exc: CoordError) -> bool:
    # Another worker holding this prefix's lock is the one refusal that passes on its own.
    return isinstance(exc, Conflict) and "prefix" in exc.details


def run_install_job(db: Any, outbox_id: str, ctx: Any, *, runner: Callable[..., RunResult] = run) -> list[str]:
    """The `install` job: one attempt at an install row's plan, outside any transaction (OwnTransactions)."""
    settings, worker = ctx.settings, worker_id()
    with db.session() as s:
        job = s.get(OutboxJob, outbox_id)
        install = s.get(Install, job.ref_id) if job is not None else None
        if install is None:
            log.warning("install.missing", outbox_id=outbox_id)
            return []
        if install.status not in RUNNABLE:
            log.info("install.skipped", install_id=install.id, status=install.status)
            return []
        now = utcnow()
        # We hold the job's lease, so whatever still says `running` belongs to a worker that is gone.
        _close_running(s, install.id, now)
        attempt, max_attempts = job.attempts, job.max_attempts
        install.status, install.attempts = "running", attempt
        install.details = {**(install.details or {}), "worker": worker}
        snap = _Snapshot(install.id, install.kind, install.name, dict(install.plan or {}), dict(install.details))
    log.info("install.attempt", install_id=snap.id, name=snap.name, attempt=attempt, max_attempts=max_attempts)
    try:
        result = _attempt(db, settings, snap, attempt, worker, runner)
    except CoordError as exc:  # refused before its processes ran: allowlist changed, bin clash, no bwrap
        result = _Result("failed", exc.message, _retryable(exc))
    except Exception as exc:  # recorded on the install, then retried like a failed step
        log.exception("install.error", install_id=snap.id)
        result = _Result("failed", f"{type(exc).__name__}: {exc}", True)
    return _record(db, snap, result, attempt, max_attempts)


def _record(db: Any, snap: _Snapshot, result: _Result, attempt: int, max_attempts: int) -> list[str]:
    now = utcnow()
    retry = result.status != "installed" and result.retryable and attempt < max_attempts
    secrets = snap.details.get("required_secrets") or []
    with db.session() as s:
        install = s.get(Install, snap.id)
        install.details = {**(install.details or {}), **result.details, "last_attempt": result.status}
        if result.status == "installed":
            install.status, install.error, install.finished_at = "installed", None, now
            install.prefix, install.changes = result.prefix, result.changes
            _finish_proposal(s, install, "executed", now, result={
                "install_id": install.id, "prefix": result.prefix, "required_secrets": secrets})
            audit.record(s, ACTOR, "install.installed", "install", install.id, now, attempt=attempt,
                         prefix=result.prefix, approved_by=install.approved_by, required_secrets=secrets or None,
                         changes=[{k: c.get(k) for k in ("type", "path", "prefix", "name", "action")}
                                  for c in result.changes])
            if result.pin is not None:
                toolpin.record_at_install(s, install, result.pin, now)
        elif retry:
            install.status = "retrying"
            install.error = f"attempt {attempt} of {max_attempts}: {result.error}; retrying after a backoff"
            audit.record(s, ACTOR, "install.attempt_failed", "install", install.id, now, attempt=attempt,
                         error=result.error)
        else:
            install.status, install.finished_at = "failed", now
            install.error = (f"{result.error} (attempt {attempt} of {max_attempts}, no attempts left)"
                             if result.retryable else result.error)
            _finish_proposal(s, install, "failed", now, error=install.error)
            audit.record(s, ACTOR, "install.failed", "install", install.id, now, attempt=attempt, error=install.error)
    if result.status == "installed":
        log.info("install.installed", install_id=snap.id, name=snap.name, prefix=result.prefix, attempt=attempt)
        if result.pin is not None and result.pin.tools_hash:
            log.info("mcp.tools_pinned", install_id=snap.id, tools_hash=result.pin.tools_hash,
                     tools=len(result.pin.tools), sandbox=result.pin.sandbox)
        elif result.pin is not None:
            log.warning("mcp.tools_not_pinned", install_id=snap.id, reason=result.pin.reason,
                        sandbox=result.pin.sandbox, how="`coord mcp verify` has no pin to compare against")
        if secrets:
            log.warning("install.needs_secrets", install_id=snap.id, server=snap.details.get("server_key"),
                        variables=secrets, how="set these in the environment your MCP client starts from "
                        "(e.g. export " + "=...; export ".join(secrets) + "=...); coord never stores their values")
    elif retry:
        log.warning("install.retrying", install_id=snap.id, attempt=attempt, error=result.error)
        raise InstallRetry(f"install {snap.id} ({snap.name}) attempt {attempt} of {max_attempts}: {result.error}")
    else:
        log.error("install.failed", install_id=snap.id, name=snap.name, attempt=attempt, error=result.error)
    return []


INSTALL_HANDLER = OwnTransactions(run_install_job)


# ------------------------------------------------------------------------------- interrupted attempts


def _close_running(session: Session, install_id: str, now: datetime) -> int:
    rows = session.scalars(select(InstallAttempt).where(InstallAttempt.install_id == install_id,
                                                        InstallAttempt.status == "running")).all()
    for row in rows:
        row.status, row.finished_at = "interrupted", now
        row.output_tail = ((row.output_tail or "") + "\n" + INTERRUPTED_NOTE).lstrip("\n")
    return len(rows)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(session: Session, now: datetime, *, host: str | None = None,
                     alive: Callable[[int], bool] = _pid_alive) -> list[str]:
    """At worker start, before jobs run: installs left `running` by a process of this host that is gone
    are `interrupted` (their running steps too), then retried at once while their job has attempts left,
    else `failed`. Returns the outbox ids to ring. Installs run by other hosts are left to their workers;
    if one died, the next run of its job (after the lease) marks its steps interrupted the same way."""
    host = host or socket.gethostname()
    ring: list[str] = []
    for install in session.scalars(select(Install).where(Install.status == "running")).all():
        who, _, pid = str((install.details or {}).get("worker", "")).rpartition(":")
        if who != host or not pid.isdigit() or (int(pid) != os.getpid() and alive(int(pid))):
            continue
        _close_running(session, install.id, now)
        job = session.scalar(select(OutboxJob).where(OutboxJob.job == JOB_INSTALL, OutboxJob.ref_id == install.id))
        retry = job is not None and job.status == "pending" and job.attempts < job.max_attempts
        what = f"attempt {install.attempts} was interrupted (the worker running it stopped)"
        if retry:
            install.status, install.error = "interrupted", f"{what}; retrying"
            session.execute(update(OutboxJob).where(OutboxJob.id == job.id).values(next_attempt_at=now))
            ring.append(job.id)
        else:
            install.status, install.finished_at = "failed", now
            install.error = f"{what} and no attempts are left (max_install_attempts)"
            if job is not None and job.status == "pending":
                job.status, job.finished_at, job.last_error = "failed", now, install.error
            _finish_proposal(session, install, "failed", now, error=install.error)
        audit.record(session, ACTOR, "install.interrupted", "install", install.id, now, attempt=install.attempts,
                     retry=retry)
        log.warning("install.interrupted", install_id=install.id, name=install.name, attempt=install.attempts,
                    retry=retry)
    return ring


__all__ = ["INSTALL_HANDLER", "InstallRetry", "backup_dir_for", "execute_install", "install_lease", "mark_interrupted",
           "options_for", "run_install_job"]
