"""The queue side of coord's outbox port: enqueue one Huey message per outbox id."""

from __future__ import annotations

from typing import Any

from worker.app import huey_for


class QueueBell:
    def __init__(self, settings: Any) -> None:
        self.huey = huey_for(settings)

    def _task(self) -> Any:
        from worker.tasks import tasks_for

        return tasks_for(self.huey).run_outbox

    def ring(self, outbox_ids: list[str]) -> None:
        run_outbox = self._task()
        for outbox_id in outbox_ids:
            run_outbox(outbox_id)

    def ring_later(self, outbox_ids: list[str], delay: float) -> None:
        """Ring after `delay` seconds (huey's schedule; the consumer's scheduler enqueues it when due)."""
        run_outbox = self._task()
        for outbox_id in outbox_ids:
            run_outbox.schedule(args=(outbox_id,), delay=delay)
