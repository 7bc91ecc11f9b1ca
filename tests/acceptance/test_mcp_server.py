"""`coord mcp` as a subprocess, driven by the MCP SDK's own stdio client: the tools work end to end,
agree with the CLI, refuse forged or removed identities as tool errors, and keep serving after bad calls.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from click.testing import CliRunner, Result
from conftest import child_env, make_settings

pytest.importorskip("mcp.server.mcpserver")
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from coord.client import Coordinator

TOOLS = {
    "delegate_task", "claim_task", "heartbeat_task", "complete_task", "fail_task", "check_inbox",
    "request_collaboration", "record_missing_capability", "report_available_tools", "propose_new_agent",
    "list_agents", "get_proposals",
}


@pytest.fixture
def state(tmp_path: Path) -> Any:
    settings = make_settings(tmp_path)
    with Coordinator(settings) as c:
        c.register_agent("backend-dev", "Backend developer: Python services and REST APIs", expertise=["python"],
                         tools=["Read", "Bash", "rg"], mcp_servers=["github"])
        c.register_agent("db-admin", "Database administrator: PostgreSQL schema design and query tuning",
                         expertise=["postgres", "sql"])
        c.register_agent("temp-agent", "A short-lived helper agent", expertise=["misc"])
        yield c


def _env(c: Coordinator) -> dict[str, str]:
    return child_env(COORD_DISPATCH="inline", COORD_STATE_DIR=str(c.settings.state_dir))


@asynccontextmanager
async def coord_mcp(c: Coordinator, agent: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "coord.cli", "mcp", "--agent", agent],
                                   env=_env(c))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def call_error(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return result.content[0].text


@pytest.fixture
def cli(state: Coordinator) -> Iterator[Callable[..., Result]]:
    """The `coord` CLI in-process against the same state dir (structlog reset after: the CLI points it at the
    runner's captured stderr)."""
    from coord.cli.main import cli as coord_cli

    env = {"COORD_DISPATCH": "inline", "COORD_STATE_DIR": str(state.settings.state_dir)}
    yield lambda *args: CliRunner().invoke(coord_cli, list(args), env=env, catch_exceptions=False)
    structlog.reset_defaults()


def cli_json(cli: Callable[..., Result], *args: str) -> Any:
    done = cli("--json", *args)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_two_agents_coordinate_through_their_mcp_servers(state: Coordinator, cli: Callable[..., Result]) -> None:
    """backend-dev delegates through its server, db-admin claims and completes through its own, and every
    result is what the CLI shows for the same state."""

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with coord_mcp(state, "backend-dev") as dev, coord_mcp(state, "db-admin") as dba:
            listed = await dev.list_tools()
            out["tools"] = {t.name: t for t in listed.tools}
            out["delegated"] = await call(dev, "delegate_task", to_agent="db-admin", title="Add an index for /orders",
                                          description="p95 is 2s", data={"table": "orders"}, priority="high")
            out["dba_inbox"] = await call(dba, "check_inbox")
            out["claim"] = await call(dba, "claim_task", lease_seconds=120)
            out["beat"] = await call(dba, "heartbeat_task", task_id=out["claim"]["task_id"],
                                     token=out["claim"]["token"])
            out["done"] = await call(dba, "complete_task", task_id=out["claim"]["task_id"],
                                     token=out["claim"]["token"], result={"index": "orders_created_at_idx"})
            out["empty"] = await call(dba, "claim_task")
            out["dev_inbox"] = await call(dev, "check_inbox")
            out["gap"] = await call(dev, "record_missing_capability", capability_type="tool", name="pg_top",
                                    context={"why": "watch the index build"})
            out["alltools"] = await call(dev, "report_available_tools", tools=["Read", "Bash"],
                                         mcp_servers=["coord"])
            out["collab"] = await call(dev, "request_collaboration", required_expertise="postgres query tuning")
            out["agents"] = await call(dev, "list_agents")
            out["proposed"] = await call(dev, "propose_new_agent", name="k8s-operator",
                                         description="Kubernetes operator: deploys and debugs clusters with helm",
                                         expertise=["kubernetes", "helm"], justification="deploys keep failing")
            out["proposals"] = await call(dba, "get_proposals", status="pending_approval")
            resources = await dev.list_resources()
            out["resources"] = {str(r.uri) for r in resources.resources}
            opened = await dev.read_resource("coord://tasks/open")
            out["open_tasks"] = json.loads(opened.contents[0].text)
        return out

    out = anyio.run(scenario)

    assert set(out["tools"]) == TOOLS  # and no approval tool among them
    schema = out["tools"]["delegate_task"].input_schema
    assert schema["required"] == ["to_agent", "title"] and schema["additionalProperties"] is False
    assert "from_agent" not in schema["properties"]  # identity is never an argument
    assert all(t.description and "\n    " not in t.description for t in out["tools"].values())

    task_id = out["delegated"]["coordination_id"]
    assert out["delegated"]["status"] == "delegated" and out["delegated"]["to_agent"] == "db-admin"
    assert [(m["kind"], m["ref_id"]) for m in out["dba_inbox"]["messages"]] == [("new_coordination_task", task_id)]
    assert out["claim"]["status"] == "claimed" and out["claim"]["task_id"] == task_id
    assert out["claim"]["from_agent"] == "backend-dev" and out["claim"]["priority"] == "high"
    payload = {"table": "orders", "title": "Add an index for /orders", "description": "p95 is 2s"}
    assert out["claim"]["payload"] == payload
    assert out["done"] == {"task_id": task_id, "status": "completed"}
    assert out["empty"]["status"] == "empty"
    assert ("task_completed", task_id) in [(m["kind"], m["ref_id"]) for m in out["dev_inbox"]["messages"]]
    assert out["gap"]["status"] == "recorded" and out["gap"]["name"] == "pg_top"
    # The definition requires rg and the github MCP server; the agent reported it has neither.
    assert sorted((g["capability_type"], g["name"]) for g in out["alltools"]["missing"]) == [
        ("mcp", "github"), ("tool", "rg")]
    assert out["collab"]["candidates"][0]["agent_id"] == "db-admin"
    assert out["resources"] == {"coord://inbox", "coord://tasks/open"}
    assert out["open_tasks"]["tasks"] == []  # the only task is completed

    # What the tools said is what the CLI shows.
    shown = cli_json(cli, "tasks", "show", task_id)
    assert shown["status"] == "completed" and shown["from_agent"] == "backend-dev" and shown["to_agent"] == "db-admin"
    assert shown["result"] == {"index": "orders_created_at_idx"}
    assert shown["payload"] == out["claim"]["payload"]
    gaps = {(g["type"], g["name"]): g for g in cli_json(cli, "gaps", "ls")}
    assert gaps[("tool", "pg_top")]["id"] == out["gap"]["gap_id"]
    assert {("tool", "rg"), ("mcp", "github")} <= set(gaps)
    assert out["agents"]["agents"] == cli_json(cli, "agents", "ls")
    # Proposing is open to agents; approving is not (no tool for it): the proposal waits for a person.
    assert out["proposed"]["status"] == "agent_proposed" and out["proposed"]["approval_id"]
    assert out["proposals"]["proposals"] == cli_json(cli, "proposals", "ls", "--status", "pending_approval")
    create = [p for p in out["proposals"]["proposals"] if p["kind"] == "create_agent"]
    assert [(p["id"], p["proposed_by"], p["approval_status"]) for p in create] == [
        (out["proposed"]["proposal_id"], "backend-dev", "pending")]


def test_bad_calls_are_tool_errors_and_the_server_keeps_serving(state: Coordinator) -> None:
    errors: dict[str, str] = {}
    theirs: list[str] = []

    async def scenario() -> None:
        async with coord_mcp(state, "temp-agent") as s:
            errors["missing"] = await call_error(s, "delegate_task", to_agent="db-admin")
            errors["type"] = await call_error(s, "heartbeat_task", task_id="x", token="not a number")
            errors["enum"] = await call_error(s, "record_missing_capability", capability_type="wizard", name="x")
            errors["forged"] = await call_error(s, "delegate_task", to_agent="db-admin", title="t",
                                                from_agent="db-admin")
            errors["unknown_tool"] = await call_error(s, "approve_proposal", proposal_id="p1")
            errors["not_found"] = await call_error(s, "complete_task", task_id="no-such-task", token=1)
            errors["bad_id"] = await call_error(s, "delegate_task", to_agent="db-admin", title="t", task_id="a b")
            # Someone else's task: the token is a guessable counter, the assignee check is what protects it.
            other = state.delegate("backend-dev", "db-admin", {"title": "not yours"})
            claim = state.claim_next("db-admin")
            assert claim is not None and claim.task_id == other.coordination_id
            theirs.append(claim.task_id)
            errors["not_mine"] = await call_error(s, "complete_task", task_id=claim.task_id, token=claim.token)
            assert (await call(s, "list_agents"))["agents"]  # still serving after all of that
            state.remove_agent("temp-agent")
            errors["removed"] = await call_error(s, "list_agents")
            errors["removed_resource"] = ""
            try:
                await s.read_resource("coord://inbox")
            except Exception as exc:  # a protocol error for resources, carrying the same message
                errors["removed_resource"] = str(exc)
            await s.send_ping()  # the process is alive and answering

    anyio.run(scenario)
    assert "title" in errors["missing"] and "Field required" in errors["missing"]
    assert "token" in errors["type"]
    assert "capability_type" in errors["enum"]
    assert "from_agent" in errors["forged"] and "Extra inputs are not permitted" in errors["forged"]
    assert "Unknown tool" in errors["unknown_tool"]
    # CoordErrors carry the CLI's message and code.
    assert errors["not_found"] == "error (not_found): task 'no-such-task' does not exist (see `coord tasks ls`)"
    assert errors["bad_id"].startswith("error (invalid_input): task id 'a b' is not valid")
    assert errors["not_mine"].startswith("error (policy_denied):") and "assigned to 'db-admin'" in errors["not_mine"]
    assert errors["removed"].startswith("error (policy_denied): this MCP server acts as agent 'temp-agent'")
    assert "temp-agent" in errors["removed_resource"]
    assert state.get_task(theirs[0]).status == "claimed"  # the refused complete changed nothing


def test_unknown_agent_is_refused_at_start(cli: Callable[..., Result]) -> None:
    ghost = cli("mcp", "--agent", "ghost")
    assert ghost.exit_code == 5, ghost.output  # PolicyDenied: refused, with what to do about it
    assert "acts as agent 'ghost', which is not an active agent" in ghost.stderr and ghost.stdout == ""
    nobody = cli("mcp")
    assert nobody.exit_code == 2 and "--agent NAME" in nobody.stderr
