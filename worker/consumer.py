"""Huey's consumer, with coord's signal semantics and hooks for the daemon.

Signals (main process):
- SIGTERM (systemd's stop): graceful. The stop flag is set, so no worker takes another message; running
  jobs get `shutdown_timeout` seconds to finish; then the consumer returns. A second SIGTERM cuts the wait.
- SIGINT: immediate stop (running jobs are abandoned; their leases expire and the reconciler re-runs them).
- SIGHUP: reload the live settings (the daemon does it between two turns of the main loop). Huey's own
  SIGHUP re-executes the process, which would drop running jobs; coord does not use it.
Worker processes (worker_type "process") ignore SIGTERM and SIGHUP; huey sends them SIGINT when the
grace period is over.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from huey.consumer import Consumer, Scheduler


class CoordScheduler(Scheduler):
    # Check periodic tasks every second: coord's periodic jobs have periods of seconds, and each task
    # decides for itself whether its period has come (worker/periodic.py).
    periodic_task_seconds = 1


class CoordConsumer(Consumer):
    scheduler_class = CoordScheduler

    def __init__(
        self,
        huey: Any,
        *,
        on_started: Callable[[], None],
        on_tick: Callable[[], None],
        on_stopping: Callable[[], None],
        **options: Any,
    ) -> None:
        self.on_started, self.on_tick, self.on_stopping = on_started, on_tick, on_stopping
        self.reload_requested = False
        self.stopping = False
        super().__init__(huey, graceful_signal="TERM", **options)

    def start(self) -> None:
        super().start()
        self.on_started()

    def _handle_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True  # acted on in loop(), outside the signal handler
            return
        super()._handle_signal(signum, frame)

    def stop(self, graceful: bool = False) -> None:
        if not self.stopping:
            self.stopping = True
            self.on_stopping()
        super().stop(graceful=graceful)

    def loop(self, health_check_ts: float | None = None) -> float | None:
        health_check_ts = super().loop(health_check_ts)  # raises ConsumerStopped once stopped
        self.on_tick()
        return health_check_ts
