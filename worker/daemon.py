"""`coord worker`: the Huey consumer, the periodic jobs and the agent-folder watcher in one process tree.

Start-up: settings -> logging -> database (migrated) -> queue -> task registration -> heartbeat row ->
folder watcher -> consumer (workers + scheduler) -> `READY=1`. The main thread then runs the consumer's
loop, which also supervises: it beats the watchdog health, restarts a failed folder watcher and applies
SIGHUP reloads. Shutdown (SIGTERM): `STOPPING=1`, the consumer stops taking jobs and waits up to the
grace period for running ones, then the watcher stops, the heartbeat row says `stopped`, exit 0.
A `kill -9` at any point loses nothing (invariant 1): leases expire and the reconciler re-rings.

What the daemon owes systemd (worker/sdnotify.py): only the main process notifies (the NOTIFY_SOCKET
variables are removed from the environment so children never see them); `WATCHDOG=1` every
WATCHDOG_USEC/2 while the main loop turns; `RELOADING=1` ... `READY=1` around a reload.
"""

from __future__ import annotations

import time
from typing import Any

from coord.logs import configure_logging, get_logger
from coord.settings import load_settings
from worker import runtime
from worker.heartbeat import HeartbeatWriter, new_worker_id
from worker.reload import merge_live
from worker.sdnotify import Heartbeat, Notifier, WatchdogPinger

log = get_logger(__name__)

# Consumer polling (SQLite queue; a Redis consumer blocks on the queue instead): right after a job the
# next poll comes in 2 ms, backing off by x1.1 per empty poll (a poll is one indexed SELECT) up to
# `worker_idle_poll_seconds`, which an idle worker reaches after about a second.
POLL_INITIAL_DELAY = 0.002
POLL_BACKOFF = 1.1
HEALTH_CHECK_SECONDS = 2.0
MAIN_LOOP_MAX_AGE = 10.0
WATCHER_RETRY_SECONDS = 30.0
# Of the grace period, what is kept back for stopping the watcher and writing the last heartbeat.
CLEANUP_MARGIN = 1.0


class Daemon:
    def __init__(self, config: Any = None, overrides: dict[str, Any] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.settings = load_settings(config, self.overrides).settings
        self.notifier = notifier or Notifier.from_env(unset_environment=True)
        self.loop_beat = Heartbeat(MAIN_LOOP_MAX_AGE)
        self.worker_id = new_worker_id()
        self.watcher: Any = None
        self._watcher_retry_at = 0.0
        self.stopping = False

    # --- start-up ----------------------------------------------------------------------------------------
    def run(self) -> int:
        from worker.app import huey_for, make_huey
        from worker.bell import QueueBell
        from worker.consumer import CoordConsumer
        from worker.periodic import periodic_for
        from worker.tasks import tasks_for

        s = self.settings
        configure_logging(s.log_level, s.log_format)
        hooks = runtime.load_test_hooks()
        self.db = runtime.open_worker_database(s)
        self.huey = huey_for(s)
        tasks_for(self.huey)
        periodic_for(self.huey)
        runtime.install(s, self.db, QueueBell(s), worker_id=self.worker_id, config=self.config,
                        overrides=self.overrides)
        self._recover_installs()
        # Queue depth for the heartbeat comes from an instance of its own: with worker processes, the
        # consumer's instance must hold no open connection when huey forks a replacement worker.
        self.probe = make_huey(s)
        self.heartbeat = HeartbeatWriter(self.db, self.worker_id, lambda: self.settings.heartbeat_interval_seconds,
                                         self._info, on_beat=self._status)
        self.heartbeat.start()
        self._start_watcher()
        # Started once READY=1 is out (systemd counts the watchdog from start-up completion).
        self.pinger = WatchdogPinger(self.notifier, self._healthy)
        self.consumer = CoordConsumer(
            self.huey,
            on_started=self._started,
            on_tick=self._tick,
            on_stopping=self._stopping,
            workers=s.worker_concurrency,
            worker_type=s.worker_type,
            periodic=True,
            initial_delay=POLL_INITIAL_DELAY,
            backoff=POLL_BACKOFF,
            max_delay=s.worker_idle_poll_seconds,
            scheduler_interval=1,
            health_check_interval=HEALTH_CHECK_SECONDS,
            shutdown_timeout=max(0.0, s.shutdown_grace_seconds - CLEANUP_MARGIN),
        )
        log.info("worker.starting", worker_id=self.worker_id, queue=s.queue_location, database=self.db.safe_url,
                 concurrency=s.worker_concurrency, worker_type=s.worker_type, test_hooks=hooks or None)
        try:
            self.consumer.run()
        finally:
            self._shutdown()
        return 0

    def _recover_installs(self) -> None:
        """Installs this host was running when a previous daemon died: `interrupted`, then retried or failed
        by their attempt limit. Before the consumer starts, so no install of ours is running yet."""
        from coord.clock import utcnow
        from coord.installer.service import mark_interrupted

        with self.db.session() as session:
            ring = mark_interrupted(session, utcnow())
        if ring:
            runtime.bell().ring(ring)

    def _started(self) -> None:
        self.loop_beat.beat()
        s = self.settings
        self.notifier.ready(f"running: {s.worker_concurrency} {s.worker_type} workers on {self._queue_kind()}")
        self.pinger.start()
        log.info("worker.ready", worker_id=self.worker_id, watchdog_interval=self.pinger.interval)

    def _queue_kind(self) -> str:
        from worker.app import is_redis

        return "redis" if is_redis(self.settings.queue_location) else "sqlite"

    # --- the main loop's turn ----------------------------------------------------------------------------
    def _tick(self) -> None:
        self.loop_beat.beat()
        if self.consumer.reload_requested:
            self.consumer.reload_requested = False
            self.reload()
        if self.watcher is not None and not self.watcher.healthy() and time.monotonic() >= self._watcher_retry_at:
            log.error("watcher.unhealthy", action="restarting")
            self._stop_watcher()
            self._start_watcher()

    def _healthy(self) -> bool:
        if self.stopping:
            return True  # shutting down within the grace period: no restart wanted
        watcher_ok = self.watcher is None or self.watcher.healthy()
        return self.loop_beat() and self.heartbeat.alive() and watcher_ok

    def _info(self) -> dict[str, Any]:
        s = self.settings
        info: dict[str, Any] = {"concurrency": s.worker_concurrency, "worker_type": s.worker_type,
                                "queue": self._queue_kind(), "jobs": runtime.counters()}
        try:
            info["queued_bells"] = int(self.probe.pending_count())
        except Exception as exc:
            info["queued_bells"] = None
            info["queue_error"] = str(exc)[:200]
        if self.watcher is not None:
            info["watcher_healthy"] = bool(self.watcher.healthy())
        return info

    def _status(self, info: dict[str, Any]) -> None:
        if not self.stopping:
            jobs = info["jobs"]
            self.notifier.status(f"{jobs['done']} jobs done, {jobs['failed']} failed, "
                                 f"{info.get('queued_bells')} bells queued")

    # --- the folder watcher ------------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        if not self.settings.agent_dirs:
            return
        from worker.watcher import FolderWatcher

        self._watcher_retry_at = time.monotonic() + WATCHER_RETRY_SECONDS
        try:
            self.watcher = FolderWatcher(self.settings, self.db)
            self.watcher.start()
        except Exception as exc:  # a bad folder must not take the queue down; health says so
            log.error("watcher.start_failed", error=str(exc))

    def _stop_watcher(self) -> None:
        if self.watcher is None:
            return
        try:
            self.watcher.stop(timeout=5.0)
        except Exception as exc:
            log.warning("watcher.stop_failed", error=str(exc))
        self.watcher = None

    # --- SIGHUP ------------------------------------------------------------------------------------------
    def reload(self) -> None:
        self.notifier.reloading()
        try:
            fresh = load_settings(self.config, self.overrides).settings
        except Exception as exc:
            log.error("settings.reload_failed", error=str(exc), kept="previous settings")
            self.notifier.ready("reload failed; running with the previous settings")
            return
        merged, live, restart = merge_live(self.settings, fresh)
        dirs_changed = merged.agent_dirs != self.settings.agent_dirs
        self.settings = merged
        configure_logging(merged.log_level, merged.log_format)
        runtime.publish_settings(merged)
        if dirs_changed or "agent_write_dir" in live:
            self._stop_watcher()
            self._start_watcher()
        if restart:
            log.warning("settings.need_restart", names=restart)
        log.info("settings.reloaded", applied=live, need_restart=restart or None)
        self.notifier.ready("running (settings reloaded)")

    # --- shutdown ----------------------------------------------------------------------------------------
    def _stopping(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        self.notifier.status(f"stopping: waiting up to {self.settings.shutdown_grace_seconds:g}s for running jobs")
        log.info("worker.stopping", worker_id=self.worker_id, grace_seconds=self.settings.shutdown_grace_seconds)

    def _shutdown(self) -> None:
        self.stopping = True
        self._stop_watcher()
        self.heartbeat.stop("stopped")
        self.pinger.stop(timeout=1.0)
        log.info("worker.stopped", worker_id=self.worker_id, jobs=runtime.counters())
        self.notifier.close()
        self.db.dispose()
