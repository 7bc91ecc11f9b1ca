"""Bad input gets a typed error a person can act on, and nothing is written (invariant 8).

Every case runs against a populated database; the row counts of every table that a write could touch
are compared before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env
from sqlalchemy import func, select

from coord.client import Coordinator
from coord.db.models import (
    Agent,
    AgentHistory,
    CapabilityGap,
    CollaborationRequest,
    GapReport,
    InboxMessage,
    OutboxJob,
    Task,
)
from coord.errors import CoordError, InvalidInput, LeaseLost, NotFound, SettingsError
from coord.settings import Settings

TABLES = (Task, InboxMessage, CapabilityGap, GapReport, OutboxJob, CollaborationRequest, Agent, AgentHistory)
GOOD = {"title": "Create API integration UI", "description": "Build React components"}


def counts(c: Coordinator) -> dict[str, int]:
    with c.db.reader() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


@pytest.fixture
def c(coordinator: Coordinator) -> Coordinator:
    coordinator.register_agent("backend-expert", "APIs and databases", expertise=["backend"])
    coordinator.register_agent("frontend-expert", "React user interfaces", expertise=["frontend", "react"])
    coordinator.delegate("backend-expert", "frontend-expert", GOOD, id="task-1")
    coordinator.record_missing_capability("mcp", "postgresql", "backend-expert", id="report-1")
    return coordinator


Case = tuple[str, Callable[[Coordinator], Any], type[CoordError], str]


def _check(c: Coordinator, cases: list[Case]) -> None:
    before = counts(c)
    for label, call, error, message in cases:
        try:
            call(c)
        except CoordError as exc:
            assert type(exc) is error, f"{label}: {type(exc).__name__}: {exc}"
            assert message in exc.message, f"{label}: message {exc.message!r} lacks {message!r}"
        else:
            pytest.fail(f"{label}: accepted")
        assert counts(c) == before, f"{label}: something was written"


def _delegate(task: Any, **kw: Any) -> Callable[[Coordinator], Any]:
    args = {"from_agent": "backend-expert", "to_agent": "frontend-expert", **kw}
    return lambda c: c.delegate(args.pop("from_agent"), args.pop("to_agent"), task, **args)


def test_bad_task_payloads(c: Coordinator, settings: Settings):
    limit = settings.max_payload_bytes
    assert limit == 65536
    _check(c, [
        ("empty", _delegate({}), InvalidInput, "task data is empty"),
        ("none", _delegate(None), InvalidInput, "must be a JSON object (a dict), not NoneType"),
        ("list", _delegate(["do", "it"]), InvalidInput, "must be a JSON object"),
        ("string", _delegate("do it"), InvalidInput, "must be a JSON object"),
        ("oversized", _delegate({"blob": "x" * limit}), InvalidInput, f"over the limit of {limit} bytes"),
        ("oversized names the setting", _delegate({"blob": "x" * limit}), InvalidInput, "max_payload_bytes"),
        ("set", _delegate({"tags": {"a", "b"}}), InvalidInput, "not JSON-serialisable"),
        ("datetime", _delegate({"due": datetime(2030, 1, 1)}), InvalidInput, "not JSON-serialisable"),
        ("nan", _delegate({"score": float("nan")}), InvalidInput, "not JSON-serialisable"),
        ("infinity", _delegate({"score": float("inf")}), InvalidInput, "not JSON-serialisable"),
        ("bytes", _delegate({"raw": b"\x00"}), InvalidInput, "not JSON-serialisable"),
        ("priority", _delegate(GOOD, priority="urgent"), InvalidInput, "low, medium, high, critical"),
        ("priority in data", _delegate({**GOOD, "priority": "ASAP"}), InvalidInput, "'ASAP' is not one of"),
        ("numeric priority", _delegate(GOOD, priority=3), InvalidInput, "priority 3 is not one of"),
        ("task type", _delegate(GOOD, task_type="chore"), InvalidInput, "task type 'chore' is not one of"),
    ])


def test_unknown_agents_and_things(c: Coordinator):
    claim = c.claim_next("frontend-expert")
    _check(c, [
        ("unknown sender", _delegate(GOOD, from_agent="ghost-agent"), NotFound, "'ghost-agent' is not registered"),
        ("unknown sender is told how", _delegate(GOOD, from_agent="ghost-agent"), NotFound, "coord agents add"),
        ("unknown claimer", lambda c: c.claim_next("ghost-agent"), NotFound, "'ghost-agent' is not registered"),
        ("unknown requester", lambda c: c.request_collaboration("ghost-agent", "react"), NotFound, "ghost-agent"),
        ("unknown reporter", lambda c: c.record_missing_capability("tool", "ruff", "ghost-agent"), NotFound,
         "reporting agent 'ghost-agent'"),
        ("get unknown agent", lambda c: c.get_agent("ghost-agent"), NotFound, "coord agents ls"),
        ("get unknown task", lambda c: c.get_task("no-such-task"), NotFound, "'no-such-task' does not exist"),
        ("complete unknown task", lambda c: c.complete("no-such-task", 1), NotFound, "does not exist"),
        ("stale token", lambda c: c.complete(claim.task_id, claim.token + 1), LeaseLost, "is stale"),
        ("bad result", lambda c: c.complete(claim.task_id, claim.token, {"at": {1, 2}}), InvalidInput,
         "result is not JSON-serialisable"),
        ("no error text", lambda c: c.fail(claim.task_id, claim.token, "  "), InvalidInput, "say why"),
        ("zero lease", lambda c: c.claim_next("frontend-expert", lease_seconds=0), InvalidInput, "lease_seconds"),
    ])
    assert c.get_task(claim.task_id).status == "claimed"


BAD_IDS = ["a/b", "../../etc/passwd", "has space", "", " ", "x" * 129, "naïve", "id\n", "tab\tid"]


def _id_cases(bad: str) -> list[Case]:
    return [
        (f"task id {bad!r}", _delegate(GOOD, id=bad), InvalidInput, "is not valid"),
        (f"target agent id {bad!r}", _delegate(GOOD, to_agent=bad), InvalidInput, "target agent id"),
        (f"request id {bad!r}", lambda c: c.request_collaboration("backend-expert", "react", id=bad), InvalidInput,
         "request id"),
        (f"report id {bad!r}", lambda c: c.record_missing_capability("tool", "ruff", "backend-expert", id=bad),
         InvalidInput, "report id"),
        (f"agent name {bad!r}", lambda c: c.register_agent(bad, "Does things"), InvalidInput, "agent name"),
    ]


def test_invalid_caller_ids(c: Coordinator):
    _check(c, [case for bad in BAD_IDS for case in _id_cases(bad)])


def test_bad_collaboration_and_gap_input(c: Coordinator, settings: Settings):
    big = {"blob": "x" * settings.max_payload_bytes}
    _check(c, [
        ("no expertise", lambda c: c.request_collaboration("backend-expert", "  "), InvalidInput,
         "say which expertise"),
        ("long expertise", lambda c: c.request_collaboration("backend-expert", "x" * 501), InvalidInput,
         "over 500 characters"),
        ("context set", lambda c: c.request_collaboration("backend-expert", "react", {"a": {1}}), InvalidInput,
         "not JSON-serialisable"),
        ("context big", lambda c: c.request_collaboration("backend-expert", "react", big), InvalidInput,
         "over the limit of 65536 bytes"),
        ("gap type", lambda c: c.record_missing_capability("plugin", "x", "backend-expert"), InvalidInput,
         "tool, mcp, agent, expertise"),
        ("gap name", lambda c: c.record_missing_capability("tool", " ", "backend-expert"), InvalidInput,
         "capability name is required"),
        ("gap name long", lambda c: c.record_missing_capability("tool", "x" * 201, "backend-expert"),
         InvalidInput, "over 200 characters"),
        ("gap name control", lambda c: c.record_missing_capability("tool", "ru\x00ff", "backend-expert"),
         InvalidInput, "control characters"),
        ("gap context nan", lambda c: c.record_missing_capability("tool", "ruff", "backend-expert",
                                                                  {"x": float("nan")}),
         InvalidInput, "not JSON-serialisable"),
        ("agent description", lambda c: c.register_agent("new-agent", "   "), InvalidInput, "needs a description"),
        ("agent name case", lambda c: c.register_agent("New_Agent", "Does things"), InvalidInput,
         "lowercase letters"),
        ("agent instructions type", lambda c: c.register_agent("new-agent", "Does things", instructions=["x"]),
         InvalidInput, "instructions must be text"),
        ("agent instructions long", lambda c: c.register_agent("new-agent", "Does things",
                                                               instructions="x" * (256 * 1024 + 1)),
         InvalidInput, "instructions over 262144 characters"),
    ])


def test_config_show_lists_where_each_value_came_from(tmp_path: Path):
    config = tmp_path / "coord.toml"
    config.write_text("approval_threshold = 0.9\n", encoding="utf-8")
    env = child_env(COORD_LEASE_SECONDS="42", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    out = subprocess.run(
        [sys.executable, "-m", "coord.cli", "--json", "--config", str(config), "--state-dir", str(tmp_path / "s"),
         "config", "show"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["lease_seconds"] == {"value": 42, "source": "env COORD_LEASE_SECONDS"}
    assert shown["approval_threshold"] == {"value": 0.9, "source": f"file {config}"}
    assert shown["state_dir"] == {"value": str(tmp_path / "s"), "source": "flag"}
    assert shown["sandbox"] == {"value": "auto", "source": "default"}

    config.write_text("approval_threshold = 'high'\n", encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "coord.cli", "--config", str(config), "config", "show"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == SettingsError.exit_code == 78
    assert f"approval_threshold='high' (from file {config})" in " ".join(bad.stderr.split())
