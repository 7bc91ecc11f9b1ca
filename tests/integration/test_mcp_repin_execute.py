"""An approved `repin_mcp` proposal is carried out by the `execute` job (coord.execution ->
coord.mcpserver.pinning.execute_repin): the drifted install gets the approved hash and is `installed` again.
A re-pin that no longer applies (the pin moved on, the install is gone) fails with the reason, pins nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from sqlalchemy import select

from coord.clock import utcnow
from coord.db import open_database
from coord.db.models import Approval, AuditEvent, Install, Proposal
from coord.execution import execute
from coord.ids import new_id
from coord.jobs import HANDLERS, JobContext
from coord.outbox import add_job, run_job
from coord.states import JOB_EXECUTE

TOOLS = [{"name": "echo", "description": "Echo the text back, now louder.", "inputSchema": {}}]


@pytest.fixture
def db(tmp_path: Path, db_url: str) -> Any:
    db = open_database(make_settings(tmp_path, db_url))
    yield db
    db.dispose()


def _drifted_install(db: Any, pinned: str = "hash-approved") -> str:
    with db.session() as s:
        install = Install(id=new_id(), kind="mcp", name="pin-fixture", status="drifted", tools_hash=pinned,
                          details={"server_key": "pin-fixture"})
        s.add(install)
        return install.id


def _approved_repin(db: Any, install_id: str, *, replaces: str = "hash-approved", new: str = "hash-new") -> tuple:
    """A person approved pinning `new` in place of `replaces` (what `coord mcp verify` proposes on drift)."""
    now, proposal_id = utcnow(), new_id()
    details = {"install_id": install_id, "name": "pin-fixture", "pinned_hash": replaces, "tools_hash": new,
               "tools": TOOLS, "changed": ["echo"], "added": [], "removed": []}
    with db.session() as s:
        s.add(Proposal(id=proposal_id, kind="repin_mcp", details=details, status="approved",
                       dedupe_key=f"repin_mcp:{install_id}:{new}", created_at=now, updated_at=now))
        s.flush()
        s.add(Approval(id=new_id(), proposal_id=proposal_id, action="repin_mcp", requested_by="coordination-system",
                       status="approved", decided_by="alice", decided_at=now, expires_at=now + timedelta(hours=1)))
        return proposal_id, add_job(s, db.backend, JOB_EXECUTE, proposal_id, now=now)


def test_approved_repin_pins_the_new_tools_at_once(tmp_path: Path, db: Any) -> None:
    install_id = _drifted_install(db)
    proposal_id, job = _approved_repin(db, install_id)
    settings = make_settings(tmp_path)
    outcome, follow_ups = run_job(db, job, HANDLERS, JobContext(settings, db))
    assert outcome.status == "done" and follow_ups == [], outcome
    with db.reader() as s:
        install, proposal = s.get(Install, install_id), s.get(Proposal, proposal_id)
        assert (install.tools_hash, install.status) == ("hash-new", "installed")
        assert proposal.status == "executed"
        assert proposal.details["execution"]["result"] == {"install_id": install_id, "tools_hash": "hash-new",
                                                           "status": "installed"}
        pinned = s.scalars(select(AuditEvent).where(AuditEvent.action == "mcp.tools_pinned")).one()
        assert (pinned.actor, pinned.subject_id, pinned.details["tools"]) == ("alice", install_id, TOOLS)
    with db.session() as s:  # a replayed execute job changes nothing
        assert execute(s, db.backend, settings, proposal_id, now=utcnow()) == []
    with db.reader() as s:
        assert len(s.scalars(select(AuditEvent).where(AuditEvent.action == "mcp.tools_pinned")).all()) == 1


def test_repin_that_no_longer_applies_fails_and_pins_nothing(tmp_path: Path, db: Any) -> None:
    settings = make_settings(tmp_path)
    install_id = _drifted_install(db, pinned="hash-newer")  # pinned again since this re-pin was proposed
    stale, stale_job = _approved_repin(db, install_id, replaces="hash-approved")
    gone, gone_job = _approved_repin(db, "no-such-install")
    for job in (stale_job, gone_job):
        outcome, _ = run_job(db, job, HANDLERS, JobContext(settings, db))
        assert outcome.status == "done", outcome  # a failed proposal, not a job retried in vain
    with db.reader() as s:
        install = s.get(Install, install_id)
        assert (install.tools_hash, install.status) == ("hash-newer", "drifted")
        errors = {p: s.get(Proposal, p) for p in (stale, gone)}
        assert errors[stale].status == "failed" and "no longer pinned to the hash this re-pin replaces" in (
            errors[stale].details["execution"]["error"])
        assert errors[gone].status == "failed" and "no longer exists" in errors[gone].details["execution"]["error"]
        assert s.scalars(select(AuditEvent).where(AuditEvent.action == "mcp.tools_pinned")).all() == []
