"""Collaboration requests (seed `requestCollaboration`): ranked candidates, or a recorded expertise gap."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from coord.db.backend import Backend
from coord.db.models import CollaborationRequest
from coord.delegation import notify
from coord.errors import Conflict, InvalidInput, NotFound
from coord.gaps import record_gap
from coord.ids import check_id
from coord.payloads import check_payload
from coord.registry import require_active
from coord.results import Candidate, CollaborationResult

MAX_EXPERTISE = 500
DEFAULT_DEADLINE = timedelta(hours=24)


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
    deadline: timedelta = DEFAULT_DEADLINE,
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
        if (existing.requester, existing.required_expertise) != (requester, required_expertise):
            raise Conflict(f"request id {request_id!r} was already used for a different request; use a new id")
        cands = [Candidate(**c) for c in existing.candidates]
        return CollaborationResult("collaboration_requested", request_id, cands, replayed=True), []

    candidates: list[Candidate] = ranker(session, required_expertise, limit=limit, exclude=(requester,))
    if not candidates:
        gap, outbox = record_gap(
            session, backend, report_id=request_id, capability_type="expertise", name=required_expertise,
            agent_id=requester, context={"task": ctx}, now=now, max_attempts=settings.outbox_max_attempts,
        )
        return CollaborationResult("no_expert_available", None, [], "create_new_agent", gap.gap_id), outbox

    session.add(
        CollaborationRequest(
            id=request_id, requester=requester, required_expertise=required_expertise, context=ctx, status="open",
            candidates=[c.to_dict() for c in candidates], assigned=[], deadline=now + deadline, created_at=now,
        )
    )
    session.flush()
    for c in candidates:
        body = {"requester": requester, "required_expertise": required_expertise, "score": c.score}
        notify(session, backend, c.agent_id, "collaboration_request", request_id, body, now)
    return CollaborationResult("collaboration_requested", request_id, candidates), []


def get_request(session: Session, request_id: str) -> CollaborationRequest:
    req = session.get(CollaborationRequest, request_id)
    if req is None:
        raise NotFound(f"collaboration request {request_id!r} does not exist")
    return req
