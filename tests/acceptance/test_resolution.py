"""The resolution engine end to end, as a person and agents use it: the real `coord worker` daemon in a
subprocess, driven through the CLI.

An agent asks for an expertise nobody has -> the daemon records the gap and proposes a new agent ->
an agent cannot approve it -> a person approves -> the daemon writes the agent file -> the new agent is
matched for that expertise. Actions are CLI calls; checks read the database in-process (a CLI call per
poll would cost a process start each).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env

from coord.approvals import list_approvals
from coord.client import Coordinator
from coord.db.engine import Database
from coord.db.models import Agent
from coord.outbox import SilentBell
from coord.proposals import list_proposals
from coord.settings import load_settings

REQUESTER = "mobile-expert"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return child_env(
        COORD_STATE_DIR=str(tmp_path / "state"), COORD_AGENT_DIRS=str(tmp_path / "agents"),
        COORD_SQLITE_SYNCHRONOUS="NORMAL", COORD_RECONCILE_INTERVAL_SECONDS="1", COORD_LOG_LEVEL="info",
    )


def coord(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "coord.cli", "--json", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if ok:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    settings = load_settings(overrides={"state_dir": env["COORD_STATE_DIR"]}, env={}).settings
    with Coordinator(settings, bell=SilentBell()) as c:  # set-up in-process: creates and migrates the database
        c.register_agent(REQUESTER, "Builds mobile apps", expertise=["mobile"])
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "coord.cli", "worker", "-c", "2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_expertise_gap_to_a_new_matchable_agent(env: dict[str, str], daemon: subprocess.Popen, tmp_path: Path) -> None:
    asked = json.loads(coord(env, "collab", REQUESTER, "blockchain", "--context",
                             '{"task": "Implement crypto wallet"}').stdout)
    assert asked["status"] == "no_expert_available" and asked["suggestion"] == "create_new_agent"

    db = Database(f"sqlite:///{tmp_path / 'state' / 'coord.db'}")

    def pending() -> list[Any]:
        with db.reader() as s:
            return list_approvals(s)

    [approval] = wait_for("the daemon to propose a new agent", pending)
    assert approval.action == "create_agent" and approval.details["agent"]["name"] == "blockchain-expert"
    assert approval.safety_score > 0 and "allow_agent_creation" in approval.reason

    refused = coord(env, "approvals", "approve", approval.id, "--by", REQUESTER, ok=False)
    assert refused.returncode == 5 and "agents never decide" in refused.stdout
    approved = json.loads(coord(env, "approvals", "approve", approval.id, "--by", "alice",
                                "--reason", "we need a wallet").stdout)
    assert approved["status"] == "approved" and approved["decided_by"] == "alice"

    path = tmp_path / "agents" / "blockchain-expert.md"
    wait_for("the daemon to write the agent file", path.is_file)
    assert 'expertise: ["blockchain"]' in path.read_text()

    def registered() -> bool:
        with db.reader() as s:
            return s.get(Agent, "blockchain-expert") is not None

    wait_for("the new agent to be registered", registered)
    r = json.loads(coord(env, "collab", REQUESTER, "blockchain").stdout)
    assert r["status"] == "collaboration_requested"
    assert r["candidates"][0]["agent_id"] == "blockchain-expert"
    with db.reader() as s:
        [proposal] = [p for p in list_proposals(s, name="blockchain") if p.kind == "create_agent"]
    assert proposal.status == "executed"
    db.dispose()
    assert daemon.poll() is None  # still running
