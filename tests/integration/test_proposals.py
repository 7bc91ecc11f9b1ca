"""Proposals from gaps: per gap type, computed confidence, policy routing, dedupe, bad catalogs and names.

Jobs are run by hand (a recording bell, then `run_job` over the outbox), so each test decides which jobs
run: an install's `execute` job is never run here, because carrying it out is the installer's work.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BOTH_ENGINES, RecordingBell, db_url_fixture, make_settings
from sqlalchemy import func, select

from coord.approvals import ApprovalDesk
from coord.catalog import load_catalog, shipped_config_dir
from coord.client import Coordinator
from coord.db.models import Approval, CapabilityGap, Install, OutboxJob, Proposal
from coord.errors import PolicyDenied
from coord.installer.plan import parse_plan
from coord.jobs import HANDLERS, JobContext
from coord.outbox import run_job
from coord.proposals import propose_for_gap

REQUESTER = "backend-expert"
db_url = db_url_fixture("sqlite")  # @BOTH_ENGINES adds PostgreSQL


def drain(c: Coordinator, *, skip: tuple[str, ...] = ("execute",)) -> list[str]:
    """Run every pending outbox job except `skip`; returns the jobs run, in order."""
    ctx, ran = JobContext(c.settings, c.db), []
    while True:
        with c.db.reader() as s:
            ids = s.scalars(select(OutboxJob.id).where(OutboxJob.status == "pending", OutboxJob.job.not_in(skip))
                            .order_by(OutboxJob.created_at, OutboxJob.id)).all()
        if not ids:
            return ran
        for outbox_id in ids:
            outcome, _ = run_job(c.db, outbox_id, HANDLERS, ctx)
            assert outcome.status in ("done", "skipped"), outcome
            ran.append(outbox_id)


def jobs(c: Coordinator, job: str, ref_id: str | None = None) -> list[OutboxJob]:
    with c.db.reader() as s:
        stmt = select(OutboxJob).where(OutboxJob.job == job)
        if ref_id:
            stmt = stmt.where(OutboxJob.ref_id == ref_id)
        return list(s.scalars(stmt))


@pytest.fixture
def make(tmp_path: Path, db_url: str) -> Iterator[Any]:
    made: list[Coordinator] = []

    def _make(**overrides: Any) -> Coordinator:
        values = {"agent_write_dir": str(tmp_path / "agents"), **overrides}
        c = Coordinator(make_settings(tmp_path, db_url, **values), bell=RecordingBell())
        if not made:
            c.register_agent(REQUESTER, "Designs APIs and database schemas", expertise=["api", "databases"])
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


@pytest.fixture
def c(make: Any) -> Coordinator:
    return make()


@BOTH_ENGINES
def test_seed_missing_postgresql_end_to_end(c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's "Handling Missing Capabilities": missing `postgresql` MCP -> ... -> execution job queued."""
    monkeypatch.delenv("POSTGRES_CONNECTION_STRING", raising=False)
    gap = c.record_missing_capability("mcp", "postgresql", REQUESTER,
                                      {"reason": "Need database access for schema design", "task": "schema"})
    assert gap.status == "recorded" and jobs(c, "propose", gap.gap_id)
    drain(c)

    proposals = c.get_proposals("postgresql")
    top = proposals[0]
    assert top.kind == "install_mcp" and top.status == "pending_approval"
    assert top.confidence > 0.8  # the seed's bar: `proposals[0].confidence > 0.8`
    assert top.confidence_basis["how"] == "alias" and top.confidence_basis["missing_secrets"] == [
        "POSTGRES_CONNECTION_STRING"]
    spec = top.details["launch_spec"]
    assert spec["command"] == "npx"
    assert "@modelcontextprotocol/server-postgres@0.6.2" in spec["args"]
    assert "${POSTGRES_CONNECTION_STRING}" in spec["args"]  # the secret stays a reference
    assert top.details["policy"]["outcome"] == "needs_approval" and top.details["policy"]["rule"] == "flag"
    plan = parse_plan({k: v for k, v in top.details["plan"].items()})  # a structured plan the installer accepts
    assert plan.installer == "npm" and plan.source == "npm:@modelcontextprotocol/server-postgres"

    desk = ApprovalDesk(c.settings, c.db, c.bell)
    pending = desk.list()
    assert [a.id for a in pending] == [top.approval_id]
    assert pending[0].safety_score < 1.0 and "allow_mcp_installs" in pending[0].reason
    assert not jobs(c, "execute")
    with pytest.raises(PolicyDenied):
        desk.approve(top.approval_id, by=REQUESTER)  # the agent that reported it is not a person
    approved = desk.approve(top.approval_id, by="alice", reason="schema work needs it")
    assert approved.status == "approved" and approved.decided_by == "alice"
    assert [j.ref_id for j in jobs(c, "execute")] == [top.id]
    assert c.get_proposals("postgresql")[0].status == "approved"
    with c.db.reader() as s:
        assert s.get(CapabilityGap, gap.gap_id).resolution_status == "in_progress"


def test_approved_install_becomes_a_pending_install_for_the_installer(c: Coordinator,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    fake = types.ModuleType("coord.installer.service")
    fake.execute_install = lambda session, install, ctx: calls.append((install.id, install.status))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "coord.installer.service", fake)
    c.record_missing_capability("tool", "ruff", REQUESTER)
    drain(c)
    top = c.get_proposals("ruff")[0]
    ApprovalDesk(c.settings, c.db, c.bell).approve(top.approval_id, by="alice")
    drain(c, skip=())
    drain(c, skip=())  # a replayed execute adds nothing
    with c.db.reader() as s:
        installs = s.scalars(select(Install)).all()
        assert len(installs) == 1
        install = installs[0]
        assert (install.kind, install.name, install.status, install.approved_by) == ("tool", "ruff", "pending", "alice")
        assert install.plan["package"] == "ruff" and install.plan["verify"] == ["ruff", "--version"]
        assert s.get(Proposal, top.id).status == "executing"
    assert calls == [(install.id, "pending")]


def test_without_the_installer_service_the_install_waits(c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("coord.execution.INSTALLER_SERVICE", "coord.installer.no_such_service_for_tests")
    c.record_missing_capability("tool", "black", REQUESTER)
    drain(c)
    ApprovalDesk(c.settings, c.db, c.bell).approve(c.get_proposals("black")[0].approval_id, by="alice")
    drain(c, skip=())
    with c.db.reader() as s:
        assert [i.status for i in s.scalars(select(Install))] == ["pending"]


@pytest.mark.parametrize(
    ("query", "tool", "how", "status", "rule"),
    [
        ("ruff", "ruff", "exact", "pending_approval", "flag"),
        ("RUFF", "ruff", "exact", "pending_approval", "flag"),
        ("rufff", "ruff", "fuzzy", "pending_approval", "flag"),
        ("tsc", "typescript", "alias", "pending_approval", "flag"),  # an executable finds its tool
        ("rg", "ripgrep", "alias", "denied", "manual"),  # system tools are never installed by coord
    ],
)
def test_tool_proposals(c: Coordinator, query: str, tool: str, how: str, status: str, rule: str) -> None:
    c.record_missing_capability("tool", query, REQUESTER)
    drain(c)
    p = next(p for p in c.get_proposals(query) if p.kind == "install_tool")
    assert (p.details["tool"], p.confidence_basis["how"], p.status, p.details["policy"]["rule"]) == (
        tool, how, status, rule)
    if rule == "manual":
        assert p.details["manual_steps"] and p.details["plan"] is None and p.approval_id is None
    else:
        assert parse_plan(p.details["plan"]).name == tool
        assert p.details["plan"]["verify"][0] in p.details["plan"]["bins"]
    exact = 1.0 if how == "exact" else None
    if exact:
        assert p.confidence == exact


def test_unknown_tool_and_server_get_searches_not_installs(c: Coordinator) -> None:
    c.record_missing_capability("tool", "zzqxw-frobnicator", REQUESTER)
    c.record_missing_capability("mcp", "postgrez-db", REQUESTER)
    c.record_missing_capability("mcp", "qqqq-nothing-like-it", REQUESTER)
    drain(c)
    tool = c.get_proposals("zzqxw-frobnicator")[0]
    assert tool.details["method"] == "search_required" and tool.status == "proposed"
    assert tool.confidence == 0.0 and tool.approval_id is None
    near = c.get_proposals("postgrez-db")[0]
    assert near.details["status"] == "unknown_server" and near.status == "proposed"
    assert "io.github.modelcontextprotocol/server-postgres" in [a["name"] for a in near.details["alternatives"]]
    assert 0 < near.confidence < 0.3
    nothing = c.get_proposals("qqqq-nothing-like-it")[0]
    assert nothing.details["alternatives"] == [] and nothing.confidence == 0.0
    assert not jobs(c, "execute") and not ApprovalDesk(c.settings, c.db, c.bell).list()


@BOTH_ENGINES
def test_repeated_and_overlapping_gaps_do_not_pile_up(c: Coordinator) -> None:
    for i in range(3):
        c.record_missing_capability("mcp", "postgresql", REQUESTER, id=f"r-{i}")
    c.record_missing_capability("mcp", "postgres", REQUESTER)  # another gap, the same server
    c.record_missing_capability("mcp", "PG", REQUESTER)
    drain(c)
    with c.db.reader() as s:
        gaps = s.scalars(select(CapabilityGap)).all()
        # every gap lists the one proposal; only the first owns it
        assert len({g.id for g in gaps}) == 3
        assert s.scalar(select(func.count()).select_from(Proposal).where(Proposal.kind == "install_mcp")) == 1
        assert s.scalar(select(func.count()).select_from(Approval)) == 1
        gap_id = next(g.id for g in gaps if g.name == "postgres")
        # re-running the job (a re-rung bell, a replayed row) stores nothing new
        with c.db.session() as w:
            assert propose_for_gap(w, c.db.backend, c.settings, gap_id, now=c.now()) == []
    assert len(jobs(c, "propose")) == 3
    for name in ("postgresql", "postgres", "pg"):
        assert [p.kind for p in c.get_proposals(name)] == ["install_mcp"]


def test_an_expired_proposal_is_proposed_afresh_but_a_rejected_one_is_not(c: Coordinator) -> None:
    from coord.approvals import expire_due

    c.record_missing_capability("tool", "mypy", REQUESTER)
    drain(c)
    first = c.get_proposals("mypy")[0]
    with c.db.session() as s:
        assert expire_due(s, first.created_at + c.settings.approval_ttl) == 1
    c.record_missing_capability("tool", "mypy_", REQUESTER)  # another gap for the same tool
    drain(c)
    statuses = sorted(p.status for p in c.get_proposals(status=None) if p.details.get("tool") == "mypy")
    assert statuses == ["expired", "pending_approval"]
    fresh = next(p for p in c.get_proposals("mypy_") if p.status == "pending_approval")
    ApprovalDesk(c.settings, c.db, c.bell).reject(fresh.approval_id, by="alice", reason="we use pyright")
    c.record_missing_capability("tool", "my-py", REQUESTER)  # a fuzzy hit on mypy: a person already said no
    drain(c)
    assert [p.status for p in c.get_proposals("my-py") if p.kind == "install_tool"] == ["rejected"]


@BOTH_ENGINES
def test_policy_routes_auto_and_denied(make: Any) -> None:
    c = make(allow_automated_installs=True, allowed_install_sources=["pypi:*"])
    c.record_missing_capability("tool", "ruff", REQUESTER)  # pypi, pinned, exact: auto
    c.record_missing_capability("tool", "prettier", REQUESTER)  # npm: outside the allowlist
    c.record_missing_capability("mcp", "postgresql", REQUESTER)  # npm: outside the allowlist
    drain(c)
    ruff = c.get_proposals("ruff")[0]
    assert ruff.status == "approved" and ruff.approval_id is None and ruff.details["policy"]["outcome"] == "auto"
    assert [j.ref_id for j in jobs(c, "execute")] == [ruff.id]
    for name in ("prettier", "postgresql"):
        p = c.get_proposals(name)[0]
        assert p.status == "denied" and p.details["policy"]["rule"] == "source", p.details["policy"]
        assert "allowed_install_sources" in p.details["policy"]["reason"]
    assert not ApprovalDesk(c.settings, c.db, c.bell).list()


def test_broken_user_catalog_hides_only_the_broken_entries(make: Any, tmp_path: Path) -> None:
    user = tmp_path / "user-catalog"
    (user / "mcp-servers").mkdir(parents=True)
    (user / "tools.toml").write_text(
        '[[tools]]\nname = "good-tool"\ninstaller = "pip"\npackage = "good-tool"\nversion = "1.2.3"\n'
        'bins = ["good-tool"]\nverify = ["good-tool", "--version"]\ndescription = "A tool that loads."\n\n'
        '[[tools]]\nname = "../evil"\ninstaller = "pip"\npackage = "evil"\nversion = "latest"\n'
        'bins = ["evil"]\nverify = ["evil"]\ndescription = "Refused."\n'
    )
    (user / "mcp-servers" / "broken.json").write_text("{ this is not json")
    (user / "mcp-servers" / "bad-entry.json").write_text(json.dumps({"name": "no-slash", "description": "x",
                                                                     "version": "1.0.0"}))
    catalog = load_catalog([shipped_config_dir(), user])
    assert {i.entry for i in catalog.errors} >= {"../evil", None, "no-slash"}
    c = make(catalog_paths=[str(user)])  # the worker's `propose` job loads the same catalogs
    for name in ("good-tool", "ruff", "evil"):
        c.record_missing_capability("tool", name, REQUESTER)
    c.record_missing_capability("mcp", "postgresql", REQUESTER)
    drain(c)
    assert c.get_proposals("good-tool")[0].details["tool"] == "good-tool"
    assert c.get_proposals("ruff")[0].details["tool"] == "ruff"
    assert c.get_proposals("evil")[0].details["method"] == "search_required"
    assert c.get_proposals("postgresql")[0].kind == "install_mcp"


def test_agent_gap_and_unsafe_agent_names(c: Coordinator, tmp_path: Path) -> None:
    c.delegate(REQUESTER, "frontend-expert", {"title": "Build the UI"})
    c.record_missing_capability("agent", "../../etc/passwd", REQUESTER)
    c.record_missing_capability("agent", "a/b", REQUESTER)
    drain(c)
    created = next(p for p in c.get_proposals("frontend-expert") if p.kind == "create_agent")
    assert created.status == "pending_approval" and created.details["agent"]["name"] == "frontend-expert"
    assert created.details["definition"].startswith("---\nname: \"frontend-expert\"")
    for name in ("../../etc/passwd", "a/b"):
        bad = c.get_proposals(name)[0]
        assert bad.status == "invalid" and bad.approval_id is None
        assert any("path separators" in e for e in bad.details["errors"]), bad.details
    assert not (tmp_path / "agents").exists() or not any((tmp_path / "agents").iterdir())
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "a\\b", "Evil", "x" * 65, "", "-lead", "a--b"])
def test_propose_new_agent_refuses_unsafe_names(c: Coordinator, tmp_path: Path, name: str) -> None:
    r = c.propose_new_agent(REQUESTER, name, "Does things", ["things"])
    assert r.status == "invalid_proposal" and r.errors and r.proposal_id is None
    with c.db.reader() as s:
        assert s.scalar(select(func.count()).select_from(Proposal)) == 0
    assert not (tmp_path / "agents").exists()


def test_propose_new_agent_statuses(c: Coordinator) -> None:
    r = c.propose_new_agent(REQUESTER, "db-helper", "", ["databases"])
    assert r.status == "invalid_proposal" and any("description" in e for e in r.errors)
    c.register_agent("ui-lead", "Leads the UI work", expertise=["ui"])
    similar = c.propose_new_agent("ui-lead", "db-helper", "Helps with databases", ["databases"])
    assert similar.status == "similar_exists" and [a.agent_id for a in similar.alternatives] == [REQUESTER]
    assert similar.suggestion == "use_existing_or_enhance"
    proposed = c.propose_new_agent("ui-lead", "wallet-expert", "Builds crypto wallets", ["blockchain", "wallets"],
                                   justification="mobile app needs a wallet", id="prop-1")
    assert proposed.status == "agent_proposed" and proposed.requires_approval and proposed.approval_id
    assert "blockchain" in proposed.definition and proposed.proposal_id == "prop-1"
    again = c.propose_new_agent("ui-lead", "wallet-expert", "Builds crypto wallets", ["blockchain", "wallets"],
                                id="prop-1")
    assert again.proposal_id == "prop-1" and again.approval_id == proposed.approval_id
    with pytest.raises(PolicyDenied):  # its author can never approve it, whatever name it uses
        ApprovalDesk(c.settings, c.db, c.bell).approve(proposed.approval_id, by="UI-Lead")


def test_workaround_when_an_agent_covers_part_of_the_need(c: Coordinator) -> None:
    c.register_agent("react-dev", "Builds React web apps", expertise=["react", "frontend"])
    c.record_missing_capability("expertise", "react native", REQUESTER)
    drain(c)
    kinds = {p.kind: p for p in c.get_proposals("react native")}
    assert set(kinds) == {"create_agent", "workaround"}
    work = kinds["workaround"]
    assert work.details["agent"] == "react-dev" and work.status == "proposed"
    assert work.confidence_basis["how"] == "partial" and work.confidence_basis["similarity"] == 0.5
    assert kinds["create_agent"].details["agent"]["name"] == "react-native-expert"


def test_auto_agent_creation_when_allowed(make: Any, tmp_path: Path) -> None:
    c = make(allow_agent_creation=True)
    r = c.request_collaboration(REQUESTER, "blockchain", {"task": "Implement crypto wallet"})
    assert r.status == "no_expert_available"
    drain(c, skip=())
    path = tmp_path / "agents" / "blockchain-expert.md"
    assert path.is_file() and 'expertise: ["blockchain"]' in path.read_text()
    created = c.get_proposals("blockchain")[0]
    assert created.status == "executed" and created.details["policy"]["outcome"] == "auto"
    again = c.request_collaboration(REQUESTER, "blockchain", {"task": "Implement crypto wallet"})
    assert [x.agent_id for x in again.candidates] == ["blockchain-expert"]


def test_agent_creation_never_clobbers_and_needs_a_folder(make: Any, tmp_path: Path) -> None:
    c = make(allow_agent_creation=True)
    (tmp_path / "agents").mkdir()
    mine = tmp_path / "agents" / "graphql-expert.md"
    mine.write_text("---\nname: graphql-expert\ndescription: A person's own file\n---\nkeep me\n")
    c.record_missing_capability("expertise", "graphql", REQUESTER)
    drain(c, skip=())
    p = c.get_proposals("graphql")[0]
    assert p.status == "failed" and "never overwrites" in p.details["execution"]["error"]
    assert mine.read_text().endswith("keep me\n")

    nowhere = make(allow_agent_creation=True, agent_write_dir=None)
    nowhere.record_missing_capability("expertise", "kotlin", REQUESTER)
    drain(nowhere, skip=())
    p = nowhere.get_proposals("kotlin")[0]
    assert p.status == "failed" and "agent_write_dir" in p.details["execution"]["error"]
