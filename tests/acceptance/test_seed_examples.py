"""The seed's usage examples, end to end: once through the client API, once through the `coord` command.

Seed ("Usage Examples"): backend-expert delegates "Create API integration UI" to frontend-expert;
mobile-expert asks for a blockchain collaborator and nobody has it; an agent misses the postgresql MCP
server. Jobs run inline (`COORD_DISPATCH=inline`), so no worker is needed to see the notifications.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env

from coord.client import Coordinator
from coord.errors import Conflict, InvalidInput, LeaseLost, NotFound, SettingsError
from coord.settings import Settings

SEED_TASK = {
    "title": "Create API integration UI",
    "description": "Build React components for new endpoints",
    "apiSpec": {"openapi": "3.1.0", "paths": {"/orders": {}}},
    "priority": "high",
}
AGENTS = {
    "backend-expert": ("Backend APIs, databases and server code", ["backend", "api", "databases"]),
    "frontend-expert": ("React user interfaces and components", ["frontend", "react", "ui"]),
    "mobile-expert": ("iOS and Android apps", ["mobile", "ios", "android"]),
}


def _register(c: Coordinator) -> None:
    for name, (description, expertise) in AGENTS.items():
        c.register_agent(name, description, expertise=expertise)


@pytest.fixture
def c(coordinator: Coordinator) -> Coordinator:
    _register(coordinator)
    return coordinator


# --- the client API ------------------------------------------------------------------------------------------


def test_delegation_round_trip(c: Coordinator):
    result = c.delegate("backend-expert", "frontend-expert", SEED_TASK)
    assert (result.status, result.to_agent, result.fallback) == ("delegated", "frontend-expert", [])

    inbox = c.inbox("frontend-expert", mark_read=True)
    assert [(m.kind, m.ref_id) for m in inbox] == [("new_coordination_task", result.coordination_id)]
    assert inbox[0].body["from_agent"] == "backend-expert"
    assert inbox[0].body["priority"] == "high"
    assert inbox[0].body["title"] == "Create API integration UI"
    assert c.inbox("frontend-expert") == []  # read now

    claim = c.claim_next("frontend-expert")
    assert (claim.task_id, claim.from_agent, claim.priority) == (result.coordination_id, "backend-expert", "high")
    assert claim.payload["apiSpec"] == SEED_TASK["apiSpec"]
    assert c.claim_next("frontend-expert") is None
    c.complete(claim.task_id, claim.token, {"components": ["OrdersTable"]})

    done = c.inbox("backend-expert")
    assert [(m.kind, m.ref_id) for m in done] == [("task_completed", result.coordination_id)]
    task = c.get_task(result.coordination_id)
    assert (task.status, task.result) == ("completed", {"components": ["OrdersTable"]})


def test_missing_expertise_and_missing_mcp_server(c: Coordinator):
    collab = c.request_collaboration(
        "mobile-expert", "blockchain",
        {"task": "Implement crypto wallet in mobile app", "requirements": ["Web3 integration", "Secure key storage"]},
    )
    assert (collab.status, collab.candidates, collab.suggestion) == ("no_expert_available", [], "create_new_agent")
    assert collab.gap_id

    first = c.record_missing_capability("mcp", "postgresql", "backend-expert",
                                        {"reason": "Need database access for schema design"})
    second = c.record_missing_capability("mcp", "postgresql", "frontend-expert", {"reason": "read the schema"})
    assert (first.status, first.frequency, first.new) == ("recorded", 1, True)
    assert (second.status, second.gap_id, second.frequency) == ("counted", first.gap_id, 2)

    gaps = {(g.capability_type, g.name): g for g in c.gaps()}
    assert set(gaps) == {("expertise", "blockchain"), ("mcp", "postgresql")}
    assert gaps["expertise", "blockchain"].gap_id == collab.gap_id
    assert gaps["mcp", "postgresql"].frequency == 2


def test_delegating_to_an_unknown_agent_suggests_alternatives(c: Coordinator):
    result = c.delegate("backend-expert", "ui-wizard", SEED_TASK)
    assert result.status == "agent_not_found"
    names = [x.agent_id for x in result.fallback]
    assert names[0] == "frontend-expert"
    assert "backend-expert" not in names  # never suggest the delegator to itself
    # evidence is given: an expertise tag or text (lexical) and, with the semantic extra, the meaning match
    assert any(w.startswith(("tag:", "text", "semantic:")) for w in result.fallback[0].why)
    assert [x.score for x in result.fallback] == sorted((x.score for x in result.fallback), reverse=True)
    assert [(g.capability_type, g.name, g.frequency) for g in c.gaps()] == [("agent", "ui-wizard", 1)]
    assert result.gap_id == c.gaps()[0].gap_id
    assert c.tasks() == []  # nothing was queued for an agent that does not exist


# --- the `coord` command -------------------------------------------------------------------------------------


class Cli:
    def __init__(self, settings: Settings) -> None:
        self.env = child_env(COORD_STATE_DIR=str(settings.state_dir), COORD_DATABASE_URL=settings.db_url,
                             COORD_DISPATCH="inline", XDG_CONFIG_HOME=str(settings.state_dir / "xdg"))

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "coord.cli", "--json", *args], env={**self.env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish(proc: subprocess.Popen) -> tuple[int, Any]:
        out, err = proc.communicate(timeout=120)
        try:
            return proc.returncode, json.loads(out)
        except json.JSONDecodeError:
            pytest.fail(f"`coord {' '.join(proc.args[4:])}` printed no JSON (exit {proc.returncode}): {out!r} {err}")

    def __call__(self, *args: str, **env: str) -> tuple[int, Any]:
        return self.finish(self.start(*args, **env))

    def all(self, **commands: tuple[str, ...]) -> dict[str, tuple[int, Any]]:
        procs = {name: self.start(*args) for name, args in commands.items()}
        return {name: self.finish(proc) for name, proc in procs.items()}

    def ok(self, *args: str) -> Any:
        code, data = self(*args)
        assert code == 0, f"`coord {' '.join(args)}` exited {code}: {data}"
        return data


def test_seed_examples_through_the_cli(coordinator: Coordinator, settings: Settings):
    _register(coordinator)  # the registry is not part of the seed examples; the CLI shares the database
    cli = Cli(settings)

    sent = cli.ok("delegate", "backend-expert", "frontend-expert", "--title", SEED_TASK["title"],
                  "--description", SEED_TASK["description"], "--data", json.dumps({"apiSpec": SEED_TASK["apiSpec"]}),
                  "--priority", "high", "--id", "seed-task-1")
    assert (sent["status"], sent["coordination_id"]) == ("delegated", "seed-task-1")
    # Commands that do not depend on each other run side by side: each one is a whole Python start.
    got = cli.all(inbox=("inbox", "frontend-expert"), claim=("tasks", "claim", "frontend-expert"))
    assert got["inbox"][0] == 0
    assert [(m["kind"], m["ref_id"], m["body"]["priority"]) for m in got["inbox"][1]] == [
        ("new_coordination_task", "seed-task-1", "high")]
    code, claim = got["claim"]
    assert (code, claim["task_id"], claim["payload"]["apiSpec"]) == (0, "seed-task-1", SEED_TASK["apiSpec"])
    assert cli.ok("tasks", "complete", "seed-task-1", str(claim["token"]), "--result", '{"pr": 7}') == {
        "task_id": "seed-task-1", "status": "completed"}

    got = cli.all(
        done=("inbox", "backend-expert"),
        collab=("collab", "mobile-expert", "blockchain", "--context", '{"task": "Implement crypto wallet"}'),
        unknown=("delegate", "backend-expert", "ui-wizard", "--title", SEED_TASK["title"],
                 "--description", SEED_TASK["description"]),
        mcp_1=("gaps", "record", "mcp", "postgresql", "--agent", "backend-expert", "--context",
               '{"reason": "Need database access for schema design"}'),
        mcp_2=("gaps", "record", "mcp", "PostgreSQL", "--agent", "frontend-expert"),
        not_found=("tasks", "show", "no-such-task"),
        invalid=("delegate", "backend-expert", "frontend-expert", "--data", "{not json"),
        conflict=("delegate", "backend-expert", "frontend-expert", "--title", "other", "--id", "seed-task-1"),
        lease=("tasks", "complete", "seed-task-1", str(claim["token"] + 1)),
    )
    assert got["done"][0] == 0
    assert [(m["kind"], m["ref_id"]) for m in got["done"][1]] == [("task_completed", "seed-task-1")]
    code, collab = got["collab"]
    assert (code, collab["status"], collab["suggestion"], collab["candidates"]) == (
        0, "no_expert_available", "create_new_agent", [])
    code, unknown = got["unknown"]
    assert (code, unknown["status"]) == (NotFound.exit_code, "agent_not_found")
    assert unknown["fallback"][0]["agent_id"] == "frontend-expert"
    assert (got["mcp_1"][0], got["mcp_2"][0]) == (0, 0)
    assert {got["mcp_1"][1]["frequency"], got["mcp_2"][1]["frequency"]} == {1, 2}

    assert (NotFound.exit_code, InvalidInput.exit_code, Conflict.exit_code, LeaseLost.exit_code) == (3, 2, 4, 4)
    assert (got["not_found"][0], got["not_found"][1]["error"]) == (3, "not_found")
    assert "'no-such-task' does not exist" in got["not_found"][1]["message"]
    assert (got["invalid"][0], got["invalid"][1]["error"]) == (2, "invalid_input")
    assert "--data is not valid JSON" in got["invalid"][1]["message"]
    assert (got["conflict"][0], got["conflict"][1]["error"]) == (4, "conflict")
    assert (got["lease"][0], got["lease"][1]["error"]) == (4, "lease_lost")

    gaps = {(g["type"], g["name"]): g["frequency"] for g in cli.ok("gaps", "ls")}
    assert gaps == {("mcp", "postgresql"): 2, ("expertise", "blockchain"): 1, ("agent", "ui-wizard"): 1}


def test_complete_next_claims_the_following_task_through_the_cli(coordinator: Coordinator, settings: Settings):
    _register(coordinator)
    for i in (1, 2):
        coordinator.delegate("backend-expert", "frontend-expert", {"title": f"job {i}"}, id=f"job-{i}")
    cli = Cli(settings)
    first = cli.ok("tasks", "claim", "frontend-expert")
    done = cli.ok("tasks", "complete", first["task_id"], str(first["token"]), "--next", "frontend-expert")
    assert (done["status"], done["next"]["task_id"]) == ("completed", "job-2")
    last = cli.ok("tasks", "complete", "job-2", str(done["next"]["token"]), "--next", "frontend-expert")
    assert last == {"task_id": "job-2", "status": "completed", "next": None}
    code, error = cli("tasks", "complete", "job-2", str(done["next"]["token"] + 1), "--next", "frontend-expert")
    assert (code, error["error"]) == (4, "lease_lost")


def test_invalid_settings_exit_78(tmp_path: Path):
    env = child_env(COORD_STATE_DIR=str(tmp_path), COORD_LEASE_SECONDS="soon", XDG_CONFIG_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "coord.cli", "--json", "tasks", "ls"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == SettingsError.exit_code == 78
    error = json.loads(out.stdout)
    assert error["error"] == "invalid_settings"
    assert "lease_seconds='soon' (from env COORD_LEASE_SECONDS)" in error["message"]
