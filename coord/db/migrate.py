"""Alembic, driven from code: `coord init` and every process start upgrade to head.

Several processes may start at once (a worker and four claimers): a lock makes one of them migrate and
the others wait, instead of all of them racing to create the same tables.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x636F6F7264  # "coord"


def alembic_config(db: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["db"] = db
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config(None)).get_current_head() or ""


def current_revision(db: Any) -> str | None:
    with db.read_engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(db: Any):
    if db.dialect == "sqlite":
        path = make_url(db.url).database
        with FileLock(f"{path}.migrate.lock", timeout=120):
            yield
    else:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()


def upgrade(db: Any) -> bool:
    """Bring the schema to head; True when something was applied."""
    if current_revision(db) == head_revision():
        return False
    with _migration_lock(db):
        if current_revision(db) == head_revision():
            return False
        command.upgrade(alembic_config(db), "head")
    return True
