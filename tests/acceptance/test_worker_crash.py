"""The real `coord worker` is SIGKILLed at random moments while 2,000 delegations flow through it.

At the end every delegation is dispatched (inbox row written, outbox row done), each target got exactly
one notification per delegation, and no outbox row is stuck. One bell in ten is lost on purpose (a
producer crash between commit and enqueue), so the reconciler must find those rows.
Runs with the SqliteHuey queue and with the Redis queue (COORD_TEST_REDIS_URL, flushed first; skipped
with the reason where unreachable). PostgreSQL + Redis under SIGKILLs: tests/acceptance/test_scaleout.py.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, make_settings, redis_skip_reason
from sqlalchemy import func, select
from worker_proc import WorkerProcess, _no_worker_left_behind, wait_for  # noqa: F401 -- fixture

from coord.client import Coordinator
from coord.db.models import InboxMessage, OutboxJob, Task
from coord.logs import configure_logging
from coord.states import JOB_DISPATCH
from worker.bell import QueueBell

pytestmark = [pytest.mark.slow, pytest.mark.serial]

JOBS = 2000
KILLS = 5
WAVES = 4
TARGETS = [f"target-{i}" for i in range(8)]
LOST_BELL_EVERY = 10


class DroppingBell:
    """The real queue bell, but every LOST_BELL_EVERY-th ring is lost (a producer crash between commit
    and enqueue): only the reconciler can find those rows."""

    def __init__(self, settings: Any) -> None:
        self.inner, self.calls, self.dropped = QueueBell(settings), 0, 0

    def ring(self, outbox_ids: list[str]) -> None:
        self.calls += 1
        if self.calls % LOST_BELL_EVERY == 0:
            self.dropped += len(outbox_ids)
            return
        self.inner.ring(outbox_ids)


def _enqueue_wave(coord: Coordinator, ids: list[str]) -> None:
    """Delegations through the client API, as agents make them."""
    for n, task_id in enumerate(ids):
        coord.delegate("sender", TARGETS[n % len(TARGETS)], {"title": f"job {task_id}"}, id=task_id)


def _settings(tmp_path: Path, engine: str) -> tuple[Any, str]:
    if engine == "sqlite":
        return make_settings(tmp_path, dispatch="queue"), "SQLite + SqliteHuey"
    reason = redis_skip_reason()
    if reason:
        pytest.skip(reason)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # a test database of its own (COORD_TEST_REDIS_URL)
    return make_settings(tmp_path, dispatch="queue", queue_url=REDIS_URL), f"SQLite + Redis {REDIS_URL}"


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, engine: str) -> None:
    configure_logging("warning")
    settings, label = _settings(tmp_path, engine)
    seed = int(os.environ.get("COORD_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    bell = DroppingBell(settings)
    coord = Coordinator(settings, bell=bell)
    coord.register_agent("sender", "delegates work")
    for t in TARGETS:
        coord.register_agent(t, "receives work")
    ids = [f"d{i:05d}" for i in range(JOBS)]
    waves = [ids[i::WAVES] for i in range(WAVES)]
    log = tmp_path / "worker.log"

    def done() -> int:
        with coord.db.reader() as s:
            return s.scalar(select(func.count()).select_from(OutboxJob).where(
                OutboxJob.job == JOB_DISPATCH, OutboxJob.status == "done")) or 0

    started = time.monotonic()
    kill_at_done: list[int] = []
    worker = WorkerProcess(settings, log)
    worker.wait_ready()
    for k in range(KILLS):
        if k < WAVES:
            _enqueue_wave(coord, waves[k])
        # The replacement boots (a few seconds of imports) while this worker is busy, then takes over.
        successor = WorkerProcess(settings, log)
        time.sleep(rng.uniform(0.2, 1.2))
        kill_at_done.append(done())
        worker.kill()
        worker = successor
        worker.wait_ready()
    for wave in waves[KILLS:]:
        _enqueue_wave(coord, wave)
    wait_for(lambda: done() == JOBS, 120, f"all {JOBS} dispatch jobs done", interval=0.25)
    rc, took = worker.terminate()
    assert rc == 0
    elapsed = time.monotonic() - started

    with coord.db.reader() as s:
        statuses = Counter(s.scalars(select(OutboxJob.status).where(OutboxJob.job == JOB_DISPATCH)))
        attempts = Counter(s.scalars(select(OutboxJob.attempts).where(OutboxJob.job == JOB_DISPATCH)))
        notified = select(InboxMessage.ref_id, InboxMessage.agent_id).where(
            InboxMessage.kind == "new_coordination_task"
        )
        inbox = Counter((ref, agent) for ref, agent in s.execute(notified))
        targets = {task_id: agent for task_id, agent in s.execute(select(Task.id, Task.to_agent))}
        task_statuses = Counter(s.scalars(select(Task.status)))
    coord.close()

    lost = [t for t in ids if (t, targets.get(t)) not in inbox]
    duplicated = [key for key, n in inbox.items() if n > 1]
    wrong_target = [ref for ref, agent in inbox if targets.get(ref) != agent]
    more_than_once = sum(n for a, n in attempts.items() if a > 1)
    print(f"\n[{label}] seed {seed}: jobs {JOBS}, kills {len(kill_at_done)} (at {kill_at_done} done), "
          f"lost {len(lost)}, duplicated {len(duplicated)}, executed more than once {more_than_once} "
          f"(attempts histogram {dict(sorted(attempts.items()))}), "
          f"bells lost on purpose {bell.dropped} of {bell.calls} rung, "
          f"{elapsed:.1f}s, final SIGTERM exit in {took:.2f}s")
    assert len(targets) == JOBS
    assert statuses == {"done": JOBS}, statuses  # nothing stuck, nothing failed
    assert not lost and not duplicated and not wrong_target
    assert sum(inbox.values()) == JOBS
    assert task_statuses == {"pending": JOBS}  # dispatched and claimable
