"""Approvals (invariant 6): a person decides; an agent never approves; expiry never approves.

Lifecycle: `pending` -> `approved` | `rejected` | `expired`, each transition one conditional UPDATE
(`WHERE status = 'pending'`), so an approval and the periodic expiry racing on one request leave exactly
one final state: SQLite serializes the two write transactions (BEGIN IMMEDIATE); PostgreSQL's row lock
makes the loser re-check `status` and update nothing. The `execute` outbox row is written in the same
transaction as `approved`, so it exists if and only if the approval won.

Who may decide: any name given with `--by`, except the proposal's author, a registered agent's name
and coord's own actor names. The agent-facing client has no way in; the CLI (`coord approvals ...`)
and, later, a web page use `ApprovalDesk`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from coord import audit, notifiers
from coord.clock import utcnow
from coord.db.backend import Backend, insert_ignore
from coord.db.models import Agent, Approval, Proposal
from coord.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from coord.ids import new_id
from coord.logs import get_logger
from coord.outbox import add_job
from coord.results import ApprovalInfo
from coord.states import JOB_EXECUTE, JOB_NOTIFY_APPROVAL

log = get_logger(__name__)

PENDING = "pending"
STATUSES = ("pending", "approved", "rejected", "expired")
# coord's own actors: none of them is a person.
RESERVED_NAMES = {"coordination-system", "policy", "expiry", "system", "coord", "worker"}
_PERSON = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
EXPIRY_ACTOR = "expiry"


def request(session: Session, backend: Backend, settings: Any, proposal: Proposal, decision: Any, *,
            now: datetime) -> tuple[str | None, list[str]]:
    """Open the approval a proposal needs (once) and queue its notifications; (approval id, outbox ids)."""
    approval_id = new_id()
    details = {"proposal": {"id": proposal.id, "kind": proposal.kind, "confidence": proposal.confidence,
                            "gap_id": proposal.gap_id},
               **{k: v for k, v in proposal.details.items() if k != "policy"}}
    created = insert_ignore(session, backend, Approval.__table__, dict(
        id=approval_id, proposal_id=proposal.id, action=proposal.kind, details=details,
        requested_by=proposal.proposed_by, safety_score=decision.safety_score, reason=decision.reason,
        status=PENDING, created_at=now, expires_at=now + settings.approval_ttl,
    ))
    if not created:
        return session.scalar(select(Approval.id).where(Approval.proposal_id == proposal.id)), []
    audit.record(session, proposal.proposed_by, "approval.requested", "approval", approval_id, now,
                 proposal_id=proposal.id, safety_score=decision.safety_score, reason=decision.reason)
    # The structured log event is the notifier that always runs; the others are jobs of their own.
    log.info("approval.requested", approval_id=approval_id, proposal_id=proposal.id, action=proposal.kind,
             safety_score=decision.safety_score, reason=decision.reason,
             expires_at=(now + settings.approval_ttl).isoformat(),
             how=f"coord approvals show {approval_id}; coord approvals approve {approval_id} --by <your name>")
    outbox = [
        add_job(session, backend, JOB_NOTIFY_APPROVAL, f"{approval_id}:{channel}", now=now,
                payload={"approval_id": approval_id, "channel": channel}, max_attempts=settings.outbox_max_attempts)
        for channel in notifiers.channels(settings)
    ]
    return approval_id, outbox


def check_decider(session: Session, by: str, approval: Approval, proposal: Proposal | None) -> str:
    """The decider's name if a person may decide this approval; PolicyDenied otherwise."""
    if not isinstance(by, str) or not _PERSON.match(by.strip() or "\x00"):
        raise InvalidInput("say who decides with --by NAME (1-128 printable characters)")
    name = by.strip()
    if name.lower() in RESERVED_NAMES:
        raise PolicyDenied(f"{name!r} is one of coord's own actors, not a person; decide under your own name")
    authors = {approval.requested_by.lower(), (proposal.proposed_by if proposal else "").lower()}
    if name.lower() in authors:
        raise PolicyDenied(f"{name!r} made this proposal; its author can never approve or reject it")
    if session.get(Agent, name.lower()) is not None:
        raise PolicyDenied(f"{name!r} is a registered agent: agents never decide approvals (a person does)")
    return name


def _load(session: Session, approval_id: str) -> tuple[Approval, Proposal | None]:
    approval = session.get(Approval, approval_id)
    if approval is None:
        raise NotFound(f"approval {approval_id!r} does not exist (see `coord approvals ls`)")
    return approval, session.get(Proposal, approval.proposal_id)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "?"


def _final_error(approval: Approval, wanted: str) -> Conflict:
    if approval.status == "expired":
        return Conflict(f"approval {approval.id} expired at {_when(approval.decided_at or approval.expires_at)} "
                        f"without a decision; it can no longer be {wanted}. The gap can be proposed again",
                        status=approval.status)
    return Conflict(f"approval {approval.id} was already {approval.status} by {approval.decided_by} at "
                    f"{_when(approval.decided_at)}; it cannot be {wanted}", status=approval.status)


def _decide(session: Session, approval: Approval, status: str, by: str, reason: str | None, now: datetime) -> bool:
    """The one conditional transition out of `pending`; True when this call made it."""
    row = session.execute(
        update(Approval)
        .where(Approval.id == approval.id, Approval.status == PENDING, Approval.expires_at > now)
        .values(status=status, decided_at=now, decided_by=by, decision_reason=reason)
        .returning(Approval.id)
        .execution_options(synchronize_session=False)
    ).first()
    session.refresh(approval)
    return row is not None


def approve(session: Session, backend: Backend, approval_id: str, *, by: str, reason: str | None = None,
            now: datetime, max_attempts: int = 5) -> tuple[ApprovalInfo, list[str]]:
    """Approve and enqueue the execution job. Approving an approved request again changes nothing."""
    approval, proposal = _load(session, approval_id)
    name = check_decider(session, by, approval, proposal)
    if approval.status == "approved":
        return info(approval, changed=False), []
    if approval.status != PENDING:
        raise _final_error(approval, "approved")
    if approval.expires_at <= now:
        raise Conflict(f"approval {approval.id} expired at {_when(approval.expires_at)}; it can no longer be "
                       "approved. The gap can be proposed again", status="expired")
    if not _decide(session, approval, "approved", name, reason, now):
        if approval.status == "approved":  # a concurrent approval won: same outcome
            return info(approval, changed=False), []
        raise _final_error(approval, "approved")
    outbox: list[str] = []
    if proposal is not None:
        _set_proposal(session, proposal, "approved", now)
        outbox.append(add_job(session, backend, JOB_EXECUTE, proposal.id, now=now, max_attempts=max_attempts))
    audit.record(session, name, "approval.approved", "approval", approval.id, now, reason=reason,
                 proposal_id=approval.proposal_id)
    log.info("approval.approved", approval_id=approval.id, by=name, proposal_id=approval.proposal_id)
    return info(approval), outbox


def reject(session: Session, approval_id: str, *, by: str, reason: str, now: datetime) -> ApprovalInfo:
    """Reject; rejecting a rejected request again changes nothing."""
    approval, proposal = _load(session, approval_id)
    name = check_decider(session, by, approval, proposal)
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("say why with --reason: the agents that reported the gap will read it")
    if approval.status == "rejected":
        return info(approval, changed=False)
    if approval.status != PENDING:
        raise _final_error(approval, "rejected")
    if not _decide(session, approval, "rejected", name, reason.strip(), now):
        if approval.status == "rejected":
            return info(approval, changed=False)
        raise _final_error(approval, "rejected")
    if proposal is not None:
        _set_proposal(session, proposal, "rejected", now)
    audit.record(session, name, "approval.rejected", "approval", approval.id, now, reason=reason,
                 proposal_id=approval.proposal_id)
    log.info("approval.rejected", approval_id=approval.id, by=name, reason=reason)
    return info(approval)


def expire_due(session: Session, now: datetime, *, limit: int = 1000) -> int:
    """The periodic job: pending approvals past `expires_at` become `expired` (never `approved`).

    Returns how many expired. At most `limit` per call (oldest first); the next run takes the rest.
    """
    due = (select(Approval.id).where(Approval.status == PENDING, Approval.expires_at <= now)
           .order_by(Approval.expires_at, Approval.id).limit(limit))
    rows = session.execute(
        update(Approval)
        .where(Approval.id.in_(due.scalar_subquery()), Approval.status == PENDING, Approval.expires_at <= now)
        .values(status="expired", decided_at=now, decided_by=EXPIRY_ACTOR,
                decision_reason="not decided within approval_ttl")
        .returning(Approval.id, Approval.proposal_id)
        .execution_options(synchronize_session=False)
    ).all()
    for approval_id, proposal_id in rows:
        session.execute(update(Proposal).where(Proposal.id == proposal_id, Proposal.status == "pending_approval")
                        .values(status="expired", updated_at=now).execution_options(synchronize_session=False))
        audit.record(session, EXPIRY_ACTOR, "approval.expired", "approval", approval_id, now, proposal_id=proposal_id)
    if rows:
        log.info("approvals.expired", count=len(rows), approval_ids=[r[0] for r in rows][:50])
    return len(rows)


def _set_proposal(session: Session, proposal: Proposal, status: str, now: datetime) -> None:
    if proposal.status == "pending_approval":
        proposal.status, proposal.updated_at = status, now


def info(a: Approval, *, changed: bool = True) -> ApprovalInfo:
    return ApprovalInfo(
        id=a.id, proposal_id=a.proposal_id, action=a.action, status=a.status, requested_by=a.requested_by,
        safety_score=a.safety_score, reason=a.reason, details=a.details, created_at=a.created_at,
        expires_at=a.expires_at, decided_at=a.decided_at, decided_by=a.decided_by,
        decision_reason=a.decision_reason, changed=changed,
    )


def list_approvals(session: Session, status: str | None = PENDING, limit: int = 100) -> list[ApprovalInfo]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
    stmt = select(Approval).order_by(Approval.created_at, Approval.id).limit(limit)
    if status is not None:
        stmt = stmt.where(Approval.status == status)
    return [info(a) for a in session.scalars(stmt)]


def get_approval(session: Session, approval_id: str) -> ApprovalInfo:
    return info(_load(session, approval_id)[0])


def count_pending(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Approval).where(Approval.status == PENDING)) or 0)


class ApprovalDesk:
    """The human-facing entry point (CLI now, a web page later): list, show, approve, reject.

    Deliberately not part of `coord.client.Coordinator`, the API agents use.
    """

    def __init__(self, settings: Any, db: Any, bell: Any, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings, self.db, self.bell, self.now = settings, db, bell, clock

    def list(self, status: str | None = PENDING, limit: int = 100) -> list[ApprovalInfo]:
        with self.db.reader() as s:
            return list_approvals(s, status, limit)

    def show(self, approval_id: str) -> ApprovalInfo:
        with self.db.reader() as s:
            return get_approval(s, approval_id)

    def approve(self, approval_id: str, *, by: str, reason: str | None = None) -> ApprovalInfo:
        with self.db.session() as s:
            result, outbox = approve(s, self.db.backend, approval_id, by=by, reason=reason, now=self.now(),
                                     max_attempts=self.settings.outbox_max_attempts)
        self._ring(outbox)
        return result

    def reject(self, approval_id: str, *, by: str, reason: str) -> ApprovalInfo:
        with self.db.session() as s:
            return reject(s, approval_id, by=by, reason=reason, now=self.now())

    def _ring(self, outbox: list[str]) -> None:
        if not outbox:
            return
        try:
            self.bell.ring(outbox)
        except Exception as exc:  # the reconciler rings again: a lost bell loses nothing
            log.warning("bell.failed", outbox_ids=outbox, error=str(exc))


__all__ = ["ApprovalDesk", "approve", "check_decider", "expire_due", "get_approval", "list_approvals", "reject",
           "request"]
