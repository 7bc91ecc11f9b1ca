"""Collaboration requests (seed `requestCollaboration`): ranked candidates, or a recorded expertise gap.

Lifecycle (the seed's collaboration_requests table: status, suitable_agents, assigned_agents):

    open --(a candidate accepts)--------------------------> assigned   requester notified, request closed
    open --(every candidate declines, or the deadline passes)--> unanswered  requester notified
    open | assigned --(the requester closes it)------------> closed     candidates notified

Every transition is one conditional UPDATE on `status = 'open'` (or open/assigned for close), so two
candidates accepting at once leave one assignee and one clear Conflict.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from coord.db.backend import Backend, backend_for, insert_ignore
from coord.db.models import CollaborationRequest, CollaborationResponse
from coord.delegation import notify
from coord.errors import Conflict, InvalidInput, NotFound
from coord.gaps import record_gap
from coord.ids import check_id
from coord.payloads import check_payload
from coord.registry import require_active
from coord.results import Candidate, CollaborationResult, CollaborationStatus

MAX_EXPERTISE = 500


def request_collaboration(
    session: Session,
    backend: Backend,
    settings: Any,
    *,
    request_id: str,
    requester: str,
    required_expertise: str,
    context: Any,
    now: datetime,
    ranker: Any,
    limit: int = 5,
    deadline: timedelta | None = None,
) -> tuple[CollaborationResult, list[str]]:
    check_id(request_id, "request id")
    if not isinstance(required_expertise, str) or not required_expertise.strip():
        raise InvalidInput("say which expertise is needed (e.g. 'blockchain' or 'accessibility audits')")
    if len(required_expertise) > MAX_EXPERTISE:
        raise InvalidInput(f"required expertise is over {MAX_EXPERTISE} characters; put details in the context")
    ctx, _ = check_payload(context, what="task context", max_bytes=settings.max_payload_bytes, required=False)
    require_active(session, requester, "requesting agent")

    existing = session.get(CollaborationRequest, request_id)
    if existing is not None:
        return _replayed(existing, requester, required_expertise), []
    if deadline is None:  # no deadline named: the setting
        deadline = settings.collaboration_ttl

    candidates: list[Candidate] = ranker(session, required_expertise, limit=limit, exclude=(requester,))
    if not candidates:
        gap, outbox = record_gap(
            session, backend, report_id=request_id, capability_type="expertise", name=required_expertise,
            agent_id=requester, context={"task": ctx}, now=now, max_attempts=settings.outbox_max_attempts,
        )
        return CollaborationResult("no_expert_available", None, [], "create_new_agent", gap.gap_id), outbox

    row = dict(
        id=request_id, requester=requester, required_expertise=required_expertise, context=ctx, status="open",
        candidates=[c.to_dict() for c in candidates], assigned=[], deadline=now + deadline, created_at=now,
    )
    if not insert_ignore(session, backend, CollaborationRequest.__table__, row):
        # A concurrent call with the same id committed first (on PostgreSQL both pass the check above).
        return _replayed(session.get(CollaborationRequest, request_id), requester, required_expertise), []
    for c in candidates:
        body = {"requester": requester, "required_expertise": required_expertise, "score": c.score}
        notify(session, backend, c.agent_id, "collaboration_request", request_id, body, now)
    return CollaborationResult("collaboration_requested", request_id, candidates), []


def _replayed(existing: CollaborationRequest, requester: str, required_expertise: str) -> CollaborationResult:
    if (existing.requester, existing.required_expertise) != (requester, required_expertise):
        raise Conflict(f"request id {existing.id!r} was already used for a different request; use a new id")
    cands = [Candidate(**c) for c in existing.candidates]
    return CollaborationResult("collaboration_requested", existing.id, cands, replayed=True)


def get_request(session: Session, request_id: str) -> CollaborationRequest:
    req = session.get(CollaborationRequest, request_id)
    if req is None:
        raise NotFound(f"collaboration request {request_id!r} does not exist")
    return req


# ---- lifecycle -----------------------------------------------------------------------------------------

MAX_NOTE = 2_000


def _backend_of(session: Session) -> Backend:
    return backend_for(session.get_bind().dialect.name)


def _candidate_ids(req: CollaborationRequest) -> list[str]:
    return [c["agent_id"] for c in req.candidates]


def _responses(session: Session, request_id: str) -> dict[str, str]:
    rows = session.execute(select(CollaborationResponse.agent_id, CollaborationResponse.response)
                           .where(CollaborationResponse.request_id == request_id))
    return {a: r for a, r in rows}


def status_of(session: Session, req: CollaborationRequest, *, changed: bool = True) -> CollaborationStatus:
    return CollaborationStatus(
        request_id=req.id, status=req.status, requester=req.requester, required_expertise=req.required_expertise,
        candidates=_candidate_ids(req), assigned=list(req.assigned or []), responses=_responses(session, req.id),
        deadline=req.deadline, closed_at=req.closed_at, changed=changed,
    )


def _move(session: Session, req: CollaborationRequest, from_states: tuple[str, ...], **values: object) -> bool:
    """The one conditional transition; True when this call made it (the row is refreshed either way)."""
    row = session.execute(
        update(CollaborationRequest)
        .where(CollaborationRequest.id == req.id, CollaborationRequest.status.in_(from_states))
        .values(**values)
        .returning(CollaborationRequest.id)
        .execution_options(synchronize_session=False)
    ).first()
    session.refresh(req)
    return row is not None


def respond(
    session: Session,
    backend: Backend,
    *,
    request_id: str,
    agent_id: str,
    accept: bool,
    note: str | None = None,
    now: datetime,
) -> CollaborationStatus:
    """A candidate accepts or declines. Replaying the same answer changes nothing."""
    req = get_request(session, request_id)
    if agent_id not in _candidate_ids(req):
        raise InvalidInput(f"agent {agent_id!r} is not a candidate of collaboration request {request_id!r}; "
                           f"its candidates are {', '.join(_candidate_ids(req))}")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise InvalidInput(f"a note must be text of at most {MAX_NOTE} characters")
    answer = "accepted" if accept else "declined"
    previous = session.get(CollaborationResponse, (request_id, agent_id))
    if previous is not None:
        if previous.response == answer:
            return status_of(session, req, changed=False)
        raise Conflict(f"{agent_id} already {previous.response} collaboration request {request_id}")
    if req.status != "open":
        raise Conflict(_not_open(req), status=req.status)
    if accept:
        if not _move(session, req, ("open",), status="assigned", assigned=[agent_id], closed_at=now):
            raise Conflict(_not_open(req), status=req.status)
        session.add(CollaborationResponse(request_id=request_id, agent_id=agent_id, response=answer, note=note, at=now))
        notify(session, backend, req.requester, "collaboration_accepted", request_id,
               {"agent_id": agent_id, "required_expertise": req.required_expertise, "note": note}, now)
        for other in _candidate_ids(req):
            if other != agent_id:
                notify(session, backend, other, "collaboration_filled", request_id, {"assigned": agent_id}, now)
        return status_of(session, req)
    session.add(CollaborationResponse(request_id=request_id, agent_id=agent_id, response=answer, note=note, at=now))
    session.flush()
    responses = _responses(session, request_id)
    if all(responses.get(c) == "declined" for c in _candidate_ids(req)):
        _report_unanswered(session, backend, req, now, "every candidate declined")
    return status_of(session, req)


def _not_open(req: CollaborationRequest) -> str:
    if req.status == "assigned":
        return f"collaboration request {req.id} is already assigned to {', '.join(req.assigned)}"
    return f"collaboration request {req.id} is {req.status}; it takes no more answers"


def _report_unanswered(session: Session, backend: Backend, req: CollaborationRequest, now: datetime,
                       why: str) -> bool:
    if not _move(session, req, ("open",), status="unanswered", closed_at=now):
        return False
    responses = _responses(session, req.id)
    body = {"required_expertise": req.required_expertise, "why": why, "candidates": _candidate_ids(req),
            "declined": sorted(a for a, r in responses.items() if r == "declined"),
            "suggestion": "record the missing expertise or ask again later"}
    notify(session, backend, req.requester, "collaboration_unanswered", req.id, body, now)
    return True


def close_request(session: Session, backend: Backend, *, request_id: str, requester: str,
                  now: datetime) -> CollaborationStatus:
    """The requester closes its request (withdrawn while open, or done once assigned)."""
    req = get_request(session, request_id)
    if req.requester != requester:
        raise InvalidInput(f"only the requester {req.requester!r} can close collaboration request {request_id!r}")
    if req.status == "closed":
        return status_of(session, req, changed=False)
    if not _move(session, req, ("open", "assigned"), status="closed", closed_at=now):
        raise Conflict(_not_open(req), status=req.status)
    for agent in req.assigned or _candidate_ids(req):
        notify(session, backend, agent, "collaboration_closed", request_id, {"requester": requester}, now)
    return status_of(session, req)


def expire_unanswered(session: Session, now: datetime, *, ttl: timedelta | None = None, limit: int = 500) -> int:
    """The periodic job: open requests past their deadline are reported back to the requester as
    unanswered. A request without a deadline (the column allows none) is past it `ttl` after it was made;
    without `ttl` it never is. Returns how many."""
    backend = _backend_of(session)
    past = CollaborationRequest.deadline <= now
    if ttl is not None:
        past = or_(past, and_(CollaborationRequest.deadline.is_(None), CollaborationRequest.created_at <= now - ttl))
    due = session.scalars(
        select(CollaborationRequest)
        .where(CollaborationRequest.status == "open", past)
        .order_by(CollaborationRequest.deadline, CollaborationRequest.created_at)
        .limit(limit)
    ).all()
    return sum(_report_unanswered(session, backend, req, now, "nobody accepted before the deadline") for req in due)
