"""Per-process state of a worker: settings, database, bell and job counters.

The daemon calls `install()` once before the consumer starts. Worker threads share that state; a forked
worker process (`worker_type = "process"`) notices the new pid and opens its own database, because
pooled connections must never cross a fork. A reload (SIGHUP) bumps a generation number shared with
forked children, so each process re-reads the live settings before its next job.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from coord.jobs import HANDLERS, JobContext
from coord.logs import configure_logging, get_logger
from coord.outbox import backoff, run_batch
from coord.states import JOB_DISPATCH, JOB_INSTALL

log = get_logger(__name__)

# Test-only: a comma-separated list of modules imported at start-up, which may add job handlers to
# coord.jobs.HANDLERS (the acceptance tests use it for jobs that raise or kill their worker).
# Production deployments never set it.
TEST_HOOKS_ENV = "COORD_TEST_HOOKS"
COUNTERS = ("done", "retried", "failed", "skipped")
# Jobs that may run several to a transaction (coord.outbox.run_batch): short, database-only handlers.
BATCH_JOBS = frozenset({JOB_DISPATCH})
BATCH_LIMIT = 50


@dataclass
class _State:
    pid: int
    settings: Any
    db: Any
    bell: Any
    worker_id: str
    config: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    generation: int = 0


_lock = threading.Lock()
_state: _State | None = None
# Shared with forked children (created before the fork): the settings generation and job counters.
_generation = multiprocessing.Value("i", 0)
_counters = {name: multiprocessing.Value("q", 0) for name in COUNTERS}


def load_test_hooks() -> list[str]:
    names = [n.strip() for n in os.environ.get(TEST_HOOKS_ENV, "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def install(settings: Any, db: Any, bell: Any, *, worker_id: str, config: Any = None,
            overrides: dict[str, Any] | None = None) -> None:
    global _state
    with _lock:
        _state = _State(os.getpid(), settings, db, bell, worker_id, config, dict(overrides or {}),
                        _generation.value)


def open_worker_database(settings: Any, *, migrate: bool = True) -> Any:
    """The worker's connection to the coordination DB. On SQLite its commits are not flushed one by one
    (`synchronous=NORMAL`: durable against a killed process, not a power cut), whatever
    `sqlite_synchronous` says for clients. Safe by invariant 1: everything the worker writes is derived
    from durable outbox rows and idempotent, so a power cut that undoes its last commits only makes the
    reconciler run those jobs again; and the WAL is one file, so the next flushed commit by anyone
    (every client write) makes all earlier worker commits durable too. It saves an fsync per job.
    PostgreSQL: the same with `synchronous_commit=off` for the worker's sessions (a server crash can undo
    its last commits, never corrupt them; WAL is flushed in order, so a client's commit flushes them too).
    A URL that sets `options` itself keeps them.
    """
    from coord.db import Database
    from coord.db.migrate import upgrade

    db = Database(settings.db_url, sqlite_synchronous="NORMAL", pg_synchronous_commit="off",
                  pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    if migrate:
        upgrade(db)
    return db


def _ensure_state() -> _State:
    """This process's state; built lazily in a process that did not install() (a bare consumer)."""
    global _state
    if _state is None:
        from coord.settings import load_settings
        from worker.bell import QueueBell

        settings = load_settings().settings
        _state = _State(os.getpid(), settings, open_worker_database(settings), QueueBell(settings),
                        f"{os.uname().nodename}:{os.getpid()}", generation=_generation.value)
    return _state


def _after_fork(state: _State) -> None:
    # The parent's pooled connections are the parent's: forget them without closing them.
    state.db.engine.dispose(close=False)
    if state.db.read_engine is not state.db.engine:
        state.db.read_engine.dispose(close=False)
    state.db = open_worker_database(state.settings, migrate=False)
    state.pid = os.getpid()


def _reload(state: _State) -> None:
    from coord.settings import load_settings
    from worker.reload import merge_live

    try:
        fresh = load_settings(state.config, state.overrides).settings
    except Exception as exc:  # the daemon already logged it and kept the old settings
        log.warning("settings.reload_failed", error=str(exc))
    else:
        state.settings, _changed, _restart = merge_live(state.settings, fresh)
        configure_logging(state.settings.log_level, state.settings.log_format)
    state.generation = _generation.value


def _current() -> _State:
    with _lock:
        state = _ensure_state()
        if state.pid != os.getpid():
            _after_fork(state)
        if state.generation != _generation.value:
            _reload(state)
        return state


def context() -> JobContext:
    state = _current()
    return JobContext(state.settings, state.db)


def settings() -> Any:
    return _current().settings


def worker_id() -> str:
    return _current().worker_id


def bell() -> Any:
    return _current().bell


def publish_settings(new_settings: Any) -> None:
    """The daemon applied a reload: every process picks it up before its next job."""
    with _lock:
        if _state is not None:
            _state.settings = new_settings
        with _generation.get_lock():
            _generation.value += 1
        if _state is not None:
            _state.generation = _generation.value


def counters() -> dict[str, int]:
    return {name: int(v.value) for name, v in _counters.items()}


def _count(name: str) -> None:
    with _counters[name].get_lock():
        _counters[name].value += 1


def job_lease(settings: Any) -> Any:
    """How long a taken job is protected from a second worker. An install runs for minutes, so its lease
    covers one attempt (each retry is a new take); everything else finishes in milliseconds."""
    from coord.installer.service import install_lease

    base = timedelta(seconds=settings.outbox_lease_seconds)
    install = install_lease(settings)  # one attempt: every step at install_timeout, verify, a margin

    def lease(job: str) -> timedelta:
        return max(base, install) if job == JOB_INSTALL else base

    return lease


def run_outbox_job(outbox_id: str) -> None:
    state = _current()
    ctx = JobContext(state.settings, state.db)
    outcomes, follow_ups = run_batch(ctx.db, outbox_id, HANDLERS, ctx, batchable=BATCH_JOBS, limit=BATCH_LIMIT,
                                     lease=job_lease(ctx.settings))
    for outcome in outcomes:
        _count({"done": "done", "retry": "retried", "failed": "failed"}.get(outcome.status, "skipped"))
    if follow_ups:
        state.bell.ring(follow_ups)
    for outcome in outcomes:
        if outcome.status == "retry":
            # Ring again after the backoff (huey's schedule). The row's next_attempt_at says the same, so
            # if this ring is lost the reconciler rings instead.
            state.bell.ring_later([outcome.outbox_id], backoff(outcome.attempts).total_seconds())
