"""Handlers of outbox jobs: what the worker does for each row. Each is idempotent on the row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from coord.clock import utcnow
from coord.db.models import OutboxJob
from coord.delegation import dispatch
from coord.execution import execute
from coord.installer.service import INSTALL_HANDLER, install_lease
from coord.logs import get_logger
from coord.matching.index import run_embed_job
from coord.notifiers import notify_job
from coord.outbox import Handler, ManyAtOnce, OwnTransactions
from coord.proposals import propose_for_gap
from coord.states import JOB_DISPATCH, JOB_EMBED, JOB_EXECUTE, JOB_INSTALL, JOB_NOTIFY_APPROVAL, JOB_PROPOSE

log = get_logger(__name__)


@dataclass
class JobContext:
    """What handlers may use: the settings and the database (for its backend)."""

    settings: Any
    db: Any


def dispatch_all(session: Session, rows: list[OutboxJob], ctx: JobContext) -> list[str]:
    task_ids = [row.ref_id for row in rows]
    notified = dispatch(session, ctx.db.backend, task_ids, utcnow())
    for task_id in task_ids:  # one event per delegation, with its id (the batch's rows are in the context)
        log.info("delegation.dispatched", task_id=task_id)
    log.info("delegations.dispatched", batch=len(task_ids), notified=notified)
    return []


def handle_propose(session: Session, row: OutboxJob, ctx: JobContext) -> list[str]:
    return propose_for_gap(session, ctx.db.backend, ctx.settings, row.ref_id, now=utcnow())


def handle_execute(session: Session, row: OutboxJob, ctx: JobContext) -> list[str]:
    return execute(session, ctx.db.backend, ctx.settings, row.ref_id, now=utcnow(), ctx=ctx)


HANDLERS: dict[str, Handler] = {
    JOB_DISPATCH: ManyAtOnce(dispatch_all),  # a batch of delegations in two statements
    JOB_PROPOSE: handle_propose,
    JOB_EXECUTE: handle_execute,
    JOB_NOTIFY_APPROVAL: OwnTransactions(notify_job),  # network I/O: no transaction held open
    JOB_INSTALL: INSTALL_HANDLER,  # runs outside a transaction: installs take minutes
    JOB_EMBED: OwnTransactions(run_embed_job),  # the model runs for seconds: no transaction held open
}


class InlineBell:
    """Runs outbox jobs in the calling process right after commit (`dispatch = "inline"`)."""

    def __init__(self, settings: Any, db: Any) -> None:
        self.ctx = JobContext(settings, db)

    def ring(self, outbox_ids: list[str]) -> None:
        from coord.outbox import run_job

        queue = list(outbox_ids)
        while queue:
            _outcome, follow_ups = run_job(self.ctx.db, queue.pop(0), HANDLERS, self.ctx, lease=self._lease)
            queue.extend(follow_ups)

    def _lease(self, job: str) -> Any:
        # An install runs for minutes: a short lease would let a running worker's reconciler start it twice.
        from coord.outbox import DEFAULT_LEASE

        return install_lease(self.ctx.settings) if job == JOB_INSTALL else DEFAULT_LEASE
