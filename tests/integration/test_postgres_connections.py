"""Connection handling fit for a daemon on PostgreSQL (coord/db/engine.py).

- unreachable at start: Coordinator -> Unavailable naming the URL (password hidden); `coord status` says
  which engine and that it is unreachable, exit 69; a malformed URL is a settings error (exit 78);
- pool sizes come from the settings; connections carry application_name=coord;
- connections killed by the server (what a restart does to a client) are replaced without an error;
- a transaction whose connection cannot be had is retried once, after a pause; nothing else is retried:
  a connection lost inside a transaction raises Unavailable and the unit does not run again.

The real `pg_ctlcluster restart` under running daemons is tests/acceptance/test_scaleout.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from conftest import PG_URL, make_settings, pg_skip_reason
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from coord.cli.main import cli
from coord.client import Coordinator
from coord.db import engine as engine_mod
from coord.db import open_database
from coord.db.models import AuditEvent
from coord.errors import SettingsError, Unavailable

SECRET = "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_backends(url: str) -> int:
    """Terminate every server connection to the test's own database (nobody else uses it)."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            return len(c.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
            ), {"d": name}).all())
    finally:
        admin.dispose()


def test_unreachable_at_start_names_the_url_without_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://coord:{SECRET}@127.0.0.1:{_free_port()}/coord"
    with pytest.raises(Unavailable) as err:
        Coordinator(make_settings(tmp_path, url))
    assert "127.0.0.1" in err.value.message and "coord:***@" in err.value.message
    assert SECRET not in err.value.message and err.value.exit_code == 69


def test_status_says_engine_and_unreachable_exit_69(tmp_path: Path) -> None:
    env = {"COORD_STATE_DIR": str(tmp_path),
           "COORD_DATABASE_URL": f"postgresql+psycopg://coord:{SECRET}@127.0.0.1:{_free_port()}/coord",
           "COORD_QUEUE_URL": f"redis://:{SECRET}@127.0.0.1:{_free_port()}/13"}
    result = CliRunner().invoke(cli, ["--json", "status"], env=env)
    assert result.exit_code == 69, result.output
    report = json.loads(result.stdout)
    assert report["database"]["engine"] == "postgresql" and report["database"]["reachable"] is False
    assert "not reachable" in report["database"]["error"]
    assert report["queue"]["engine"] == "redis" and report["queue"]["reachable"] is False
    assert SECRET not in result.output
    human = CliRunner().invoke(cli, ["status"], env=env)
    assert human.exit_code == 69 and "UNREACHABLE" in human.output and SECRET not in human.output


def test_malformed_or_unsupported_url_is_a_settings_error(tmp_path: Path) -> None:
    for url in (f"mysql://root:{SECRET}@db/coord", "postgresql+nosuchdriver://db/coord"):
        with pytest.raises(SettingsError) as err:
            Coordinator(make_settings(tmp_path, url))
        assert SECRET not in err.value.message and err.value.exit_code == 78


@pytest.mark.postgres
def test_status_reports_server_and_pool(tmp_path: Path, pg_database: str) -> None:
    Coordinator(make_settings(tmp_path, pg_database)).close()  # creates the schema
    env = {"COORD_STATE_DIR": str(tmp_path), "COORD_DATABASE_URL": pg_database, "COORD_DB_POOL_SIZE": "7"}
    result = CliRunner().invoke(cli, ["--json", "status"], env=env)
    assert result.exit_code == 0, result.output
    db = json.loads(result.stdout)["database"]
    assert db["engine"] == "postgresql" and db["reachable"] is True and db["schema"] == db["schema_head"]
    assert db["server"]["max_connections"] > 0 and db["server"]["coord_connections"] >= 1
    assert db["pool"] == {"size": 7, "max_overflow": 10}


@pytest.mark.postgres
def test_pool_sizes_from_settings(tmp_path: Path, pg_database: str) -> None:
    db = open_database(make_settings(tmp_path, pg_database, db_pool_size=3, db_max_overflow=4))
    try:
        assert db.engine.pool.size() == 3 and db.engine.pool._max_overflow == 4
        with db.reader() as s:
            assert s.scalar(text("SELECT current_setting('application_name')")) == "coord"
    finally:
        db.dispose()


@pytest.mark.postgres
def test_killed_connections_are_replaced_without_an_error(tmp_path: Path, pg_database: str) -> None:
    c = Coordinator(make_settings(tmp_path, pg_database))
    try:
        c.register_agent("boss-agent", "Plans the work", expertise=["planning"])
        c.register_agent("worker-agent", "Does the work", expertise=["work"])
        for round_ in range(3):
            c.delegate("boss-agent", "worker-agent", {"title": f"before {round_}"}, id=f"t{round_}")
            assert _kill_backends(pg_database) >= 1
            claim = c.claim_next("worker-agent")  # the pooled connection is dead: pre-ping replaces it
            c.complete(claim.task_id, claim.token, {"round": round_})
        assert [t.status for t in c.tasks()] == ["completed"] * 3
    finally:
        c.close()


@pytest.mark.postgres
def test_connection_lost_inside_a_transaction_is_unavailable_and_not_rerun(tmp_path: Path, pg_database: str) -> None:
    db = open_database(make_settings(tmp_path, pg_database))
    runs = 0
    try:
        with pytest.raises(Unavailable, match=r"lost the connection.*same id is safe"), db.session() as s:
            runs += 1
            s.add(AuditEvent(actor="test", action="probe", subject_type="test", subject_id="x", details={}))
            s.flush()
            _kill_backends(pg_database)
            s.execute(text("SELECT 1"))
        assert runs == 1
        with db.session() as s:  # the next transaction gets a fresh connection
            assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0  # the lost one was rolled back
    finally:
        db.dispose()


@pytest.mark.postgres
def test_start_of_a_transaction_is_retried_once(tmp_path: Path, pg_database: str, monkeypatch) -> None:
    monkeypatch.setattr(engine_mod, "RECONNECT_PAUSE_S", 0.05)
    db = open_database(make_settings(tmp_path, pg_database))
    refusals = {"left": 0, "tried": 0}

    @event.listens_for(db.engine, "do_connect")
    def _refuse(*_args: object) -> None:
        refusals["tried"] += 1
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise psycopg.OperationalError("connection refused (simulated restart)")

    try:
        db.engine.dispose()  # no pooled connection: the next transaction must connect
        refusals.update(left=1, tried=0)
        with db.session() as s:
            assert s.scalar(text("SELECT 1")) == 1
        assert refusals["tried"] == 2  # refused once, connected on the retry

        db.engine.dispose()
        refusals.update(left=5, tried=0)
        with pytest.raises(Unavailable, match="not reachable"), db.session():
            pass
        assert refusals["tried"] == 2  # one retry, never a loop
    finally:
        db.dispose()


# --- the test fixtures' own admin engine (tests/conftest.py): serial tests restart the server mid-run ----


def _terminate(where: str, **params: object) -> int:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            return len(c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where} "
                                      "AND pid <> pg_backend_pid()"), params).all())
    finally:
        admin.dispose()


def _exists(name: str) -> bool:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            return c.scalar(text("SELECT count(*) FROM pg_database WHERE datname = :d"), {"d": name}) == 1
    finally:
        admin.dispose()


@pytest.fixture
def dropped_after() -> Iterator[dict[str, str]]:
    """Requested before pg_database, so torn down after it: checks that fixture really dropped its database."""
    seen: dict[str, str] = {}
    yield seen
    assert seen and not _exists(seen["name"]), f"pg_database left {seen} behind"


@pytest.mark.postgres
def test_fixture_drops_its_database_after_its_admin_connection_was_killed(
        dropped_after: dict[str, str], pg_database: str) -> None:
    name = make_url(pg_database).database
    dropped_after["name"] = name
    assert _exists(name)
    # The fixture's pooled admin connection (idle, its last statement this CREATE; nobody else's is), killed
    # as a server restart would: its teardown must still drop the database (pool_pre_ping reconnects).
    assert _terminate("state = 'idle' AND query = :q", q=f'CREATE DATABASE "{name}"') == 1


@pytest.mark.postgres
def test_a_killed_pooled_connection_fails_the_next_use_without_pre_ping() -> None:
    """Why the fixture pings: without it the first statement after a restart goes to a dead connection."""
    if pg_skip_reason():
        pytest.skip(pg_skip_reason())
    for pre_ping in (False, True):
        engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=pre_ping)
        try:
            with engine.connect() as c:
                pid = c.scalar(text("SELECT pg_backend_pid()"))
            assert _terminate("pid = :p", p=pid) == 1
            if pre_ping:
                with engine.connect() as c:
                    assert c.scalar(text("SELECT 1")) == 1
            else:
                with pytest.raises(OperationalError), engine.connect() as c:
                    c.execute(text("SELECT 1"))
        finally:
            engine.dispose()
