"""SIGHUP: which settings a running worker can take on, and which need a restart.

Safety flags, policy thresholds, approval TTL, install limits, notification targets, retry and reconcile
timings, log level and the agent folders apply live. Where state lives and how the consumer is built
(database, queue, worker count and type, polling) are fixed for the life of the process: a change to
them is logged as needing a restart and otherwise ignored, so a reload never half-moves the daemon.
"""

from __future__ import annotations

from typing import Any

RESTART_ONLY = frozenset({
    "state_dir",
    "database_url",
    "queue_url",
    "sqlite_synchronous",
    "db_pool_size",
    "db_max_overflow",
    "tools_dir",
    "worker_concurrency",
    "worker_type",
    "worker_idle_poll_seconds",
    "shutdown_grace_seconds",
    "dispatch",
})


def merge_live(current: Any, fresh: Any) -> tuple[Any, list[str], list[str]]:
    """(settings to run with, names applied, names that need a restart)."""
    changed = [name for name in type(current).model_fields if getattr(current, name) != getattr(fresh, name)]
    live = [name for name in changed if name not in RESTART_ONLY]
    restart = [name for name in changed if name in RESTART_ONLY]
    merged = current.model_copy(update={name: getattr(fresh, name) for name in live})
    return merged, live, restart
