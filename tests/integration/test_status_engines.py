"""`coord status` names both engines (database and queue) and whether each answers; either one unreachable
is exit 69. The unreachable Redis is an unused port, so the real server is never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import REDIS_URL, redis_skip_reason

from coord.cli.main import cli

NOBODY = "redis://127.0.0.1:1/0"  # port 1: nothing listens there


def status(tmp_path: Path, db_url: str, queue_url: str | None, *args: str) -> Result:
    env = {"COORD_STATE_DIR": str(tmp_path / "state"), "COORD_DATABASE_URL": db_url}
    if queue_url:
        env["COORD_QUEUE_URL"] = queue_url
    return CliRunner().invoke(cli, [*args, "status"], env=env)


def test_unreachable_redis_queue_is_named_and_exit_69(tmp_path: Path, db_url: str) -> None:
    result = status(tmp_path, db_url, NOBODY, "--json")
    assert result.exit_code == 69, result.output
    report = json.loads(result.stdout)
    assert report["database"]["reachable"] is True  # the database answers: only the queue is down
    queue = report["queue"]
    assert (queue["engine"], queue["url"], queue["reachable"]) == ("redis", NOBODY, False)
    assert queue["error"].startswith(f"queue {NOBODY} is not reachable")

    human = status(tmp_path, db_url, NOBODY)
    assert human.exit_code == 69, human.output
    lines = {line.split()[0]: line for line in human.output.splitlines() if line.strip()}
    engine = report["database"]["engine"]
    assert lines["database"].split()[1] == engine and "reachable" in lines["database"].split()
    assert f"queue     redis {NOBODY} UNREACHABLE: queue {NOBODY} is not reachable" in human.output


def test_sqlite_queue_is_named_and_reachable(tmp_path: Path) -> None:
    result = status(tmp_path, f"sqlite:///{tmp_path / 'state' / 'coord.db'}", None)
    assert result.exit_code == 0, result.output
    queue_file = tmp_path / "state" / "queue.db"
    assert f"queue     sqlite {queue_file} reachable" in result.output
    assert "database  sqlite sqlite:///" in result.output


def test_sqlite_queue_that_cannot_be_created_is_unreachable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the queue's folder should be")
    result = status(tmp_path, f"sqlite:///{tmp_path / 'state' / 'coord.db'}", str(blocker / "queue.db"), "--json")
    assert result.exit_code == 69, result.output
    report = json.loads(result.stdout)
    assert report["database"]["reachable"] is True
    assert report["queue"]["reachable"] is False and f"{blocker} is not a folder" in report["queue"]["error"]


@pytest.mark.redis
def test_reachable_redis_queue_is_exit_0(tmp_path: Path, db_url: str) -> None:
    if redis_skip_reason():
        pytest.skip(redis_skip_reason())
    result = status(tmp_path, db_url, REDIS_URL)
    assert result.exit_code == 0, result.output
    assert f"queue     redis {REDIS_URL} reachable" in result.output
