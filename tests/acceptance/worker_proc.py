"""Helpers for the worker acceptance tests: run `coord worker` as a subprocess and read what it logged."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, child_env

HERE = Path(__file__).resolve().parent
_started: list[WorkerProcess] = []


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    """A failed test must not leave daemons running: kill whatever this test started and is still alive."""
    yield
    while _started:
        worker = _started.pop()
        if worker.alive():
            worker.kill()


def worker_env(settings: Any, **extra: str) -> dict[str, str]:
    """The daemon's environment: the test's settings, short periods, JSON logs, the test hooks."""
    env = child_env(
        COORD_STATE_DIR=str(settings.state_dir),
        COORD_DATABASE_URL=settings.db_url,
        COORD_QUEUE_URL=settings.queue_location,
        COORD_RECONCILE_INTERVAL_SECONDS="1",
        COORD_OUTBOX_LEASE_SECONDS="2",
        COORD_HEARTBEAT_INTERVAL_SECONDS="1",
        COORD_SHUTDOWN_GRACE_SECONDS="10",
        COORD_LOG_FORMAT="json",
        COORD_LOG_LEVEL="info",
        COORD_TEST_HOOKS="worker_hooks",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)])
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, settings: Any, log: Path, *args: str, **env: str) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 -- closed by wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "coord.cli", "worker", *args],
                                     env=worker_env(settings, **env), stdout=self._log, stderr=self._log)
        _started.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_events(self.log_path) if name is None or e.get("event") == name]

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            if any(e.get("worker_id", "").endswith(f":{self.pid}") for e in self.events("worker.ready")):
                return
            time.sleep(0.05)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds until the process was gone)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        return rc, time.monotonic() - start

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a SIGKILL
                out.append(json.loads(line))
    return out


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
