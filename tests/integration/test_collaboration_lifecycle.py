"""The collaboration lifecycle the seed's table implies: candidates accept or decline, the accepted one
is assigned, the requester is told and the request closes; nobody accepting by the deadline is reported
back as unanswered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import BOTH_ENGINES, Clock, db_url_fixture, make_settings

from coord.client import Coordinator
from coord.collaboration import expire_unanswered
from coord.db.models import CollaborationRequest, PeriodicRun
from coord.errors import Conflict, InvalidInput, NotFound, SettingsError
from coord.periodic import run_periodic

REQUESTER = "mobile-expert"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
db_url = db_url_fixture("sqlite")  # @BOTH_ENGINES adds PostgreSQL


@pytest.fixture
def c(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    clock = Clock(T0)
    extra = getattr(request, "param", {})  # indirect parametrization: settings for one test
    c = Coordinator(make_settings(tmp_path, db_url, sqlite_synchronous="NORMAL", **extra), clock=clock)
    c.register_agent(REQUESTER, "Builds mobile apps", expertise=["mobile"])
    c.register_agent("chain-a", "Blockchain and smart contracts", expertise=["blockchain"])
    c.register_agent("chain-b", "Crypto wallets on the blockchain", expertise=["blockchain", "wallets"])
    c.register_agent("outsider", "Writes documentation", expertise=["docs"])
    yield c
    c.close()


def kinds(c: Coordinator, agent: str) -> dict[str, dict]:
    return {i.kind: i.body for i in c.inbox(agent)}


def ask(c: Coordinator, **kw: object) -> str:
    r = c.request_collaboration(REQUESTER, "blockchain", {"task": "Implement crypto wallet"}, **kw)
    assert r.status == "collaboration_requested" and {x.agent_id for x in r.candidates} == {"chain-a", "chain-b"}
    assert all("collaboration_request" in kinds(c, a) for a in ("chain-a", "chain-b"))
    return r.collaboration_id


@BOTH_ENGINES
def test_accept_assigns_notifies_and_closes(c: Coordinator) -> None:
    rid = ask(c)
    assert c.get_collaboration(rid).status == "open"
    declined = c.respond_collaboration(rid, "chain-a", accept=False, note="busy this week")
    assert declined.status == "open" and declined.responses == {"chain-a": "declined"}
    accepted = c.respond_collaboration(rid, "chain-b", accept=True, note="on it")
    assert accepted.status == "assigned" and accepted.assigned == ["chain-b"] and accepted.closed_at == T0
    note = kinds(c, REQUESTER)["collaboration_accepted"]
    assert note["agent_id"] == "chain-b" and note["note"] == "on it"
    assert "collaboration_filled" in kinds(c, "chain-a")
    assert c.respond_collaboration(rid, "chain-b", accept=True).changed is False  # a replay
    with pytest.raises(Conflict, match="already declined"):
        c.respond_collaboration(rid, "chain-a", accept=True)
    with pytest.raises(InvalidInput, match="not a candidate"):
        c.respond_collaboration(rid, "outsider", accept=True)
    with pytest.raises(InvalidInput, match="only the requester"):
        c.close_collaboration(rid, "chain-b")
    closed = c.close_collaboration(rid, REQUESTER)
    assert closed.status == "closed" and "collaboration_closed" in kinds(c, "chain-b")
    with c.db.session() as s:
        assert expire_unanswered(s, T0 + timedelta(days=3)) == 0  # a closed request is never unanswered


def test_two_candidates_accepting_at_once_leave_one_assignee(c: Coordinator) -> None:
    rid = ask(c)
    results: dict[str, object] = {}

    def accept(agent: str) -> None:
        try:
            results[agent] = c.respond_collaboration(rid, agent, accept=True).status
        except Conflict as exc:
            results[agent] = exc

    threads = [threading.Thread(target=accept, args=(a,)) for a in ("chain-a", "chain-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [a for a, r in results.items() if r == "assigned"]
    assert len(winners) == 1 and c.get_collaboration(rid).assigned == winners
    loser = next(r for r in results.values() if isinstance(r, Conflict))
    assert "already assigned" in str(loser)


def test_everyone_declines_reports_unanswered(c: Coordinator) -> None:
    rid = ask(c)
    c.respond_collaboration(rid, "chain-a", accept=False)
    r = c.respond_collaboration(rid, "chain-b", accept=False, note="not my area")
    assert r.status == "unanswered"
    body = kinds(c, REQUESTER)["collaboration_unanswered"]
    assert body["declined"] == ["chain-a", "chain-b"] and body["why"] == "every candidate declined"


def test_deadline_passes_unanswered(c: Coordinator) -> None:
    rid = ask(c, deadline_seconds=600)
    with c.db.session() as s:
        assert expire_unanswered(s, T0 + timedelta(seconds=599)) == 0
    with c.db.session() as s:
        assert expire_unanswered(s, T0 + timedelta(seconds=600)) == 1
    assert c.get_collaboration(rid).status == "unanswered"
    body = kinds(c, REQUESTER)["collaboration_unanswered"]
    assert body["why"] == "nobody accepted before the deadline" and body["declined"] == []
    with pytest.raises(Conflict, match="unanswered"):
        c.respond_collaboration(rid, "chain-a", accept=True)
    with c.db.session() as s:
        assert expire_unanswered(s, T0 + timedelta(days=1)) == 0
    assert len([i for i in c.inbox(REQUESTER) if i.kind == "collaboration_unanswered"]) == 1


def test_bad_input(c: Coordinator) -> None:
    with pytest.raises(NotFound):
        c.respond_collaboration("no-such-request", "chain-a", accept=True)
    rid = ask(c)
    with pytest.raises(NotFound):
        c.respond_collaboration(rid, "ghost-agent", accept=True)  # not registered
    with pytest.raises(InvalidInput):
        c.respond_collaboration(rid, "chain-a", accept=True, note="x" * 5000)
    with pytest.raises(InvalidInput):
        c.request_collaboration(REQUESTER, "blockchain", {}, deadline_seconds=0)


def expire(c: Coordinator, at: datetime, worker: str = "w1") -> dict | None:
    """The worker's periodic path (worker/periodic.py runs exactly this for each job in coord.periodic.JOBS)."""
    return run_periodic(c.db, c.settings, "expire_collaborations", worker_id=worker, now=at)


@BOTH_ENGINES
@pytest.mark.parametrize("c", [{"collaboration_ttl": 3600}], indirect=True)
def test_periodic_job_expires_unanswered_requests(c: Coordinator) -> None:
    assert c.settings.collaboration_ttl == timedelta(hours=1)
    rid = ask(c)  # no deadline named: the setting's hour
    assert c.get_collaboration(rid).deadline == T0 + timedelta(hours=1)
    assert expire(c, T0 + timedelta(minutes=59)) == {"expired": 0}  # not yet: still open, nobody told
    assert c.get_collaboration(rid).status == "open" and "collaboration_unanswered" not in kinds(c, REQUESTER)
    assert expire(c, T0 + timedelta(minutes=59, seconds=30), worker="w2") is None  # that period already ran

    assert expire(c, T0 + timedelta(hours=1)) == {"expired": 1}
    assert c.get_collaboration(rid).status == "unanswered"
    assert kinds(c, REQUESTER)["collaboration_unanswered"]["why"] == "nobody accepted before the deadline"
    with c.db.reader() as s:
        run = s.get(PeriodicRun, "expire_collaborations")
        assert (run.runs, run.result, run.last_error) == (2, {"expired": 1}, None)
    assert expire(c, T0 + timedelta(hours=2)) == {"expired": 0}  # reported once, not again
    assert len([i for i in c.inbox(REQUESTER) if i.kind == "collaboration_unanswered"]) == 1


@pytest.mark.parametrize("c", [{"collaboration_ttl": 600}], indirect=True)
def test_periodic_job_keeps_answered_and_own_deadlines_and_ages_requests_without_one(c: Coordinator) -> None:
    accepted, longer, undated = ask(c), ask(c, deadline_seconds=7200), ask(c)
    c.respond_collaboration(accepted, "chain-a", accept=True)
    with c.db.session() as s:  # a row without a deadline (the column allows it): aged by collaboration_ttl
        s.get(CollaborationRequest, undated).deadline = None
    assert expire(c, T0 + timedelta(seconds=599)) == {"expired": 0}
    assert expire(c, T0 + timedelta(seconds=600)) == {"expired": 1}
    status = {r: c.get_collaboration(r).status for r in (accepted, longer, undated)}
    assert status == {accepted: "assigned", longer: "open", undated: "unanswered"}
    assert expire(c, T0 + timedelta(hours=2)) == {"expired": 1}  # its own, longer deadline
    assert c.get_collaboration(longer).status == "unanswered"


def test_collaboration_ttl_out_of_range_is_a_settings_error(tmp_path: Path) -> None:
    for bad in (0, 31 * 24 * 3600):
        with pytest.raises(SettingsError, match="invalid setting collaboration_ttl") as err:
            make_settings(tmp_path, collaboration_ttl=bad)
        assert err.value.exit_code == 78
