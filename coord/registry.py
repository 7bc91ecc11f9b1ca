"""The agent registry: register / update / get / list / mark removed, with history kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from coord.agentfiles import derive_expertise, normalize_tag, validate_agent_name
from coord.db.backend import Backend
from coord.db.models import Agent, AgentExpertise, AgentHistory, Task
from coord.errors import InvalidInput, NotFound
from coord.results import AgentInfo

MAX_DESCRIPTION = 20_000


@dataclass
class AgentSpec:
    """What the registry needs to know of an agent, whichever way it arrived (API, file, coord)."""

    name: str
    description: str
    expertise: list[str] = field(default_factory=list)  # declared; derived from the text when empty
    tools: list[str] | None = None
    mcp_servers: list[str] = field(default_factory=list)
    model: str | None = None
    collaboration: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> AgentSpec:
        validate_agent_name(self.name)
        if not isinstance(self.description, str) or not self.description.strip():
            raise InvalidInput(f"agent {self.name!r} needs a description: it is what others match on")
        if len(self.description) > MAX_DESCRIPTION:
            raise InvalidInput(f"agent {self.name!r}: description over {MAX_DESCRIPTION} characters")
        return self

    def tags(self) -> list[str]:
        declared = [t for t in (normalize_tag(x) for x in self.expertise) if t]
        return derive_expertise(self.name, self.description, declared)


def _snapshot(agent: Agent, tags: list[str]) -> dict[str, Any]:
    return {
        "description": agent.description,
        "expertise": tags,
        "tools": agent.tools,
        "mcp_servers": agent.mcp_servers,
        "model": agent.model,
        "source_path": agent.source_path,
        "content_hash": agent.content_hash,
    }


def upsert_agent(
    session: Session,
    backend: Backend,
    spec: AgentSpec,
    *,
    now: datetime,
    origin: str = "api",
    source_path: str | None = None,
    content_hash: str | None = None,
) -> tuple[Agent, str | None]:
    """Insert or update; returns the row and the history event written (None when nothing changed)."""
    spec.validated()
    tags = spec.tags()
    agent = session.get(Agent, spec.name)
    event = None
    if agent is None:
        agent = Agent(id=spec.name, created_at=now)
        session.add(agent)
        event = "registered"
    before = _snapshot(agent, current_tags(session, spec.name)) if event is None else None
    was_removed = agent.status == "removed"
    agent.description = spec.description
    agent.tools = spec.tools
    agent.mcp_servers = list(spec.mcp_servers)
    agent.model = spec.model
    agent.collaboration = dict(spec.collaboration)
    agent.origin = origin
    agent.source_path = source_path
    agent.content_hash = content_hash
    agent.status = "active"
    agent.removed_at = None
    after = _snapshot(agent, tags)
    if event is None:
        if was_removed:
            event = "restored"
        elif before != after:
            event = "updated"
    if event is None:
        return agent, None
    agent.updated_at = now
    session.flush()
    session.execute(delete(AgentExpertise).where(AgentExpertise.agent_id == spec.name))
    declared = {normalize_tag(x) for x in spec.expertise}
    session.add_all(AgentExpertise(agent_id=spec.name, tag=t, declared=t in declared) for t in tags)
    backend.index_agent(session, spec.name, spec.description, tags)
    session.add(AgentHistory(agent_id=spec.name, event=event, snapshot=after, at=now))
    return agent, event


def mark_removed(session: Session, backend: Backend, agent_id: str, *, now: datetime) -> bool:
    """Removed agents stay (history, old tasks) but never match and cannot receive new work."""
    agent = session.get(Agent, agent_id)
    if agent is None or agent.status == "removed":
        return False
    agent.status = "removed"
    agent.removed_at = now
    agent.updated_at = now
    backend.unindex_agent(session, agent_id)
    session.add(AgentHistory(agent_id=agent_id, event="removed", snapshot={"source_path": agent.source_path}, at=now))
    return True


def current_tags(session: Session, agent_id: str) -> list[str]:
    return list(
        session.scalars(
            select(AgentExpertise.tag).where(AgentExpertise.agent_id == agent_id).order_by(AgentExpertise.tag)
        )
    )


def require_active(session: Session, agent_id: str, role: str = "agent") -> Agent:
    agent = session.get(Agent, agent_id)
    if agent is None or agent.status != "active":
        state = "was removed" if agent is not None else "is not registered"
        raise NotFound(
            f"{role} {agent_id!r} {state}; register it (`coord agents add`) or put its file in an agent folder",
            agent_id=agent_id,
        )
    return agent


def open_task_counts(session: Session, agent_ids: list[str] | None = None) -> dict[str, int]:
    stmt = select(Task.to_agent, func.count()).where(Task.status == "claimed").group_by(Task.to_agent)
    if agent_ids is not None:
        stmt = stmt.where(Task.to_agent.in_(agent_ids))
    return {a: int(n) for a, n in session.execute(stmt)}


def info(session: Session, agent: Agent, open_tasks: int = 0) -> AgentInfo:
    return AgentInfo(
        id=agent.id,
        description=agent.description,
        expertise=current_tags(session, agent.id),
        tools=agent.tools,
        mcp_servers=list(agent.mcp_servers or []),
        model=agent.model,
        status=agent.status,
        origin=agent.origin,
        source_path=agent.source_path,
        open_tasks=open_tasks,
    )


def get_agent(session: Session, agent_id: str) -> AgentInfo:
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id!r} is not registered (see `coord agents ls`)", agent_id=agent_id)
    return info(session, agent, open_task_counts(session, [agent_id]).get(agent_id, 0))


def list_agents(session: Session, include_removed: bool = False) -> list[AgentInfo]:
    stmt = select(Agent).order_by(Agent.id)
    if not include_removed:
        stmt = stmt.where(Agent.status == "active")
    counts = open_task_counts(session)
    return [info(session, a, counts.get(a.id, 0)) for a in session.scalars(stmt)]
