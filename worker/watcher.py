"""Agent-folder sync while the daemon runs: watchdog events, debounced, into coord.sync.

Contract used by worker/daemon.py:
    watcher = FolderWatcher(settings, db)
    watcher.start()          # watch, then reconcile every configured folder (in a thread); returns at once
    watcher.stop(timeout)    # stop observing and flush pending events
    watcher.healthy()        # False once the thread died or syncing keeps failing

Events only name paths; what changed is decided by coord.sync from the files themselves (stat, hash,
parse), so a lost, doubled or reordered event costs nothing but a re-check. An editor's atomic save
(write a temp file, rename it over the old one) is a move whose destination is the agent file; the temp
file is not an agent file and is ignored. A path is synced once it has been quiet for the debounce time,
so a burst of writes to one file costs one sync, and a burst over many files is synced in batches.

Watches are set before the start-up reconcile, so nothing written meanwhile is missed. Folders that do
not exist yet, or that are deleted or replaced while we run, are checked every `poll_seconds` and
reconciled when they (re)appear; a full rescan every `rescan_seconds` (cheap: stat only) catches what
inotify may drop (queue overflow, changes through symlinks).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from typing import Any

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from coord import sync
from coord.logs import get_logger

log = get_logger(__name__)

# Reads (our own included) raise open/close-nowrite events; subscribing to them would make every sync
# trigger another.
EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
          FileAttribEvent, DirDeletedEvent, DirMovedEvent]
MAX_DELAY_FACTOR = 5  # a file written continuously is still synced every 5 debounce periods
MIN_MAX_DELAY = 0.5
FAILURES_UNHEALTHY = 3
RETRY_SECONDS = 1.0


class _Stopped(Exception):
    pass


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        self.watcher._note([os.fsdecode(p) for p in paths if p], event.is_directory)


class FolderWatcher:
    def __init__(self, settings: Any, db: Any, *, rescan_seconds: float = 60.0, poll_seconds: float = 1.0) -> None:
        self.settings = settings
        self.db = db
        self.debounce = float(settings.watch_debounce_seconds)
        self.max_delay = max(MIN_MAX_DELAY, MAX_DELAY_FACTOR * self.debounce)
        self.rescan_seconds = rescan_seconds
        self.poll_seconds = poll_seconds
        self.folders = sync.configured_folders(settings)
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[float, float]] = {}  # path -> (first event, last event), monotonic
        self._check_folders = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._watches: dict[str, tuple[Any, tuple[int, int]]] = {}  # folder -> (watch, (st_dev, st_ino))
        self._failures = 0
        self.ready = threading.Event()  # set once the start-up reconcile is done (tests, status)
        self.last_report: sync.SyncReport | None = None

    # ---- the daemon's contract ------------------------------------------------------------------------

    def start(self) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="coord-folder-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(max(0.0, deadline - time.monotonic()))

    def healthy(self) -> bool:
        if self._thread is None:
            return True  # not started: nothing is wrong yet
        return self._thread.is_alive() and self._observer is not None and self._observer.is_alive() \
            and self._failures < FAILURES_UNHEALTHY

    # ---- events -----------------------------------------------------------------------------------------

    def _note(self, paths: list[str], is_directory: bool) -> None:
        now = time.monotonic()
        with self._cond:
            for path in paths:
                if is_directory:
                    if path in self.folders:
                        self._check_folders = True  # the folder itself went away or was replaced
                    continue
                if sync.folder_of(path, self.folders):
                    first = self._pending.get(path, (now, now))[0]
                    self._pending[path] = (first, now)
            self._cond.notify_all()

    def _due(self) -> tuple[list[str], float]:
        """Paths quiet for the debounce time (or waiting too long), and seconds until the next is due."""
        now = time.monotonic()
        due, wait = [], self.poll_seconds
        for path, (first, last) in self._pending.items():
            ready_at = min(last + self.debounce, first + self.max_delay)
            if ready_at <= now:
                due.append(path)
            else:
                wait = min(wait, ready_at - now)
        for path in due:
            del self._pending[path]
        return due, wait

    # ---- the thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._refresh_watches()
            next_rescan = self._reconcile()
            self.ready.set()
            next_poll = time.monotonic()
            while not self._stop.is_set():
                with self._cond:
                    due, wait = self._due()
                    if not due and not self._check_folders:
                        self._cond.wait(min(wait, max(0.0, next_poll - time.monotonic())))
                        due, _ = self._due()
                    check, self._check_folders = self._check_folders, False
                if due:
                    self._sync(due)
                now = time.monotonic()
                if check or now >= next_poll:
                    next_poll = now + self.poll_seconds
                    if self._refresh_watches():
                        next_rescan = now  # a folder appeared, vanished or was replaced
                if now >= next_rescan:
                    next_rescan = self._reconcile()
        except _Stopped:
            pass
        except Exception as exc:  # the daemon sees healthy() turn False and restarts us
            log.exception("watcher.crashed", error=str(exc))
            raise
        finally:
            self.ready.set()
            self._flush_on_stop()

    def _flush_on_stop(self) -> None:
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        if left:
            try:
                sync.sync_paths(self.settings, self.db, left)
            except Exception as exc:
                log.warning("watcher.flush_failed", paths=len(left), error=str(exc))

    def _sync(self, paths: list[str]) -> None:
        try:
            report = sync.sync_paths(self.settings, self.db, paths)
        except Exception as exc:
            self._failures += 1
            log.error("watcher.sync_failed", paths=len(paths), failures=self._failures, error=str(exc))
            now = time.monotonic()
            with self._cond:  # keep them, retry after a pause: the database may be restarting
                for path in paths:
                    self._pending.setdefault(path, (now, now + RETRY_SECONDS))
            self._stop.wait(RETRY_SECONDS)
            return
        self._failures = 0
        if report.events:
            log.info("watcher.synced", files=len(paths), events=report.events, ms=round(report.seconds * 1000, 1))

    def _reconcile(self) -> float:
        """A full reconcile; returns when the next one is due (soon again if this one failed)."""
        def progress(done: int, total: int) -> None:
            if self._stop.is_set():
                raise _Stopped  # committed batches are consistent; the next start finishes the rest

        try:
            report = sync.reconcile_once(self.settings, self.db, progress=progress)
        except _Stopped:
            raise
        except Exception as exc:
            self._failures += 1
            log.error("watcher.reconcile_failed", failures=self._failures, error=str(exc))
            return time.monotonic() + RETRY_SECONDS
        self._failures = 0
        if report is not None:
            self.last_report = report
        return time.monotonic() + self.rescan_seconds

    def _refresh_watches(self) -> bool:
        """Watch every configured folder that exists; True when one appeared, vanished or was replaced."""
        changed = False
        for folder in self.folders:
            try:
                st = os.stat(folder)
                identity: tuple[int, int] | None = (st.st_dev, st.st_ino) if os.path.isdir(folder) else None
            except OSError:
                identity = None
            current = self._watches.get(folder)
            if current is not None and current[1] == identity:
                continue
            if current is not None:
                changed = True
                with contextlib.suppress(KeyError, OSError):  # its inotify watch may have died with the folder
                    self._observer.unschedule(current[0])
                del self._watches[folder]
                log.info("watcher.folder_gone", folder=folder)
            if identity is None:
                continue
            try:
                watch = self._observer.schedule(_Handler(self), folder, recursive=False, event_filter=EVENTS)
            except OSError as exc:
                log.warning("watcher.watch_failed", folder=folder, error=str(exc))
                continue
            self._watches[folder] = (watch, identity)
            changed = True
            log.info("watcher.watching", folder=folder)
        return changed


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.watcher`: the folder watcher alone, in the foreground (debugging, tests)."""
    from coord.db import open_database
    from coord.logs import configure_logging
    from coord.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m worker.watcher", description=main.__doc__)
    parser.add_argument("--config", help="TOML settings file (else COORD_CONFIG)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config).settings
    configure_logging(settings.log_level, settings.log_format)
    db = open_database(settings)
    watcher = FolderWatcher(settings, db)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    watcher.start()
    while not done.wait(1.0):
        if not watcher.healthy():
            log.error("watcher.unhealthy")
            watcher.stop()
            return 1
    watcher.stop(timeout=10.0)
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
