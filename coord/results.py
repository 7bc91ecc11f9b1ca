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
