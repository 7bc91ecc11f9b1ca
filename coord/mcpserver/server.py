"""`coord mcp`: the MCP server one agent host starts, over stdio or streamable HTTP on 127.0.0.1.

The server acts for exactly one agent, named at launch. It refuses to start for an agent the registry
does not know (the CLI prints the error and exits non-zero), and the tools re-check on every call.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.resources import FunctionResource

from coord.errors import CoordError
from coord.matching.hybrid import warm_up
from coord.mcpserver.tools import Caller, build_tools, error_text
from coord.states import TASK_OPEN

HTTP_HOST = "127.0.0.1"  # never another interface: anyone who can connect acts as the agent

INSTRUCTIONS = """\
You are connected to coord as the agent {agent!r}. coord lets agents hand work to each other and close the
gaps in what they can do. Your identity is fixed by this server; no tool takes it as an argument.
- To hand off work: list_agents or request_collaboration to find who can do it, then delegate_task.
- To do work delegated to you: claim_task, work on it (heartbeat_task if it takes long), then complete_task
  with a result, or fail_task saying why. check_inbox shows new tasks and the results of tasks you delegated.
- When you lack a tool, an MCP server, an agent or some expertise: record_missing_capability (or
  report_available_tools with everything you have). propose_new_agent when no agent fits a recurring need;
  get_proposals shows how gaps are being closed. A person approves; no tool approves anything.
Errors come back as tool errors whose message says what to do next."""


def build_server(coordinator: Any, agent: str, *, log_level: str = "WARNING") -> MCPServer:
    """An MCPServer acting as `agent`. Raises PolicyDenied (the CLI exits 5) when the agent is not active."""
    caller = Caller(coordinator, agent)
    caller.check()
    app = MCPServer(
        name="coord",
        title=f"coord ({agent})",
        instructions=INSTRUCTIONS.format(agent=agent),
        version=_version(),
        tools=build_tools(caller),
        log_level=log_level.upper(),  # type: ignore[arg-type]
    )
    for resource in _resources(caller):
        app.add_resource(resource)
    warm_up(coordinator.db, coordinator.settings)  # the first request_collaboration need not load the model
    return app


def _resources(caller: Caller) -> list[FunctionResource]:
    c = caller.coordinator

    def read(action: Any) -> Any:
        def fn() -> str:
            try:
                caller.check()
                return json.dumps(action(), indent=2, default=str)
            except CoordError as exc:
                raise ResourceError(error_text(exc)) from None

        return fn

    def inbox() -> dict[str, Any]:
        items = c.inbox(caller.agent, unread_only=True, mark_read=False)
        return {"agent": caller.agent, "messages": [i.to_dict() for i in items]}

    def open_tasks() -> dict[str, Any]:
        rows = [t for status in TASK_OPEN for t in c.tasks(agent_id=caller.agent, status=status, limit=500)]
        return {"agent": caller.agent, "tasks": [t.to_dict() for t in rows]}

    return [
        FunctionResource(
            uri="coord://inbox", name="inbox", mime_type="application/json", fn=read(inbox),
            description=f"Unread notifications for {caller.agent} (reading does not mark them read; "
            "check_inbox does).",
        ),
        FunctionResource(
            uri="coord://tasks/open", name="open-tasks", mime_type="application/json", fn=read(open_tasks),
            description=f"Pending and claimed tasks delegated to or by {caller.agent}.",
        ),
    ]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coord")
    except PackageNotFoundError:
        return "0"


def serve_stdio(app: MCPServer) -> None:
    anyio.run(app.run_stdio_async)


def serve_http(app: MCPServer, port: int) -> None:
    anyio.run(lambda: app.run_streamable_http_async(host=HTTP_HOST, port=port))
