"""Thin Huey task wrappers around coord services: load ids, call a service, done.

Every job kind (dispatch a delegation, propose a resolution, execute an approved action, notify about an
approval) is one outbox row, run by `run_outbox` through coord.jobs.HANDLERS: the Huey message carries
only the row id. The periodic jobs are in worker/periodic.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

_registered: dict[int, SimpleNamespace] = {}


def tasks_for(huey: Any) -> SimpleNamespace:
    """Register coord's tasks on a Huey instance once; return them by name."""
    key = id(huey)
    if key in _registered:
        return _registered[key]

    @huey.task(name="coord.run_outbox")
    def run_outbox(outbox_id: str) -> None:
        from worker.runtime import run_outbox_job

        run_outbox_job(outbox_id)

    _registered[key] = SimpleNamespace(run_outbox=run_outbox)
    return _registered[key]
