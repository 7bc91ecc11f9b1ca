"""The folder watcher with real watchdog (inotify) on real temporary folders, as the daemon runs it (SQLite)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from sqlalchemy import func, select

from coord import sync
from coord.db import open_database
from coord.db.models import Agent, AgentHistory, SyncError
from worker.watcher import FolderWatcher

DEBOUNCE = 0.1


def agent_md(name: str, description: str, **fields: str) -> str:
    extra = "".join(f"{k}: {v}\n" for k, v in fields.items())
    body = "\n".join(f"- Check the {name} configuration, step {k}." for k in range(30))
    return f"---\nname: {name}\ndescription: {description}\n{extra}---\n\nYou are {name}.\n{body}\n"


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class World:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.project = tmp_path / "project" / ".claude" / "agents"
        self.user = tmp_path / "home" / ".claude" / "agents"  # created later by some tests
        self.project.mkdir(parents=True)
        self.settings = make_settings(tmp_path, None, agent_dirs=[str(self.project), str(self.user)],
                                      watch_debounce_seconds=DEBOUNCE, log_level="warning", **settings)
        self.db = open_database(self.settings)
        self.watcher = FolderWatcher(self.settings, self.db, poll_seconds=0.2)

    def start(self) -> World:
        self.watcher.start()
        assert self.watcher.ready.wait(60)
        return self

    def agent(self, name: str) -> tuple[str, str | None, str] | None:
        with self.db.reader() as s:
            a = s.get(Agent, name)
            return (a.status, Path(a.source_path).name if a.source_path else None, a.description) if a else None

    def active(self) -> int:
        with self.db.reader() as s:
            return int(s.scalar(select(func.count()).select_from(Agent).where(Agent.status == "active")) or 0)

    def errors(self) -> dict[str, str]:
        with self.db.reader() as s:
            return {Path(e.path).name: e.reason for e in s.scalars(select(SyncError))}

    def history(self, name: str) -> list[str]:
        with self.db.reader() as s:
            return list(s.scalars(select(AgentHistory.event).where(AgentHistory.agent_id == name)
                                  .order_by(AgentHistory.id)))

    def close(self) -> None:
        self.watcher.stop()
        self.db.dispose()


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path).start()
    yield w
    w.close()


def test_create_modify_rename_atomic_save_delete(world):
    p = world.project
    (p / "alpha.md").write_text(agent_md("alpha", "First version"))
    assert wait_for(lambda: world.agent("alpha") == ("active", "alpha.md", "First version"))

    (p / "alpha.md").write_text(agent_md("alpha", "Edited in place"))
    assert wait_for(lambda: world.agent("alpha") == ("active", "alpha.md", "Edited in place"))

    # An editor's atomic save: a hidden temp file renamed over the original.
    tmp = p / ".alpha.md.swp"
    tmp.write_text(agent_md("alpha", "Saved atomically"))
    os.replace(tmp, p / "alpha.md")
    assert wait_for(lambda: world.agent("alpha") == ("active", "alpha.md", "Saved atomically"))

    os.rename(p / "alpha.md", p / "renamed.md")
    assert wait_for(lambda: world.agent("alpha") == ("active", "renamed.md", "Saved atomically"))

    (p / "renamed.md").unlink()
    assert wait_for(lambda: (world.agent("alpha") or ("",))[0] == "removed")
    events = world.history("alpha")
    assert events[0] == "registered" and events[-1] == "removed" and "restored" not in events
    assert world.errors() == {}
    assert world.watcher.healthy()


def test_burst_of_500_new_files_all_arrive(world):
    for i in range(500):
        (world.project / f"burst-{i}.md").write_text(agent_md(f"burst-{i}", f"Burst agent number {i}",
                                                              tools="Read, Write, Bash"))
    assert wait_for(lambda: world.active() == 500, timeout=90) , world.active()
    assert world.errors() == {}


def test_bad_files_while_watching_and_their_healing(world):
    p = world.project
    (p / "good.md").write_text(agent_md("good", "Good definition"))
    assert wait_for(lambda: world.agent("good"))
    bad = {
        "good.md": (b"---\nname: good\ndescription: [broken\n---\n", "invalid_yaml"),
        "bin.md": (b"---\nname: bin\x00\n---\n", "binary"),
        "huge.md": (b"---\nname: huge\ndescription: x\n---\n" + b"y" * 300_000, "too_large"),
        "twin.md": (agent_md("good", "A second file named good").encode(), "duplicate_name"),
    }
    for name, (data, _) in bad.items():
        (p / name).write_bytes(data)
    want = {name: reason for name, (_, reason) in bad.items()}
    assert wait_for(lambda: world.errors() == want), world.errors()
    assert world.agent("good") == ("active", "good.md", "Good definition")  # the good entry survives

    (p / "good.md").write_text(agent_md("good", "Fixed"))
    (p / "twin.md").unlink()
    (p / "bin.md").write_text(agent_md("bin", "Text now"))
    (p / "huge.md").write_text(agent_md("huge", "Small now"))
    assert wait_for(lambda: world.errors() == {}), world.errors()
    assert world.agent("good")[2] == "Fixed" and world.agent("bin") and world.agent("huge")


def test_folder_created_after_start_then_removed_and_recreated(world):
    user = world.user
    user.mkdir(parents=True)
    (user / "helper.md").write_text(agent_md("helper", "From the user folder"))
    assert wait_for(lambda: world.agent("helper") == ("active", "helper.md", "From the user folder"))
    # Project wins over user; when the project file goes, the user one takes over again.
    (world.project / "helper.md").write_text(agent_md("helper", "Project override"))
    assert wait_for(lambda: (world.agent("helper") or ("", "", ""))[2] == "Project override")
    (world.project / "helper.md").unlink()
    assert wait_for(lambda: (world.agent("helper") or ("", "", ""))[2] == "From the user folder")

    shutil.rmtree(user)
    assert wait_for(lambda: (world.agent("helper") or ("",))[0] == "removed")
    user.mkdir()
    (user / "helper.md").write_text(agent_md("helper", "Back again"))
    assert wait_for(lambda: world.agent("helper") == ("active", "helper.md", "Back again"))
    assert world.watcher.healthy()


def test_agent_created_by_coord_reaches_the_registry_once(world):
    text = agent_md("changelog-writer", "Writes changelogs", tools="Read, Grep")
    path = sync.create_agent_file(world.settings, world.db, text)
    assert world.agent("changelog-writer") == ("active", "changelog-writer.md", "Writes changelogs")
    time.sleep(DEBOUNCE * 5)  # the watcher's events for the write have been handled by now
    with world.db.reader() as s:
        assert s.get(Agent, "changelog-writer").origin == "coord"
    assert world.history("changelog-writer") == ["registered"]  # no echo, no second event
    assert path.read_text() == text


def test_syncing_never_rewrites_user_files(world):
    p = world.project
    originals = {}
    for i in range(20):
        path = p / f"keep-{i}.md"
        path.write_text(agent_md(f"keep-{i}", f"Keep me {i}", color="green") + "<!-- a comment -->\n")
        originals[path] = path.read_bytes()
    assert wait_for(lambda: world.active() == 20)
    stamps = {path: path.stat().st_mtime_ns for path in originals}
    sync.reconcile(world.settings, world.db)
    time.sleep(DEBOUNCE * 3)
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in originals} == \
        {path: (data, stamps[path]) for path, data in originals.items()}
    assert sorted(p.iterdir()) == sorted(originals)  # no temp, lock or backup file left behind


def test_stop_flushes_events_still_in_debounce(tmp_path):
    w = World(tmp_path)
    w.watcher.debounce = w.watcher.max_delay = 30.0  # nothing would be synced before stop()
    w.start()
    try:
        (w.project / "late.md").write_text(agent_md("late", "Written just before shutdown"))
        time.sleep(0.3)  # let inotify deliver the events
        assert w.agent("late") is None
    finally:
        w.close()
    db = open_database(w.settings)
    with db.reader() as s:
        assert s.get(Agent, "late").status == "active"
    db.dispose()
