"""Approvals: expiry on a controllable clock, who may decide, idempotency, and the notifiers."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BOTH_ENGINES, Clock, RecordingBell, db_url_fixture, make_settings
from sqlalchemy import select

from coord import notifiers
from coord.approvals import ApprovalDesk, expire_due
from coord.client import Coordinator
from coord.db.models import AuditEvent, OutboxJob, Proposal
from coord.errors import Conflict, InvalidInput, PolicyDenied
from coord.jobs import HANDLERS, JobContext
from coord.outbox import run_job

AGENT = "mobile-expert"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
db_url = db_url_fixture("sqlite")  # @BOTH_ENGINES adds PostgreSQL


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[Any]:
    made: list[Coordinator] = []

    def make(**overrides: Any) -> tuple[Coordinator, ApprovalDesk, Clock]:
        clock = Clock(T0)
        settings = make_settings(tmp_path, db_url, agent_write_dir=str(tmp_path / "agents"), **overrides)
        c = Coordinator(settings, bell=RecordingBell(), clock=clock)
        c.register_agent(AGENT, "Builds mobile apps", expertise=["mobile", "ios"])
        made.append(c)
        return c, ApprovalDesk(settings, c.db, c.bell, clock), clock

    yield make
    for c in made:
        c.close()


def propose(c: Coordinator, name: str) -> Any:
    r = c.propose_new_agent(AGENT, name, f"Expert in {name}", [name.replace("-expert", "")])
    assert r.status == "agent_proposed" and r.requires_approval, r
    return r


def outbox(c: Coordinator, job: str) -> list[OutboxJob]:
    with c.db.reader() as s:
        return list(s.scalars(select(OutboxJob).where(OutboxJob.job == job)))


@BOTH_ENGINES
def test_expiry_with_a_controllable_clock(world: Any) -> None:
    c, desk, clock = world()
    early, late, never = (propose(c, n) for n in ("alpha-expert", "beta-expert", "gamma-expert"))
    clock.at = T0 + timedelta(hours=23)
    assert desk.approve(early.approval_id, by="alice").status == "approved"
    clock.at = T0 + timedelta(hours=24)  # expires_at is exclusive: at the TTL it is too late
    with pytest.raises(Conflict, match="expired"):
        desk.approve(late.approval_id, by="alice")  # refused even before the periodic job ran
    with c.db.session() as s:
        assert expire_due(s, clock.at) == 2
    with c.db.session() as s:
        assert expire_due(s, clock.at) == 0  # nothing left; expiry never touches decided requests
    for r in (late, never):
        with pytest.raises(Conflict, match="expired"):
            desk.approve(r.approval_id, by="alice")
        assert desk.show(r.approval_id).status == "expired"
    assert {a.id: a.status for a in desk.list(None)} == {
        early.approval_id: "approved", late.approval_id: "expired", never.approval_id: "expired"}
    # expiry never approves: the only execution job is the approved one's
    assert [j.ref_id for j in outbox(c, "execute")] == [early.proposal_id]
    with c.db.reader() as s:
        assert s.get(Proposal, late.proposal_id).status == "expired"
        actors = {e.actor for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "approval.expired"))}
        assert actors == {"expiry"}


def test_who_may_decide(world: Any) -> None:
    c, desk, _ = world()
    c.register_agent("ui-lead", "Leads UI work", expertise=["ui"])
    r = propose(c, "delta-expert")
    for by, why in [(AGENT, "made this proposal"), (AGENT.upper(), "made this proposal"),
                    ("ui-lead", "registered agent"), ("coordination-system", "coord's own"),
                    ("policy", "coord's own")]:
        with pytest.raises(PolicyDenied, match=why):
            desk.approve(r.approval_id, by=by)
        with pytest.raises(PolicyDenied):
            desk.reject(r.approval_id, by=by, reason="no")
    for by in ("", "   ", "bad\nname"):
        with pytest.raises(InvalidInput):
            desk.approve(r.approval_id, by=by)
    assert desk.show(r.approval_id).status == "pending" and not outbox(c, "execute")
    # the API agents use has no way to approve
    assert not [n for n in dir(Coordinator) if "approv" in n.lower() or "reject" in n.lower()]


@BOTH_ENGINES
def test_approve_twice_is_idempotent_and_decided_requests_are_final(world: Any) -> None:
    c, desk, clock = world()
    a, b = propose(c, "eps-expert"), propose(c, "zeta-expert")
    first = desk.approve(a.approval_id, by="alice", reason="needed")
    again = desk.approve(a.approval_id, by="bob")
    assert first.changed and not again.changed and again.decided_by == "alice"
    assert len(outbox(c, "execute")) == 1
    with pytest.raises(Conflict, match="already approved by alice"):
        desk.reject(a.approval_id, by="bob", reason="too late")
    with pytest.raises(InvalidInput, match="reason"):
        desk.reject(b.approval_id, by="bob", reason=" ")
    rejected = desk.reject(b.approval_id, by="bob", reason="duplicate of eps")
    assert rejected.status == "rejected" and desk.reject(b.approval_id, by="bob", reason="x").changed is False
    with pytest.raises(Conflict, match="already rejected by bob"):
        desk.approve(b.approval_id, by="alice")
    clock.at = T0 + timedelta(days=3)
    with c.db.session() as s:
        assert expire_due(s, clock.at) == 0
    with c.db.reader() as s:
        decided = {e.action: e.actor for e in s.scalars(select(AuditEvent)) if e.action.startswith("approval.")}
    assert decided["approval.approved"] == "alice" and decided["approval.rejected"] == "bob"


def test_unknown_approval(world: Any) -> None:
    _, desk, _ = world()
    from coord.errors import NotFound

    with pytest.raises(NotFound):
        desk.approve("no-such-approval", by="alice")


# --- notifiers ---------------------------------------------------------------------------------------


class Hook(http.server.BaseHTTPRequestHandler):
    """Answers with the next status of `script` (default 200); records every body."""

    bodies: list[dict] = []
    script: list[int] = []
    delay = 0.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(json.loads(body))
        time.sleep(type(self).delay)
        code = type(self).script.pop(0) if type(self).script else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def hook() -> Iterator[tuple[str, type[Hook]]]:
    handler = type("H", (Hook,), {"bodies": [], "script": [], "delay": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-token", handler
    server.shutdown()
    server.server_close()


def run(c: Coordinator, outbox_id: str, now: datetime) -> Any:
    return run_job(c.db, outbox_id, HANDLERS, JobContext(c.settings, c.db), now=lambda: now)[0]


def test_webhook_retries_through_the_outbox(world: Any, hook: Any) -> None:
    url, server = hook
    server.script = [500]
    c, _, _ = world(notify_webhook_url=url)
    r = propose(c, "eta-expert")
    [job] = outbox(c, "notify_approval")
    assert job.ref_id == f"{r.approval_id}:webhook" and job.id in c.bell.rung
    first = run(c, job.id, T0)
    assert first.status == "retry" and "HTTP 500" in first.error and "secret-token" not in first.error
    assert run(c, job.id, T0).status == "skipped"  # not due yet: the backoff holds, nothing blocks
    assert run(c, job.id, T0 + timedelta(minutes=5)).status == "done"
    assert len(server.bodies) == 2
    body = server.bodies[-1]
    assert body["event"] == "approval.requested" and body["approval"]["id"] == r.approval_id
    assert r.approval_id in body["text"] and "coord approvals approve" in body["text"]


def test_slow_webhook_times_out_quickly(world: Any, hook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url, server = hook
    server.delay = 2.0
    monkeypatch.setattr(notifiers, "WEBHOOK_TIMEOUT", 0.3)
    c, _, _ = world(notify_webhook_url=url)
    propose(c, "theta-expert")
    [job] = outbox(c, "notify_approval")
    started = time.monotonic()
    outcome = run(c, job.id, T0)
    assert outcome.status == "retry" and time.monotonic() - started < 1.5


def test_command_notifier_gets_json_on_stdin(world: Any, tmp_path: Path) -> None:
    out = tmp_path / "notified.json"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
    c, _, _ = world(notify_command=[sys.executable, "-c", script])
    r = propose(c, "iota-expert")
    [job] = outbox(c, "notify_approval")
    assert run(c, job.id, T0).status == "done"
    assert json.loads(out.read_text())["approval"]["id"] == r.approval_id


def test_failing_command_and_decided_approvals(world: Any, hook: Any) -> None:
    url, server = hook
    c, desk, _ = world(notify_command=[sys.executable, "-c", "import sys; sys.exit(3)"], notify_webhook_url=url)
    r = propose(c, "kappa-expert")
    jobs = {j.ref_id.rsplit(":", 1)[1]: j for j in outbox(c, "notify_approval")}
    assert set(jobs) == {"webhook", "command"}
    failed = run(c, jobs["command"].id, T0)
    assert failed.status == "retry" and "exited with 3" in failed.error
    desk.approve(r.approval_id, by="alice")
    assert run(c, jobs["webhook"].id, T0).status == "done" and server.bodies == []  # nothing left to ask

