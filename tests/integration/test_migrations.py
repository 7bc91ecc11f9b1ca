"""The Alembic migrations build exactly the models' schema, on both engines, and survive racing starters."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import child_env
from sqlalchemy import inspect

from coord.db import Database
from coord.db.migrate import alembic_config, current_revision, head_revision, upgrade
from coord.db.models import Base

# Full-text search lives outside the models (FTS5 virtual table + shadow tables; a tsvector table).
SEARCH_TABLES = ("agents_fts", "agent_search")


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not (table or "").startswith(SEARCH_TABLES) and table != "alembic_version"


def schema_diffs(db: Database) -> list:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _ours})
        return compare_metadata(ctx, Base.metadata)


def _tables(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return {t for t in inspect(conn).get_table_names() if not t.startswith(SEARCH_TABLES)}


@pytest.fixture
def db(db_url: str):
    database = Database(db_url)
    yield database
    database.dispose()


def test_migrations_build_exactly_the_models(db: Database):
    assert upgrade(db) is True
    assert current_revision(db) == head_revision()
    assert schema_diffs(db) == []
    assert _tables(db) == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_is_idempotent(db: Database):
    upgrade(db)
    assert upgrade(db) is False  # already at head: nothing applied
    command.upgrade(alembic_config(db), "head")  # alembic itself agrees
    assert current_revision(db) == head_revision()
    assert schema_diffs(db) == []


def test_downgrade_to_base_and_back(db: Database):
    upgrade(db)
    with db.engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    assert any(n.startswith(SEARCH_TABLES) for n in names), "the search index is part of the schema"

    command.downgrade(alembic_config(db), "base")
    assert current_revision(db) is None
    with db.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}

    assert upgrade(db) is True
    assert schema_diffs(db) == []


CHILD = """
import sys, time
from pathlib import Path
from coord.settings import load_settings
from coord.db import open_database
from coord.db.migrate import current_revision
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.002)
db = open_database(load_settings().settings)
print(current_revision(db))
"""


def test_processes_starting_together_on_a_fresh_database_all_succeed(db_url: str, tmp_path: Path):
    starters = 3
    env = child_env(COORD_STATE_DIR=str(tmp_path / "state"), COORD_DATABASE_URL=db_url)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"ready-{n}"), str(go)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(starters)
    ]
    try:
        for n in range(starters):  # every child has imported everything and waits at the gate
            ready = tmp_path / f"ready-{n}"
            deadline = time.monotonic() + 60
            while not ready.exists() and procs[n].poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ready.exists(), procs[n].communicate()[1]
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == head_revision()
    db = Database(db_url)
    try:
        assert schema_diffs(db) == []
    finally:
        db.dispose()
