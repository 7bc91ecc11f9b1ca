"""The queue side of coord's outbox port: enqueue one Huey message per outbox id."""

from __future__ import annotations

from typing import Any

from worker.app import huey_for


class QueueBell:
    def __init__(self, settings: Any) -> None:
        self.huey = huey_for(settings)

    def ring(self, outbox_ids: list[str]) -> None:
        from worker.tasks import tasks_for

        run_outbox = tasks_for(self.huey).run_outbox
        for outbox_id in outbox_ids:
            run_outbox(outbox_id)
