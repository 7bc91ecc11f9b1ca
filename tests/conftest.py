"""Shared fixtures: every database test runs on SQLite and, where reachable, on PostgreSQL.

PostgreSQL: COORD_TEST_DATABASE_URL names a server database (`.ci/run` sets it); each test gets a
fresh database of its own, created and dropped around it. Redis: COORD_TEST_REDIS_URL likewise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coord.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("COORD_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("COORD_TEST_REDIS_URL", "")
_skip_reasons: set[str] = set()


def _reachable_pg() -> str | None:
    if not PG_URL:
        return "COORD_TEST_DATABASE_URL is not set"
    try:
        eng = create_engine(PG_URL)
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
    except Exception as exc:
        return f"PostgreSQL at {make_url(PG_URL).render_as_string(hide_password=True)} unreachable: {exc}"
    return None


_PG_SKIP = _reachable_pg()


def pg_skip_reason() -> str | None:
    return _PG_SKIP


def redis_skip_reason() -> str | None:
    if not REDIS_URL:
        return "COORD_TEST_REDIS_URL is not set"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {REDIS_URL} unreachable: {exc}"
    return None


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    if _PG_SKIP:
        _skip_reasons.add(_PG_SKIP)
        pytest.skip(_PG_SKIP)
    name = f"coord_t_{os.getpid()}_{os.urandom(4).hex()}"
    # pre-ping: a serial test may restart PostgreSQL between this CREATE and the DROP after the test.
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def db_url_fixture(*engines: str) -> Callable[..., str]:
    """A `db_url` fixture that runs each test on `engines` ("sqlite", "postgres").

    A test module that assigns `db_url = db_url_fixture("sqlite")` runs on SQLite only, to keep the suite's
    time down, and marks with `@BOTH_ENGINES` the tests where the engine matters (conditional updates,
    dedupe under unique keys); the indirect parametrization replaces the fixture's own list.
    """

    @pytest.fixture(params=list(engines), name="db_url")
    def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "postgres":
            return request.getfixturevalue("pg_database")
        return f"sqlite:///{tmp_path / 'state' / 'coord.db'}"

    return db_url


db_url = db_url_fixture("sqlite", "postgres")
BOTH_ENGINES = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)


def make_settings(tmp_path: Path, db_url: str | None = None, **overrides) -> Settings:
    values = {"state_dir": str(tmp_path / "state"), "dispatch": "inline", **overrides}
    if db_url:
        values["database_url"] = db_url
    return load_settings(overrides=values, env={}).settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def coordinator(settings: Settings) -> Iterator:
    from coord.client import Coordinator

    c = Coordinator(settings)
    yield c
    c.close()


class Clock:
    """A clock the test sets by hand (`clock.at = ...`), for a Coordinator's `clock`."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class RecordingBell:
    """A bell that only records the outbox ids it is rung for: the test decides which jobs run."""

    def __init__(self) -> None:
        self.rung: list[str] = []

    def ring(self, outbox_ids: list[str]) -> None:
        self.rung.extend(outbox_ids)


def child_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the repo importable, this interpreter's venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for reason in sorted(_skip_reasons):
        terminalreporter.write_line(f"SKIPPED engine tests: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests first (marked `slow`, then the end-to-end ones in tests/acceptance): with parallel workers
    a long test that starts last becomes the suite's tail, while short ones fill the gaps at the end."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if "acceptance" in item.nodeid.split("::")[0] else 2

    items.sort(key=rank)
