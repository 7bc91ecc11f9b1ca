"""The agent registry: register / update / get / list / mark removed, with history kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from coord import fsutil
from coord.agentfiles import MAX_AGENT_BYTES, derive_expertise, normalize_tag, validate_agent_name
from coord.db.backend import Backend
from coord.db.models import Agent, AgentExpertise, AgentHistory, Task
from coord.errors import InvalidInput, NotFound
from coord.matching import index as embeddings
from coord.results import AgentInfo

MAX_DESCRIPTION = 20_000
MAX_INSTRUCTIONS = MAX_AGENT_BYTES  # what a file's body can hold at most
AGENTS = Agent.__table__


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
    instructions: str = ""  # the body of the agent's file: hybrid ranking reads its words

    def validated(self) -> AgentSpec:
        validate_agent_name(self.name)
        if not isinstance(self.description, str) or not self.description.strip():
            raise InvalidInput(f"agent {self.name!r} needs a description: it is what others match on")
        if len(self.description) > MAX_DESCRIPTION:
            raise InvalidInput(f"agent {self.name!r}: description over {MAX_DESCRIPTION} characters")
        if not isinstance(self.instructions, str):
            raise InvalidInput(f"agent {self.name!r}: instructions must be text, "
                               f"not {type(self.instructions).__name__}")
        if len(self.instructions) > MAX_INSTRUCTIONS:
            raise InvalidInput(f"agent {self.name!r}: instructions over {MAX_INSTRUCTIONS} characters "
                               "(an agent file may hold 256 KiB in all)")
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
        # A digest, not the text: history keeps one row per change, and a body can be 256 KiB.
        "instructions_sha256": fsutil.sha256_bytes((agent.instructions or "").encode("utf-8")),
    }


@dataclass
class Upsert:
    """One agent for upsert_agents: the spec plus where it came from."""

    spec: AgentSpec
    origin: str = "api"
    source_path: str | None = None
    content_hash: str | None = None
    tags: list[str] | None = None  # spec.tags() when the caller (a parser) already computed them


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
    events = upsert_agents(session, backend, [Upsert(spec, origin, source_path, content_hash)], now=now)
    agent = session.get(Agent, spec.name)
    assert agent is not None
    return agent, events[spec.name]


def upsert_agents(session: Session, backend: Backend, items: list[Upsert], *, now: datetime) -> dict[str, str | None]:
    """Insert or update many agents with a few statements (folder sync registers thousands at once).

    Returns agent name -> history event written (registered | updated | restored), None when unchanged.
    """
    by_name: dict[str, tuple[Upsert, list[str]]] = {}
    for item in items:
        item.spec.validated()
        by_name[item.spec.name] = (item, item.tags if item.tags is not None else item.spec.tags())
    if not by_name:
        return {}
    names = list(by_name)
    existing = {a.id: a for a in session.scalars(select(Agent).where(Agent.id.in_(names)))}
    old_tags: dict[str, list[str]] = {}
    for agent_id, tag in session.execute(
        select(AgentExpertise.agent_id, AgentExpertise.tag)
        .where(AgentExpertise.agent_id.in_(list(existing)))
        .order_by(AgentExpertise.tag)
    ):
        old_tags.setdefault(agent_id, []).append(tag)
    events: dict[str, str | None] = {}
    rows_by_name: dict[str, Agent] = {}
    for name, (item, tags) in by_name.items():
        agent = rows_by_name[name] = existing.get(name)  # type: ignore[assignment]
        if agent is None:
            agent = rows_by_name[name] = Agent(id=name, created_at=now)
            session.add(agent)
            event: str | None = "registered"
            before = None
        else:
            before = _snapshot(agent, old_tags.get(name, []))
            event = "restored" if agent.status == "removed" else None
        spec = item.spec
        agent.description = spec.description
        agent.instructions = spec.instructions or ""
        agent.tools = spec.tools
        agent.mcp_servers = list(spec.mcp_servers)
        agent.model = spec.model
        agent.collaboration = dict(spec.collaboration)
        agent.origin = item.origin
        agent.source_path = item.source_path
        agent.content_hash = item.content_hash
        agent.status = "active"
        agent.removed_at = None
        if event is None and before != _snapshot(agent, sorted(tags)):
            event = "updated"
        if event is not None:
            agent.updated_at = now
        events[name] = event
    changed = [n for n, e in events.items() if e is not None]
    if not changed:
        return events
    session.flush()  # agent rows first: tags and the search index refer to them
    session.execute(delete(AgentExpertise).where(AgentExpertise.agent_id.in_(changed)))
    rows, history, docs = [], [], []
    for name in changed:
        item, tags = by_name[name]
        declared = {normalize_tag(x) for x in item.spec.expertise}
        rows.extend({"agent_id": name, "tag": t, "declared": t in declared} for t in tags)
        history.append({"agent_id": name, "event": events[name], "at": now,
                        "snapshot": _snapshot(rows_by_name[name], tags)})
        docs.append((name, item.spec.description, tags))
    # Table-level inserts: the ORM's bulk path spends more CPU per row than the database does.
    backend.insert_plain(session, AgentExpertise.__table__, rows)
    session.execute(insert(AgentHistory.__table__), history)
    backend.index_agents(session, docs, replace=[n for n in changed if n in existing])
    # The one place every registration passes (API, folder sync, agent creation): a changed text loses
    # its vector and gets an `embed` job in this transaction; the model never runs here.
    embeddings.on_agents_changed(session, backend, docs, now=now,
                                 instructions={n: by_name[n][0].spec.instructions for n in changed})
    return events


def mark_removed(session: Session, backend: Backend, agent_id: str, *, now: datetime) -> bool:
    """Removed agents stay (history, old tasks) but never match and cannot receive new work."""
    return bool(mark_removed_many(session, backend, [agent_id], now=now))


def mark_removed_many(session: Session, backend: Backend, agent_ids: list[str], *, now: datetime) -> list[str]:
    """mark_removed for many agents at once; returns the ids that were active."""
    agents = list(session.scalars(select(Agent).where(Agent.id.in_(agent_ids), Agent.status != "removed")))
    for agent in agents:
        agent.status = "removed"
        agent.removed_at = now
        agent.updated_at = now
    if agents:
        backend.unindex_agents(session, [a.id for a in agents])
        embeddings.on_agents_removed(session, [a.id for a in agents])
        session.execute(insert(AgentHistory.__table__), [
            {"agent_id": a.id, "event": "removed", "snapshot": {"source_path": a.source_path}, "at": now}
            for a in agents
        ])
    return [a.id for a in agents]


def current_tags(session: Session, agent_id: str) -> list[str]:
    return list(
        session.scalars(
            select(AgentExpertise.tag).where(AgentExpertise.agent_id == agent_id).order_by(AgentExpertise.tag)
        )
    )


_AGENT_STATUS = select(AGENTS.c.status).where(AGENTS.c.id == bindparam("agent_id"))  # built once: a hot check


def require_active(session: Session | Connection, agent_id: str, role: str = "agent") -> None:
    """Raise NotFound unless the agent is registered and active. Core select: works on a Connection too."""
    state = agent_state(session, agent_id)
    if state != "active":
        raise inactive_agent(agent_id, state, role)


def agent_state(session: Session | Connection, agent_id: str) -> str | None:
    return session.scalar(_AGENT_STATUS, {"agent_id": agent_id})


def inactive_agent(agent_id: str, state: str | None, role: str = "agent") -> NotFound:
    why = "was removed" if state is not None else "is not registered"
    return NotFound(
        f"{role} {agent_id!r} {why}; register it (`coord agents add`) or put its file in an agent folder",
        agent_id=agent_id,
    )


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
