"""Per-process state of a worker: settings, database and job context, created once on first use."""

from __future__ import annotations

import threading
from typing import Any

from coord.jobs import HANDLERS, JobContext
from coord.outbox import run_job

_lock = threading.Lock()
_ctx: JobContext | None = None
_bell: Any = None


def init(settings: Any, db: Any, bell: Any) -> None:
    global _ctx, _bell
    with _lock:
        _ctx, _bell = JobContext(settings, db), bell


def context() -> JobContext:
    global _ctx, _bell
    with _lock:
        if _ctx is None:
            from coord.db import open_database
            from coord.settings import load_settings
            from worker.bell import QueueBell

            settings = load_settings().settings
            _ctx, _bell = JobContext(settings, open_database(settings)), QueueBell(settings)
        return _ctx


def run_outbox_job(outbox_id: str) -> None:
    ctx = context()
    outcome, follow_ups = run_job(ctx.db, outbox_id, HANDLERS, ctx)
    if follow_ups:
        _bell.ring(follow_ups)
    if outcome.status == "retry":
        # Raising lets Huey log it; the retry itself is driven by the row's next_attempt_at (reconciler),
        # so a crash between attempts cannot lose it.
        raise RuntimeError(f"outbox job {outbox_id} failed, will retry: {outcome.error}")
