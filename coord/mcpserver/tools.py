"""The agent-facing MCP tools: one per client method, all acting as the one agent the server was started for.

Identity is the server's, never an argument: the calling agent is fixed at launch (`--agent` or
COORD_AGENT) and checked against the registry before every call, so a removed agent is refused at once
and no tool takes a `from_agent` a model could set to someone else. Unknown arguments are rejected
rather than ignored (`strict_arguments`) so an attempt to pass one fails loudly.

Every CoordError becomes an MCP tool error (`isError`) carrying the same message the CLI prints and the
same `{"error", "message"}` object `--json` prints, in `tool_error`, the one place that mapping lives.
There is deliberately no approval tool: approving stays with people (invariant 6).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import ConfigDict, Field

from coord import registry
from coord.errors import CoordError, NotFound, PolicyDenied
from coord.states import GAP_TYPES, PRIORITIES

Json = dict[str, Any]

# Argument types, with the descriptions a model reads in the tool's input schema. Module-level because
# the SDK evaluates the tool functions' annotations against this module's globals.
TaskId = Annotated[
    str,
    Field(description="The task's id, as returned by claim_task (`task_id`) or delegate_task.", max_length=128),
]
Token = Annotated[
    int,
    Field(
        description="The fencing token claim_task returned with this task. It proves you still hold the lease; "
        "a stale token is refused.",
        ge=0,
    ),
]
LeaseSeconds = Annotated[
    float | None,
    Field(
        description="How long the lease lasts, in seconds (default: the server's lease_seconds). "
        "Call heartbeat_task before it runs out or the task goes back to the queue.",
        gt=0,
        le=7 * 24 * 3600,
    ),
]
CallId = Annotated[
    str | None,
    Field(
        description="Optional id you choose (letters, digits, '.', '_', ':', '-'). Calling again with the same id "
        "does nothing new, so retrying after a timeout is safe.",
        max_length=128,
    ),
]
JsonObject = Annotated[
    dict[str, Any] | None,
    Field(description="Optional JSON object with anything the other side needs (files, links, constraints)."),
]
# Literal types make enums in the schema; the assertion keeps them equal to coord.states.
Priority = Literal["low", "medium", "high", "critical"]
GapType = Literal["tool", "mcp", "agent", "expertise"]
assert set(Priority.__args__) == set(PRIORITIES) and set(GapType.__args__) == set(GAP_TYPES)  # type: ignore[attr-defined]


def error_text(exc: CoordError) -> str:
    return f"error ({exc.code}): {exc.message}"


def tool_error(exc: CoordError) -> CallToolResult:
    """The one CoordError -> MCP mapping: an `isError` result, the CLI's message, the `--json` error object.
    (Resources cannot return errors as results; they raise ResourceError with the same `error_text`.)"""
    return CallToolResult(
        content=[TextContent(type="text", text=error_text(exc))],
        structured_content=exc.to_dict(),
        is_error=True,
    )


class Caller:
    """The agent this server acts for, and the Coordinator it acts through."""

    def __init__(self, coordinator: Any, agent: str) -> None:
        self.coordinator = coordinator
        self.agent = agent

    def check(self) -> None:
        """Refuse every call once the agent is gone from the registry (removed, or never registered)."""
        try:
            with self.coordinator.db.reader() as s:
                registry.require_active(s, self.agent)
        except NotFound:
            raise PolicyDenied(
                f"this MCP server acts as agent {self.agent!r}, which is not an active agent in the registry "
                f"(removed or never registered); calls are refused. Register it (`coord agents add "
                f"{self.agent} ...`) or restart the server with another --agent",
                agent_id=self.agent,
            ) from None

    def run(self, action: Callable[[], Json]) -> Json | CallToolResult:
        try:
            self.check()
            return action()
        except CoordError as exc:
            return tool_error(exc)

    def own_task(self, task_id: str) -> None:
        """The fencing token is a small counter anyone could guess; the assignee check is what binds a
        task to the agent it was delegated to."""
        task = self.coordinator.get_task(task_id)
        if task.to_agent != self.agent:
            raise PolicyDenied(
                f"task {task_id!r} is assigned to {task.to_agent!r}, not to you ({self.agent!r}); "
                "only its assignee can heartbeat, complete or fail it",
                task_id=task_id,
            )


# Hints for the host (e.g. which calls it may run without asking). Writes are not idempotent in general:
# claim_task takes the next task each time; only a call repeated with the same id is a no-op.
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def build_tools(caller: Caller) -> list[Tool]:
    """The tools, as SDK Tool objects with strict argument models. Each docstring is what a model reads."""
    c = caller.coordinator
    me = caller.agent

    def delegate_task(
        to_agent: Annotated[str, Field(description="Name of the agent that should do the work (see list_agents).")],
        title: Annotated[str, Field(description="One line saying what needs doing.", min_length=1, max_length=500)],
        description: Annotated[str, Field(description="The details: goal, inputs, what done looks like.")] = "",
        data: JsonObject = None,
        priority: Annotated[Priority, Field(description="How urgent it is; higher is claimed first.")] = "medium",
        task_id: CallId = None,
    ) -> Json:
        """Hand a task to another agent; it lands in that agent's queue and inbox.

        Returns `status: "delegated"` with the `coordination_id` (the task id), or `status: "agent_not_found"`
        when no such agent exists: the missing agent is then recorded as a capability gap and `fallback`
        lists registered agents that could do the work instead (delegate again to one of them).
        """
        payload = {**(data or {}), "title": title, **({"description": description} if description else {})}
        return caller.run(lambda: c.delegate(me, to_agent, payload, priority=priority, id=task_id).to_dict())

    def claim_task(lease_seconds: LeaseSeconds = None) -> Json:
        """Take the next task delegated to you (highest priority first, then oldest) under a lease.

        Returns `status: "claimed"` with `task_id`, `token`, `lease_expires_at` and the task `payload`, or
        `status: "empty"` when nothing is waiting. Keep the token: complete_task, fail_task and
        heartbeat_task need it. If the lease runs out the task returns to the queue for another attempt.
        """

        def claim() -> Json:
            claimed = c.claim_next(me, lease_seconds=lease_seconds)
            if claimed is None:
                return {"status": "empty", "message": f"no pending task for {me}; check again later"}
            return {"status": "claimed", **claimed.to_dict()}

        return caller.run(claim)

    def heartbeat_task(task_id: TaskId, token: Token, lease_seconds: LeaseSeconds = None) -> Json:
        """Extend the lease on a task you are still working on. Returns the new `lease_expires_at`."""

        def beat() -> Json:
            caller.own_task(task_id)
            until = c.heartbeat(task_id, token, lease_seconds=lease_seconds)
            return {"task_id": task_id, "lease_expires_at": until.isoformat()}

        return caller.run(beat)

    def complete_task(
        task_id: TaskId,
        token: Token,
        result: Annotated[
            dict[str, Any] | None,
            Field(description="JSON object with the outcome the delegating agent will read (summary, links, ...)."),
        ] = None,
    ) -> Json:
        """Mark a task you claimed as done and hand back its result; the delegating agent is notified."""

        def complete() -> Json:
            caller.own_task(task_id)
            c.complete(task_id, token, result)
            return {"task_id": task_id, "status": "completed"}

        return caller.run(complete)

    def fail_task(
        task_id: TaskId,
        token: Token,
        error: Annotated[str, Field(description="Why it failed, for the delegating agent.", min_length=1)],
        retry: Annotated[
            bool, Field(description="true: return it to the queue while attempts remain; false: fail it for good.")
        ] = True,
    ) -> Json:
        """Give up on the current attempt of a task you claimed. Returns its new `status` (pending or failed)."""

        def fail() -> Json:
            caller.own_task(task_id)
            return {"task_id": task_id, "status": c.fail(task_id, token, error, retry=retry)}

        return caller.run(fail)

    def check_inbox(
        include_read: Annotated[bool, Field(description="Also list messages already marked read.")] = False,
        mark_read: Annotated[
            bool, Field(description="Mark the listed messages read so they are not shown again.")
        ] = True,
    ) -> Json:
        """Read your notifications: new tasks delegated to you, results of tasks you delegated, collaboration
        requests. Each message has a `kind` and a `ref_id` (the task or request it is about)."""

        def inbox() -> Json:
            items = c.inbox(me, unread_only=not include_read, mark_read=mark_read)
            return {"agent": me, "messages": [i.to_dict() for i in items]}

        return caller.run(inbox)

    def request_collaboration(
        required_expertise: Annotated[
            str,
            Field(description="The expertise you need, in plain words (e.g. 'postgres query tuning').", min_length=1),
        ],
        context: JsonObject = None,
        request_id: CallId = None,
    ) -> Json:
        """Find agents with an expertise you need. Returns ranked `candidates` (agent, score, why) and notifies
        them, or `status: "no_expert_available"` with a `suggestion`; the missing expertise is then recorded as a
        capability gap. To hand work to a candidate, call delegate_task."""
        return caller.run(
            lambda: c.request_collaboration(me, required_expertise, context, id=request_id).to_dict()
        )

    def record_missing_capability(
        capability_type: Annotated[
            GapType,
            Field(description="tool: a CLI tool or program; mcp: an MCP server; agent: a specialist agent; "
                  "expertise: knowledge no agent has."),
        ],
        name: Annotated[str, Field(description="What is missing, e.g. 'ripgrep', 'github', 'k8s-expert'.",
                                   min_length=1, max_length=200)],
        context: JsonObject = None,
        report_id: CallId = None,
    ) -> Json:
        """Report something you need but do not have. Repeated reports count up its `frequency`; coord proposes a
        way to close the gap, which a person approves. Returns the gap's id, status and frequency."""
        return caller.run(
            lambda: c.record_missing_capability(capability_type, name, me, context, id=report_id).to_dict()
        )

    def report_available_tools(
        tools: Annotated[list[str], Field(description="Every tool name you can call right now (e.g. Read, Bash).")],
        mcp_servers: Annotated[
            list[str], Field(description="The MCP servers you are connected to (e.g. github, coord).")
        ] = [],  # noqa: B006  (the SDK copies defaults through pydantic; never mutated)
        report_id: CallId = None,
    ) -> Json:
        """Tell coord what you have; it compares that with what your agent definition requires and records each
        missing tool or MCP server as a capability gap. Returns the `missing` gaps (empty when you lack nothing)."""

        def report() -> Json:
            gaps = c.report_available_tools(me, tools, mcp_servers, id=report_id)
            return {"agent": me, "missing": [g.to_dict() for g in gaps]}

        return caller.run(report)

    def propose_new_agent(
        name: Annotated[str, Field(description="Name for the new agent: lowercase letters, digits and hyphens.",
                                   max_length=64)],
        description: Annotated[str, Field(description="When to use this agent: the text others will match on.",
                                          min_length=1)],
        expertise: Annotated[list[str], Field(description="Expertise tags, e.g. ['kubernetes', 'helm'].",
                                              min_length=1)],
        justification: Annotated[str | None, Field(description="Why the team needs this agent.")] = None,
        expected_usage: Annotated[str | None, Field(description="What it will be asked to do, how often.")] = None,
        based_on: Annotated[str | None, Field(description="An existing agent to start from, if any.")] = None,
        tools: Annotated[list[str] | None, Field(description="Tools it needs; omit to inherit all tools.")] = None,
        proposal_id: CallId = None,
    ) -> Json:
        """Propose a new specialist agent when no existing one fits (check list_agents first).

        Nothing is created until policy or a person approves. Returns `status`: `agent_proposed` (with
        `proposal_id`, and `approval_id` when a person must decide), `similar_exists` (use one of the
        `alternatives` instead) or `invalid_proposal` (fix what `errors` says and propose again).
        """
        return caller.run(lambda: c.propose_new_agent(
            me, name, description, expertise, justification=justification, expected_usage=expected_usage,
            based_on=based_on, tools=tools, id=proposal_id,
        ).to_dict())

    def list_agents() -> Json:
        """List the active agents: name, description, expertise tags and how many tasks each is working on."""
        return caller.run(lambda: {"agents": [a.to_dict() for a in c.list_agents()]})

    def get_proposals(
        name: Annotated[
            str | None, Field(description="Only proposals for this capability, e.g. 'ripgrep' or 'github'.")
        ] = None,
        capability_type: Annotated[GapType | None, Field(description="Only proposals for this kind of gap.")] = None,
        gap_id: Annotated[str | None, Field(description="Only proposals for this gap (from record_missing_capability).",
                                            max_length=128)] = None,
        status: Annotated[
            str | None, Field(description="Only proposals in this status: proposed, pending_approval, approved, "
                              "executing, executed, denied, rejected, expired, failed.", max_length=32)
        ] = None,
    ) -> Json:
        """See how capability gaps are being closed: coord's proposals (install a tool or MCP server, create an
        agent, ...), best first, with their confidence, why, and whether a person approved them."""
        return caller.run(lambda: {"proposals": [
            p.to_dict() for p in c.get_proposals(name, capability_type=capability_type, gap_id=gap_id, status=status)
        ]})

    read_only = {list_agents, get_proposals}
    fns = [
        delegate_task, claim_task, heartbeat_task, complete_task, fail_task, check_inbox, request_collaboration,
        record_missing_capability, report_available_tools, propose_new_agent, list_agents, get_proposals,
    ]
    return [
        strict_arguments(Tool.from_function(
            fn, description=inspect.cleandoc(fn.__doc__ or ""), annotations=READ_ONLY if fn in read_only else WRITE
        ))
        for fn in fns
    ]


def strict_arguments(tool: Tool) -> Tool:
    """Reject unknown arguments instead of dropping them, and say so in the schema.

    The SDK ignores extra keys; here an extra `from_agent` or `agent` (an attempt to act as someone else)
    must fail visibly, and a misspelt optional argument must not silently take its default.
    """
    model = tool.fn_metadata.arg_model
    tool.fn_metadata.arg_model = type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid")})
    tool.parameters["additionalProperties"] = False
    return tool
