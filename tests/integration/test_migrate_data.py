"""`coord migrate-data`: a SQLite coordination database copied into PostgreSQL and back again.

The source is filled through the real API (agents, delegations in every state, gaps and their proposals,
collaboration requests, inbox rows, pending outbox jobs) plus a bulk of tasks that spans several batches.
Checks: every table's count and every row equal after SQLite -> PostgreSQL -> SQLite; SQL NULL and JSON
null kept apart; the target works as a coordination database afterwards (search index rebuilt, generated
keys continue after the copied ones); a non-empty target is refused unless forced; a forced rerun ends in
the same state.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_settings
from sqlalchemy import JSON, func, select

from coord.cli.main import cli
from coord.client import Coordinator
from coord.clock import utcnow
from coord.db import Database
from coord.db.models import Task
from coord.errors import Conflict, InvalidInput
from coord.migrate_data import migrate_data, tables
from coord.outbox import SilentBell

pytestmark = pytest.mark.postgres
BULK = 2_400  # with batch_size=500: several batches, a partial last one


def _fill(c: Coordinator, quiet: Coordinator) -> None:
    c.register_agent("boss-agent", "Plans the work and hands it out", expertise=["planning", "roadmaps"])
    c.register_agent("python-pro", "Writes and reviews Python services", expertise=["python", "fastapi"])
    c.register_agent("db-admin", "Tunes PostgreSQL and designs schemas", expertise=["postgresql", "sql"],
                     tools=["Read", "Bash"])
    c.register_agent("k8s-helper", "Deploys services to Kubernetes clusters", expertise=["kubernetes"])
    c.register_agent("retired-agent", "Used to do things", expertise=["legacy"])
    c.remove_agent("retired-agent")  # stays in the registry, must not come back into the search index
    for i in range(6):
        c.delegate("boss-agent", "python-pro", {"title": f"task {i}", "n": i, "nested": {"a": [1, 2]}},
                   priority=["low", "medium", "high"][i % 3], id=f"task-{i}")
    done = c.claim_next("python-pro")
    c.complete(done.task_id, done.token, {"ok": True, "lines": 12})
    failed = c.claim_next("python-pro")
    c.fail(failed.task_id, failed.token, "no access", retry=False)
    c.claim_next("python-pro")  # left claimed, under lease
    c.delegate("boss-agent", "terraform-guru", {"title": "plan infra"}, id="task-missing")  # gap + proposal job
    c.record_missing_capability("tool", "ripgrep", "python-pro", {"why": "search"}, id="gap-rg-1")
    c.record_missing_capability("tool", "ripgrep", "db-admin", None, id="gap-rg-2")
    c.request_collaboration("boss-agent", "postgresql tuning", {"deadline": "friday"}, id="collab-1")
    c.inbox("python-pro", mark_read=True)
    for i in range(3):  # committed, bell never rung: pending outbox rows must travel too
        quiet.delegate("boss-agent", "db-admin", {"title": f"quiet {i}"}, id=f"quiet-{i}")
    now = utcnow()
    rows = [
        dict(id=f"bulk-{i:05d}", from_agent="boss-agent", to_agent="k8s-helper", task_type="delegation",
             payload={"n": i}, payload_hash=f"{i:064x}", priority=i % 4, status="pending",
             created_at=now + timedelta(microseconds=i), updated_at=now, lease_token=0, attempts=0, max_attempts=3)
        for i in range(BULK)
    ]
    with c.db.session() as s:
        s.execute(Task.__table__.insert(), rows)


def _dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in primary-key order, as Python values."""
    db = Database(url)
    try:
        with db.reader() as s:
            return {
                t.name: [dict(r._mapping) for r in s.execute(select(t).order_by(*t.primary_key.columns))]
                for t in tables()
            }
    finally:
        db.dispose()


def _sql_nulls(url: str) -> dict[str, int]:
    """Per JSON column: rows holding SQL NULL (not JSON null)."""
    db = Database(url)
    try:
        with db.reader() as s:
            return {
                f"{t.name}.{c.name}": int(s.scalar(select(func.count()).select_from(t).where(c.is_(None))) or 0)
                for t in tables() for c in t.columns if isinstance(c.type, JSON)
            }
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("migrate-source")


@pytest.fixture(scope="module")
def source(source_dir: Path) -> str:
    """One filled SQLite source for the module: the tests only read it."""
    settings = make_settings(source_dir)
    c, quiet = Coordinator(settings), None
    try:
        quiet = Coordinator(settings, db=c.db, bell=SilentBell())
        _fill(c, quiet)
    finally:
        c.close()
    return settings.db_url


def test_round_trip_sqlite_postgres_sqlite(tmp_path: Path, source: str, pg_database: str) -> None:
    seen: list[tuple[str, int]] = []

    class Sink:
        def start(self, total_rows: int) -> None:
            seen.append(("start", total_rows))

        def table(self, name: str, rows: int) -> None:
            pass

        def advance(self, rows: int) -> None:
            seen.append(("rows", rows))

    there = migrate_data(source, pg_database, batch_size=500, progress=Sink())
    back_url = f"sqlite:///{tmp_path / 'back' / 'coord.db'}"
    back = migrate_data(pg_database, back_url, batch_size=500)

    original, copied, returned = _dump(source), _dump(pg_database), _dump(back_url)
    counts = {name: len(rows) for name, rows in original.items()}
    print(f"\nmigrate-data: {there.rows} rows in {there.seconds:.2f}s to PostgreSQL, {back.seconds:.2f}s back; "
          f"non-empty tables {({k: v for k, v in counts.items() if v})}")
    assert there.ok and back.ok and there.rows == back.rows == sum(counts.values())
    assert {t.table: t.target for t in there.tables} == counts
    assert counts["tasks"] == BULK + 9 and counts["outbox"] > 0 and counts["inbox"] > 0
    assert counts["proposals"] > 0 and counts["agent_history"] > 0 and counts["collaboration_requests"] == 1
    assert copied == original  # every row, every column, as Python values
    assert returned == original
    assert _sql_nulls(pg_database) == _sql_nulls(source) == _sql_nulls(back_url)
    assert seen[0] == ("start", there.rows) and sum(n for k, n in seen if k == "rows") == there.rows
    assert max(n for k, n in seen if k == "rows") == 500  # batched
    assert there.indexed_agents == 4  # the removed agent is not searchable


def test_copied_database_works(tmp_path: Path, source_dir: Path, source: str, pg_database: str) -> None:
    migrate_data(source, pg_database)
    src = Coordinator(make_settings(source_dir))
    dst = Coordinator(make_settings(tmp_path / "dst", pg_database))
    try:
        for need in ("postgresql", "python services", "kubernetes deploy", "legacy"):
            assert {x.agent_id for x in dst.find_experts(need)} == {x.agent_id for x in src.find_experts(need)}, need
        assert dst.find_experts("legacy") == []
        # Generated keys continue after the copied ones (agent_history, audit_log use sequences on PostgreSQL).
        dst.register_agent("new-agent", "Arrived after the move", expertise=["go"])
        assert dst.get_agent("new-agent").expertise
        claim = dst.claim_next("k8s-helper")
        assert claim is not None and claim.task_id == "bulk-00003"  # highest priority, oldest first
        dst.complete(claim.task_id, claim.token, {"moved": True})
        assert dst.get_task("quiet-0").status == "pending"
    finally:
        src.close()
        dst.close()


def test_non_empty_target_is_refused_unless_forced(source: str, pg_database: str) -> None:
    first = migrate_data(source, pg_database)
    with pytest.raises(Conflict, match=r"not empty.*--force"):
        migrate_data(source, pg_database)
    assert len(_dump(pg_database)["tasks"]) == next(t.target for t in first.tables if t.table == "tasks")
    again = migrate_data(source, pg_database, force=True)
    assert again.replaced and again.ok and again.rows == first.rows
    assert _dump(pg_database) == _dump(source)


def test_cli(tmp_path: Path, source: str, pg_database: str) -> None:
    runner = CliRunner()
    args = ["--json", "migrate-data", "--from", source, "--to", pg_database, "--batch-size", "700"]
    ok = runner.invoke(cli, args, env={"COORD_STATE_DIR": str(tmp_path / "cli")})
    assert ok.exit_code == 0, ok.output
    assert '"ok": true' in ok.stdout and '"indexed_agents": 4' in ok.stdout
    refused = runner.invoke(cli, args, env={"COORD_STATE_DIR": str(tmp_path / "cli")})
    assert refused.exit_code == 4 and "--force" in refused.output
    same = runner.invoke(cli, ["migrate-data", "--from", source, "--to", source])
    assert same.exit_code == 2


def test_source_must_be_a_coord_database(tmp_path: Path, pg_database: str) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    Database(empty).ping()
    with pytest.raises(InvalidInput, match="no coord schema"):
        migrate_data(empty, pg_database)
