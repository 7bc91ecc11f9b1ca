"""Test-only job handlers, loaded into `coord worker` by COORD_TEST_HOOKS=worker_hooks (see worker/runtime.py).

- `test.raise`: appends the time to the file named by the row's payload["log"], then raises.
- `test.poison`: kills the worker process that runs it (SIGKILL), every time.
- `test.sleep`: sleeps payload["seconds"], then appends the time to payload["log"].
- `test.load_model`: appends "loading" to payload["log"], then loads the embedding model (ONNX Runtime) over
  and over for payload["seconds"]: a job inside native code when the daemon stops.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from coord.jobs import HANDLERS
from coord.outbox import OwnTransactions


def _note(row: Any, text: str) -> None:
    with open(row.payload["log"], "a") as f:
        f.write(f"{time.time():.3f} {text}\n")


def handle_raise(session: Any, row: Any, ctx: Any) -> list[str]:
    _note(row, f"attempt {row.attempts}")
    raise ValueError(f"boom on attempt {row.attempts}")


def handle_poison(session: Any, row: Any, ctx: Any) -> list[str]:
    os.kill(os.getpid(), signal.SIGKILL)
    return []


def _sleep(db: Any, outbox_id: str, ctx: Any) -> list[str]:
    from coord.db.models import OutboxJob

    with db.reader() as s:
        row = s.get(OutboxJob, outbox_id)
    time.sleep(float(row.payload.get("seconds", 1.0)))  # outside any transaction: holds no write lock
    _note(row, "slept")
    return []


handle_sleep = OwnTransactions(_sleep)


def _load_model(db: Any, outbox_id: str, ctx: Any) -> list[str]:
    from coord.db.models import OutboxJob
    from coord.matching.embedder import OnnxMiniLM

    with db.reader() as s:
        row = s.get(OutboxJob, outbox_id)
    _note(row, "loading")
    until = time.monotonic() + float(row.payload.get("seconds", 1.0))
    while time.monotonic() < until:
        OnnxMiniLM()  # a new ONNX Runtime session each time: its threads start and stop in C++
    return []


handle_load_model = OwnTransactions(_load_model)


HANDLERS.update({"test.raise": handle_raise, "test.poison": handle_poison, "test.sleep": handle_sleep,
                 "test.load_model": handle_load_model})
