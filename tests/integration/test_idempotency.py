"""Ids come from the caller (invariant 3): replaying a call with the same id changes nothing.

A replay with the same id and different content is a Conflict, never a silent second meaning. The last
test replays every write API from several processes at once (a client retrying while its first call is
still in flight).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from coord.client import Coordinator
from coord.db.models import (
    CapabilityGap,
    CollaborationRequest,
    GapReport,
    InboxMessage,
    OutboxJob,
    Task,
)
from coord.errors import Conflict
from coord.settings import Settings, load_settings
from coord.states import JOB_DISPATCH, JOB_PROPOSE

TASK = {"title": "Create API integration UI", "description": "Build React components", "priority": "high"}


def _count(c: Coordinator, model: Any, *where: Any) -> int:
    with c.db.reader() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _snapshot(c: Coordinator) -> tuple[int, ...]:
    return tuple(_count(c, m) for m in (Task, InboxMessage, OutboxJob, CapabilityGap, GapReport, CollaborationRequest))


def _agents(c: Coordinator) -> None:
    c.register_agent("backend-expert", "APIs and databases", expertise=["backend"])
    c.register_agent("frontend-expert", "React user interfaces", expertise=["frontend", "react"])
    c.register_agent("ui-designer", "Designs React screens", expertise=["design", "react"])


@pytest.fixture
def c(settings: Settings) -> Iterator[Coordinator]:
    # Ranked by words alone: these tests are about ids, and must not move when semantic ranking does.
    coordinator = Coordinator(settings.model_copy(update={"matching": "lexical"}))
    _agents(coordinator)
    yield coordinator
    coordinator.close()


def test_delegation_replay_makes_one_task_one_notification_one_job(c: Coordinator):
    first = c.delegate("backend-expert", "frontend-expert", TASK, id="deleg-1")
    again = c.delegate("backend-expert", "frontend-expert", dict(TASK), id="deleg-1")
    assert (first.status, first.replayed) == ("delegated", False)
    assert (again.status, again.coordination_id, again.replayed) == ("delegated", "deleg-1", True)
    assert _count(c, Task) == 1
    assert _count(c, InboxMessage, InboxMessage.ref_id == "deleg-1") == 1
    assert _count(c, OutboxJob, OutboxJob.job == JOB_DISPATCH, OutboxJob.ref_id == "deleg-1") == 1
    assert [m.kind for m in c.inbox("frontend-expert")] == ["new_coordination_task"]


def test_delegation_id_reused_for_something_else_is_a_conflict(c: Coordinator):
    c.delegate("backend-expert", "frontend-expert", TASK, id="deleg-1")
    before = _snapshot(c)
    for other in (
        lambda: c.delegate("backend-expert", "frontend-expert", {**TASK, "title": "Something else"}, id="deleg-1"),
        lambda: c.delegate("backend-expert", "ui-designer", TASK, id="deleg-1"),
        lambda: c.delegate("frontend-expert", "backend-expert", TASK, id="deleg-1"),
    ):
        with pytest.raises(Conflict, match="'deleg-1' was already used for a different delegation; use a new id"):
            other()
    assert _snapshot(c) == before
    assert c.get_task("deleg-1").payload["title"] == TASK["title"]


def test_delegation_to_unknown_agent_replay_records_the_gap_once(c: Coordinator):
    first = c.delegate("backend-expert", "mobile-wizard", TASK, id="deleg-x")
    again = c.delegate("backend-expert", "mobile-wizard", TASK, id="deleg-x")
    assert (first.status, again.status, again.gap_id, again.replayed) == (
        "agent_not_found", "agent_not_found", first.gap_id, True)
    assert [(g.capability_type, g.name, g.frequency) for g in c.gaps()] == [("agent", "mobile-wizard", 1)]
    assert _count(c, OutboxJob, OutboxJob.job == JOB_PROPOSE) == 1
    assert _count(c, Task) == 0


def test_complete_replay_by_the_holder_is_accepted_once(c: Coordinator):
    c.delegate("backend-expert", "frontend-expert", TASK, id="deleg-1")
    claim = c.claim_next("frontend-expert")
    c.complete(claim.task_id, claim.token, {"pr": 12})
    c.complete(claim.task_id, claim.token, {"pr": 12})
    assert c.get_task("deleg-1").status == "completed"
    assert _count(c, InboxMessage, InboxMessage.kind == "task_completed") == 1


def test_collaboration_replay(c: Coordinator):
    first = c.request_collaboration("backend-expert", "react", {"task": "screens"}, id="collab-1")
    again = c.request_collaboration("backend-expert", "react", {"task": "screens"}, id="collab-1")
    assert first.status == "collaboration_requested" and not first.replayed
    assert again.replayed and [x.agent_id for x in again.candidates] == [x.agent_id for x in first.candidates]
    assert {x.agent_id for x in first.candidates} == {"frontend-expert", "ui-designer"}
    assert _count(c, CollaborationRequest) == 1
    assert _count(c, InboxMessage, InboxMessage.kind == "collaboration_request") == 2
    before = _snapshot(c)
    with pytest.raises(Conflict, match="'collab-1' was already used"):
        c.request_collaboration("backend-expert", "design", id="collab-1")
    assert _snapshot(c) == before


def test_no_expert_replay_counts_the_gap_once(c: Coordinator):
    first = c.request_collaboration("backend-expert", "blockchain", id="collab-2")
    again = c.request_collaboration("backend-expert", "blockchain", id="collab-2")
    assert (first.status, again.status, again.gap_id) == ("no_expert_available", "no_expert_available", first.gap_id)
    assert [(g.capability_type, g.name, g.frequency) for g in c.gaps()] == [("expertise", "blockchain", 1)]


def test_gap_report_replay_and_reuse(c: Coordinator):
    first = c.record_missing_capability("mcp", "postgresql", "backend-expert", {"reason": "schema"}, id="rep-1")
    again = c.record_missing_capability("mcp", "PostgreSQL", "backend-expert", {"reason": "schema"}, id="rep-1")
    assert (again.status, again.gap_id, again.frequency) == ("replayed", first.gap_id, 1)
    before = _snapshot(c)
    with pytest.raises(Conflict, match="'rep-1' was already used for mcp 'postgresql'"):
        c.record_missing_capability("tool", "ruff", "backend-expert", id="rep-1")
    assert _snapshot(c) == before


# --- the same ids from several processes at once -----------------------------------------------------------

N_PROCS = 4
N_IDS = 15


def _replayer(values: dict[str, Any]) -> int:
    from coord.logs import configure_logging

    configure_logging("warning")
    c = Coordinator(load_settings(overrides=values, env={}).settings)
    try:
        for i in range(N_IDS):
            assert c.delegate("backend-expert", "frontend-expert", {"title": f"job {i}"}, id=f"d{i}").status == (
                "delegated")
            assert c.delegate("backend-expert", "no-such-agent", {"title": f"job {i}"}, id=f"u{i}").status == (
                "agent_not_found")
            c.request_collaboration("backend-expert", "react", {"n": i}, id=f"c{i}")
            c.record_missing_capability("tool", f"tool-{i}", "backend-expert", id=f"g{i}")
    finally:
        c.close()
    return N_IDS


@pytest.mark.slow
def test_concurrent_replays_change_nothing(c: Coordinator, settings: Settings):
    values = {"state_dir": str(settings.state_dir), "database_url": settings.db_url, "dispatch": "inline",
              "matching": "lexical"}
    with multiprocessing.get_context("spawn").Pool(N_PROCS) as pool:
        assert pool.map(_replayer, [values] * N_PROCS) == [N_IDS] * N_PROCS

    assert _count(c, Task) == N_IDS
    assert _count(c, OutboxJob, OutboxJob.job == JOB_DISPATCH) == N_IDS
    assert _count(c, InboxMessage, InboxMessage.kind == "new_coordination_task") == N_IDS
    assert _count(c, CollaborationRequest) == N_IDS
    assert _count(c, InboxMessage, InboxMessage.kind == "collaboration_request") == 2 * N_IDS
    gaps = {(g.capability_type, g.name): g.frequency for g in c.gaps()}
    assert gaps == {("agent", "no-such-agent"): N_IDS, **{("tool", f"tool-{i}"): 1 for i in range(N_IDS)}}
    assert _count(c, GapReport) == 2 * N_IDS
    assert _count(c, OutboxJob, OutboxJob.job == JOB_PROPOSE) == N_IDS + 1
