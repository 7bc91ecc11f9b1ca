"""The worker's commits skip the flush that clients' commits wait for (worker/runtime.py explains why that
is safe), on both engines; the clients keep theirs, and a PostgreSQL URL that sets `options` keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings
from sqlalchemy import text

from coord.db import Database
from worker.runtime import open_worker_database


def _flush_setting(db: Database) -> str:
    query = "PRAGMA synchronous" if db.dialect == "sqlite" else "SHOW synchronous_commit"
    with db.session() as s:
        return str(s.execute(text(query)).scalar())


def test_worker_commits_do_not_wait_for_the_flush_and_clients_do(tmp_path: Path, db_url: str):
    settings = make_settings(tmp_path, db_url)
    worker, client = open_worker_database(settings), Database(settings.db_url)
    try:
        if worker.dialect == "sqlite":
            assert (_flush_setting(worker), _flush_setting(client)) == ("1", "2")  # NORMAL, FULL
        else:
            assert (_flush_setting(worker), _flush_setting(client)) == ("off", "on")
    finally:
        worker.dispose()
        client.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # libpq options exist on PostgreSQL only
def test_a_url_that_sets_its_own_options_keeps_them(tmp_path: Path, db_url: str):
    url = db_url + ("&" if "?" in db_url else "?") + "options=-csynchronous_commit%3Dlocal"
    worker = open_worker_database(make_settings(tmp_path, url), migrate=False)
    try:
        assert _flush_setting(worker) == "local"
    finally:
        worker.dispose()
