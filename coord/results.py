"""Typed results of the client API. `status` carries the seed's status words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


class _Result:
    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [conv(x) for x in v]
            return v

        return conv(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Candidate(_Result):
    agent_id: str
    score: float
    why: list[str] = field(default_factory=list)
    description: str = ""


@dataclass(frozen=True)
class AgentInfo(_Result):
    id: str
    description: str
    expertise: list[str]
    tools: list[str] | None
    mcp_servers: list[str]
    model: str | None
    status: str
    origin: str
    source_path: str | None = None
    open_tasks: int = 0


@dataclass(frozen=True)
class DelegationResult(_Result):
    status: str  # delegated | agent_not_found
    coordination_id: str
    to_agent: str
    fallback: list[Candidate] = field(default_factory=list)
    gap_id: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class TaskInfo(_Result):
    id: str
    from_agent: str
    to_agent: str
    task_type: str
    payload: dict[str, Any]
    priority: str
    status: str
    attempts: int
    max_attempts: int
    claimed_by: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class Claim(_Result):
    """What claim_next hands an agent: the task and the fencing token its later calls must carry."""

    task_id: str
    token: int
    lease_expires_at: datetime
    from_agent: str
    task_type: str
    priority: str
    payload: dict[str, Any]
    attempt: int


@dataclass(frozen=True)
class CollaborationResult(_Result):
    status: str  # collaboration_requested | no_expert_available
    collaboration_id: str | None
    candidates: list[Candidate] = field(default_factory=list)
    suggestion: str | None = None
    gap_id: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class GapResult(_Result):
    status: str  # recorded | counted | replayed
    gap_id: str
    capability_type: str
    name: str
    frequency: int
    new: bool


@dataclass(frozen=True)
class InboxItem(_Result):
    id: str
    agent_id: str
    kind: str
    ref_id: str
    body: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@dataclass(frozen=True)
class ProposalInfo(_Result):
    """A proposal to close a gap (seed capability_proposals); `confidence_basis` says why it scored so."""

    id: str
    gap_id: str | None
    kind: str  # install_tool | install_mcp | create_agent | workaround
    status: str  # proposed | invalid | pending_approval | approved | denied | rejected | expired | executing | ...
    confidence: float
    confidence_basis: dict[str, Any]
    details: dict[str, Any]
    proposed_by: str
    created_at: datetime
    approval_id: str | None = None
    approval_status: str | None = None


@dataclass(frozen=True)
class ApprovalInfo(_Result):
    id: str
    proposal_id: str
    action: str
    status: str  # pending | approved | rejected | expired
    requested_by: str
    safety_score: float
    reason: str  # why a person must decide
    details: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None
    changed: bool = True  # False when the call found the decision already made (idempotent replay)


@dataclass(frozen=True)
class AgentProposalResult(_Result):
    """Seed `proposeNewAgent`: invalid_proposal | similar_exists | agent_proposed."""

    status: str
    agent_id: str | None = None
    proposal_id: str | None = None
    approval_id: str | None = None
    requires_approval: bool = True
    definition: str | None = None
    errors: list[str] = field(default_factory=list)
    alternatives: list[Candidate] = field(default_factory=list)
    suggestion: str | None = None
    proposal_status: str | None = None


@dataclass(frozen=True)
class CollaborationStatus(_Result):
    """A collaboration request's lifecycle: open -> assigned | unanswered | closed."""

    request_id: str
    status: str
    requester: str
    required_expertise: str
    candidates: list[str]
    assigned: list[str]
    responses: dict[str, str]  # agent -> accepted | declined
    deadline: datetime | None
    closed_at: datetime | None
    changed: bool = True
