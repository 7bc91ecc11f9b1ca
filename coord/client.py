"""The agent-facing API: one method per seed function, typed results, idempotent writes.

Each write runs in one transaction; the outbox rows it wrote are rung after commit. Agents cannot
approve anything here: approving is for people (the CLI's `approvals` commands).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from coord import collaboration, delegation, gaps, proposals, registry
from coord.clock import utcnow
from coord.creation import AgentProposalSpec
from coord.db import Database, open_database
from coord.db.models import InboxMessage
from coord.errors import InvalidInput
from coord.ids import check_id, new_id
from coord.logs import get_logger
from coord.matching.hybrid import rank_agents
from coord.matching.index import embedding_jobs
from coord.outbox import Bell
from coord.results import (
    AgentInfo,
    AgentProposalResult,
    Claim,
    CollaborationResult,
    CollaborationStatus,
    DelegationResult,
    GapResult,
    InboxItem,
    ProposalInfo,
    TaskInfo,
)
from coord.settings import Settings, load_settings

log = get_logger("coord.client")


def make_bell(settings: Settings, db: Database) -> Bell:
    """The port to the queue: the worker's Huey bell, or in-process execution (`dispatch = "inline"`)."""
    if settings.dispatch == "inline":
        from coord.jobs import InlineBell

        return InlineBell(settings, db)
    from worker.bell import QueueBell  # the one place coord reaches the queue runtime

    return QueueBell(settings)


class Coordinator:
    """Coordination for one state dir. Thread-safe; open one per process and share it."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        db: Database | None = None,
        bell: Bell | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings or load_settings().settings
        self.db = db or open_database(self.settings)
        self.bell = bell or make_bell(self.settings, self.db)
        self.now = clock
        self.claimer_id = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def open(cls, config: str | None = None, **overrides: Any) -> Coordinator:
        return cls(load_settings(config, overrides).settings)

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ring(self, outbox_ids: list[str]) -> None:
        if not outbox_ids:
            return
        try:
            self.bell.ring(outbox_ids)
        except Exception as exc:
            log.warning("bell.failed", outbox_ids=outbox_ids, error=str(exc))

    def _rank(self, session: Any, need: str, *, limit: int = 5, exclude: tuple[str, ...] = ()) -> list:
        return rank_agents(session, self.db.backend, need, limit=limit, exclude=exclude,
                           matching=self.settings.matching)

    # --- registry -----------------------------------------------------------------------------------
    def register_agent(
        self,
        name: str,
        description: str,
        *,
        expertise: list[str] | None = None,
        tools: list[str] | None = None,
        mcp_servers: list[str] | None = None,
        model: str | None = None,
        instructions: str = "",
    ) -> AgentInfo:
        """Register or replace an agent. `instructions`: what its file's body would say (its system prompt);
        hybrid matching also reads their words."""
        spec = registry.AgentSpec(name, description, list(expertise or []), tools, list(mcp_servers or []), model,
                                  instructions=instructions)
        with self.db.session() as s:
            agent, event = registry.upsert_agent(s, self.db.backend, spec, now=self.now(), origin="api")
            info = registry.info(s, agent)
            embed = embedding_jobs(s) if event is not None else []
        log.info("agent.registered", agent_id=name, change=event)
        self._ring(embed)  # the worker embeds the new text; matching is lexical for this agent until then
        return info

    def get_agent(self, agent_id: str) -> AgentInfo:
        with self.db.reader() as s:
            return registry.get_agent(s, agent_id)

    def list_agents(self, include_removed: bool = False) -> list[AgentInfo]:
        with self.db.reader() as s:
            return registry.list_agents(s, include_removed)

    def remove_agent(self, agent_id: str) -> bool:
        with self.db.session() as s:
            return registry.mark_removed(s, self.db.backend, agent_id, now=self.now())

    # --- delegation (seed delegateTask) ---------------------------------------------------------------
    def delegate(
        self,
        from_agent: str,
        to_agent: str,
        task: dict[str, Any],
        *,
        priority: str = "medium",
        task_type: str = "delegation",
        id: str | None = None,
    ) -> DelegationResult:
        task_id = new_id() if id is None else id
        result, outbox = delegation.delegate(
            self.db,
            self.settings,
            task_id=task_id,
            from_agent=from_agent,
            to_agent=to_agent,
            payload=task,
            priority=priority,
            task_type=task_type,
            now=self.now(),
        )
        log.info(
            "delegation." + result.status,
            task_id=task_id,
            from_agent=from_agent,
            to_agent=to_agent,
            outbox_ids=outbox,
            replayed=result.replayed,
        )
        self._ring(outbox)
        return result

    def _lease(self, lease_seconds: float | None) -> timedelta:
        seconds = self.settings.lease_seconds if lease_seconds is None else lease_seconds
        if not 0 < seconds <= 7 * 24 * 3600:
            raise InvalidInput("lease_seconds must be between 0 and one week")
        return timedelta(seconds=seconds)

    def claim_next(
        self, agent_id: str, *, lease_seconds: float | None = None, claimer: str | None = None
    ) -> Claim | None:
        lease = self._lease(lease_seconds)
        who = claimer or f"{agent_id}@{self.claimer_id}"
        claim = delegation.claim_next(self.db, agent_id, claimer=who, lease=lease, now=self.now())
        if claim:
            log.info("task.claimed", task_id=claim.task_id, agent_id=agent_id, token=claim.token, attempt=claim.attempt)
        return claim

    def heartbeat(self, task_id: str, token: int, *, lease_seconds: float | None = None) -> datetime:
        lease = self._lease(lease_seconds)
        with self.db.connection() as s:
            return delegation.heartbeat(s, task_id, token, lease=lease, now=self.now())

    def complete(self, task_id: str, token: int, result: dict[str, Any] | None = None) -> None:
        delegation.complete(self.db, task_id, token, result, max_bytes=self.settings.max_payload_bytes, now=self.now())
        log.info("task.completed", task_id=task_id, token=token)

    def complete_and_claim(
        self,
        task_id: str,
        token: int,
        result: dict[str, Any] | None = None,
        *,
        agent_id: str,
        lease_seconds: float | None = None,
        claimer: str | None = None,
    ) -> Claim | None:
        """`complete`, then `agent_id`'s next task claimed in the same transaction (None when there is none):
        one transaction a task in an agent's steady loop instead of two."""
        lease = self._lease(lease_seconds)
        who = claimer or f"{agent_id}@{self.claimer_id}"
        claim = delegation.complete(
            self.db, task_id, token, result, max_bytes=self.settings.max_payload_bytes, now=self.now(),
            next_claim=(agent_id, who, lease),
        )
        log.info("task.completed", task_id=task_id, token=token)
        if claim:
            log.info("task.claimed", task_id=claim.task_id, agent_id=agent_id, token=claim.token, attempt=claim.attempt)
        return claim

    def fail(self, task_id: str, token: int, error: str, *, retry: bool = True) -> str:
        with self.db.session() as s:
            status = delegation.fail(s, self.db.backend, task_id, token, error, retry=retry, now=self.now())
        log.info("task.failed", task_id=task_id, token=token, now_status=status)
        return status

    def release(self, task_id: str, token: int) -> None:
        with self.db.session() as s:
            delegation.release(s, task_id, token, now=self.now())

    def get_task(self, task_id: str) -> TaskInfo:
        with self.db.reader() as s:
            return delegation.get_task(s, task_id)

    def tasks(self, *, agent_id: str | None = None, status: str | None = None, limit: int = 100) -> list[TaskInfo]:
        with self.db.reader() as s:
            return delegation.list_tasks(s, agent_id=agent_id, status=status, limit=limit)

    # --- inbox ------------------------------------------------------------------------------------------
    def inbox(
        self, agent_id: str, *, unread_only: bool = True, mark_read: bool = False, limit: int = 100
    ) -> list[InboxItem]:
        check_id(agent_id, "agent id")
        with self.db.session() as s:
            stmt = select(InboxMessage).where(InboxMessage.agent_id == agent_id)
            if unread_only:
                stmt = stmt.where(InboxMessage.read_at.is_(None))
            rows = list(s.scalars(stmt.order_by(InboxMessage.created_at, InboxMessage.id).limit(limit)))
            items = [InboxItem(r.id, r.agent_id, r.kind, r.ref_id, r.body, r.created_at, r.read_at) for r in rows]
            if mark_read and rows:
                s.execute(
                    update(InboxMessage).where(InboxMessage.id.in_([r.id for r in rows])).values(read_at=self.now())
                )
        return items

    # --- collaboration (seed requestCollaboration) -------------------------------------------------------
    def request_collaboration(
        self,
        from_agent: str,
        required_expertise: str,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        deadline_seconds: float | None = None,
    ) -> CollaborationResult:
        request_id = new_id() if id is None else id
        deadline = None if deadline_seconds is None else timedelta(seconds=deadline_seconds)
        if deadline is not None and not timedelta(0) < deadline <= timedelta(days=30):
            raise InvalidInput("deadline_seconds must be between 0 and 30 days")
        with self.db.session() as s:
            result, outbox = collaboration.request_collaboration(
                s,
                self.db.backend,
                self.settings,
                request_id=request_id,
                requester=from_agent,
                required_expertise=required_expertise,
                context=context,
                now=self.now(),
                ranker=self._rank,
                deadline=deadline,
            )
        log.info(
            "collaboration." + result.status,
            request_id=request_id,
            from_agent=from_agent,
            candidates=[c.agent_id for c in result.candidates],
            gap_id=result.gap_id,
        )
        self._ring(outbox)
        return result

    def respond_collaboration(
        self, request_id: str, agent_id: str, *, accept: bool, note: str | None = None
    ) -> CollaborationStatus:
        """A candidate accepts (and is assigned; the requester is notified) or declines a request."""
        with self.db.session() as s:
            registry.require_active(s, agent_id, "responding agent")
            result = collaboration.respond(
                s, self.db.backend, request_id=request_id, agent_id=agent_id, accept=accept, note=note, now=self.now()
            )
        log.info("collaboration.responded", request_id=request_id, agent_id=agent_id, accept=accept,
                 now_status=result.status)
        return result

    def close_collaboration(self, request_id: str, requester: str) -> CollaborationStatus:
        with self.db.session() as s:
            return collaboration.close_request(
                s, self.db.backend, request_id=request_id, requester=requester, now=self.now()
            )

    def get_collaboration(self, request_id: str) -> CollaborationStatus:
        with self.db.reader() as s:
            return collaboration.status_of(s, collaboration.get_request(s, request_id))

    def find_experts(self, need: str, *, limit: int = 5) -> list:
        with self.db.reader() as s:
            return self._rank(s, need, limit=limit)

    # --- capability gaps (seed recordMissingCapability) ------------------------------------------------
    def record_missing_capability(
        self,
        capability_type: str,
        name: str,
        agent_id: str,
        context: dict[str, Any] | None = None,
        *,
        id: str | None = None,
    ) -> GapResult:
        report_id = new_id() if id is None else id
        with self.db.connection() as s:  # Core statements only: agents report often (see coord.gaps)
            registry.require_active(s, agent_id, "reporting agent")
            from coord.payloads import check_payload

            ctx, _ = check_payload(context, what="context", max_bytes=self.settings.max_payload_bytes, required=False)
            result, outbox = gaps.record_gap(
                s,
                self.db.backend,
                report_id=report_id,
                capability_type=capability_type,
                name=name,
                agent_id=agent_id,
                context=ctx,
                now=self.now(),
                max_attempts=self.settings.outbox_max_attempts,
            )
        log.info(
            "gap." + result.status,
            gap_id=result.gap_id,
            capability_type=capability_type,
            name=result.name,
            agent_id=agent_id,
            frequency=result.frequency,
        )
        self._ring(outbox)
        return result

    def report_available_tools(
        self, agent_id: str, tools: list[str], mcp_servers: list[str], *, id: str | None = None
    ) -> list[GapResult]:
        """The seed's `/alltools` check: record what the agent's definition requires but it lacks."""
        info = self.get_agent(agent_id)
        have_tools = {t.strip() for t in tools}
        have_mcp = {m.strip().lower() for m in mcp_servers}
        base = new_id() if id is None else id
        out = []
        for tool in info.tools or []:
            if tool not in have_tools and not tool.startswith("mcp__"):
                out.append(
                    self.record_missing_capability(
                        "tool", tool, agent_id, {"reason": "required by definition"}, id=f"{base}:tool:{tool}"[:128]
                    )
                )
        for server in info.mcp_servers:
            if server.lower() not in have_mcp:
                out.append(
                    self.record_missing_capability(
                        "mcp", server, agent_id, {"reason": "required by definition"}, id=f"{base}:mcp:{server}"[:128]
                    )
                )
        return out

    def gaps(self, capability_type: str | None = None) -> list[GapResult]:
        with self.db.reader() as s:
            return [
                GapResult(g.resolution_status, g.id, g.capability_type, g.name, g.frequency, False)
                for g in gaps.list_gaps(s, capability_type)
            ]

    # --- proposals (seed proposeNewAgent, getCapabilityProposals) -----------------------------------------
    # Agents propose and read; they never approve. Approving is for people: `coord approvals` (ApprovalDesk).
    def propose_new_agent(
        self,
        proposing_agent: str,
        name: str,
        description: str,
        expertise: list[str],
        *,
        justification: str | None = None,
        expected_usage: str | None = None,
        based_on: str | None = None,
        tools: list[str] | None = None,
        model: str = "inherit",
        id: str | None = None,
    ) -> AgentProposalResult:
        spec = AgentProposalSpec(
            name=name, description=description, expertise=expertise, tools=tools, model=model, based_on=based_on,
            justification=justification, expected_usage=expected_usage,
        )
        proposal_id = new_id() if id is None else id
        with self.db.session() as s:
            registry.require_active(s, proposing_agent, "proposing agent")
            result, outbox = proposals.propose_new_agent(
                s, self.db.backend, self.settings, proposal_id=proposal_id, proposing_agent=proposing_agent,
                spec=spec, now=self.now(),
            )
        log.info("agent." + result.status, proposal_id=result.proposal_id, proposing_agent=proposing_agent,
                 agent_id=name if isinstance(name, str) else None, errors=result.errors or None)
        self._ring(outbox)
        return result

    def get_proposals(
        self,
        name: str | None = None,
        *,
        capability_type: str | None = None,
        gap_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[ProposalInfo]:
        """Proposals for a capability (by name, e.g. 'postgresql', or gap id), best first."""
        with self.db.reader() as s:
            return proposals.list_proposals(
                s, name=name, capability_type=capability_type, gap_id=gap_id, status=status, limit=limit
            )
