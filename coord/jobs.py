"""Handlers of outbox jobs: what the worker does for each row. Each is idempotent on the row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from coord.clock import utcnow
from coord.db.models import CapabilityGap, OutboxJob
from coord.delegation import dispatch
from coord.logs import get_logger
from coord.outbox import Handler
from coord.states import JOB_DISPATCH, JOB_PROPOSE

log = get_logger(__name__)


@dataclass
class JobContext:
    """What handlers may use: the settings and the database (for its backend)."""

    settings: Any
    db: Any


def handle_dispatch(session: Session, row: OutboxJob, ctx: JobContext) -> list[str]:
    created = dispatch(session, ctx.db.backend, row.ref_id, utcnow())
    log.info("delegation.dispatched", task_id=row.ref_id, notified=created)
    return []


def handle_propose(session: Session, row: OutboxJob, ctx: JobContext) -> list[str]:
    # Until the resolution engine is wired in, a new gap is recorded as awaiting a proposal.
    gap = session.get(CapabilityGap, row.ref_id)
    if gap is not None and gap.resolution_status == "pending":
        gap.resolution_details = {"proposal": "pending"}
    return []


HANDLERS: dict[str, Handler] = {JOB_DISPATCH: handle_dispatch, JOB_PROPOSE: handle_propose}


class InlineBell:
    """Runs outbox jobs in the calling process right after commit (`dispatch = "inline"`)."""

    def __init__(self, settings: Any, db: Any) -> None:
        self.ctx = JobContext(settings, db)

    def ring(self, outbox_ids: list[str]) -> None:
        from coord.outbox import run_job

        queue = list(outbox_ids)
        while queue:
            _outcome, follow_ups = run_job(self.ctx.db, queue.pop(0), HANDLERS, self.ctx)
            queue.extend(follow_ups)
