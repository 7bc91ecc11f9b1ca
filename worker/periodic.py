"""Huey periodic tasks for coord's periodic jobs (reconcile the outbox, reap leases, expire approvals).

Huey's scheduler only knows minutes; coord's consumer checks periodic tasks every second
(worker/consumer.py) and each task's `validate_datetime` says yes once per period of its job, with the
interval read from the live settings. Every consumer on the queue does this, so one period can produce
a message per consumer: `coord.periodic.run_periodic` claims the period in the coordination DB and the
losers do nothing. Periodic messages carry a high priority, so a backlog of outbox bells does not delay
the reconciler, and expire once stale (the next period sends a fresh one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from coord.clock import utcnow
from coord.periodic import JOBS, period_start, run_periodic

PERIODIC_PRIORITY = 100
STALE_AFTER_SECONDS = 60
# The reconciler's cap: it rings at most this many rows minus the bells already queued.
QUEUE_ROOM = 2000

_registered: dict[int, dict[str, Any]] = {}


class EveryPeriod:
    """`validate_datetime` for one job: true at the first check in each of its periods (this process)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last: datetime | None = None

    def __call__(self, timestamp: datetime) -> bool:
        from worker import runtime

        now = timestamp.replace(tzinfo=UTC) if timestamp.tzinfo is None else timestamp  # huey: naive UTC
        start = period_start(now, JOBS[self.name].interval(runtime.settings()))
        if start == self.last:
            return False
        self.last = start
        return True


def run_named(huey: Any, name: str) -> dict[str, Any] | None:
    from worker import runtime

    extra: dict[str, Any] = {}
    if name == "reconcile_outbox":
        queued = int(huey.pending_count())
        extra.update(queued=queued, room=max(0, QUEUE_ROOM - queued))
    ctx = runtime.context()
    result = run_periodic(ctx.db, ctx.settings, name, worker_id=runtime.worker_id(), now=utcnow(), **extra)
    if result and result.get("ring"):
        runtime.bell().ring(result["ring"])
    return result


def periodic_for(huey: Any) -> dict[str, Any]:
    """Register the periodic tasks on a Huey instance once (the consumer's side only)."""
    key = id(huey)
    if key in _registered:
        return _registered[key]
    tasks = {}
    for name in JOBS:

        def body(name: str = name) -> None:
            run_named(huey, name)

        tasks[name] = huey.periodic_task(
            EveryPeriod(name), name=f"coord.periodic.{name}", priority=PERIODIC_PRIORITY,
            expires=STALE_AFTER_SECONDS,
        )(body)
    _registered[key] = tasks
    return tasks
