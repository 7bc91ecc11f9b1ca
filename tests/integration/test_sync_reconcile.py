"""Folder sync without the watcher: reconcile, precedence, bad files, creation, crash recovery (both engines)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO, child_env, make_settings
from sqlalchemy import func, select

from coord import agentscan, sync
from coord.agentfiles import AgentFileError, read_agent_file
from coord.client import Coordinator
from coord.db import open_database
from coord.db.models import Agent, AgentFileState, AgentHistory, SyncError
from coord.errors import Conflict

FIXTURES = REPO / "tests" / "fixtures" / "agents"
TECH = ["PostgreSQL", "Kubernetes", "Terraform", "React", "Django", "Kafka", "Rust", "GraphQL", "CI/CD", "Redis"]


def agent_md(name: str, description: str, **fields: str) -> str:
    extra = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return f"---\nname: {name}\ndescription: {description}\n{extra}---\n\nYou are {name}.\n"


def generate(folder: Path, n: int, *, seed: int, start: int = 0) -> None:
    """n agent files shaped like public collections: long descriptions, tools or not, extra fields."""
    for i in range(start, start + n):
        techs = ", ".join(TECH[(i + k * seed) % len(TECH)] for k in range(3))
        description = (f"Expert in {techs}. Designs, reviews and hardens services built on {techs}; use PROACTIVELY "
                       f"when a change touches {TECH[i % len(TECH)]} or its deployment. Agent number {i}.")
        fields = {"tools": "Read, Write, Bash"} if i % 3 else {}
        if i % 5 == 0:
            fields["color"] = "blue"
        body = "\n".join(f"- Step {k}: check the {TECH[(i + k) % len(TECH)]} configuration." for k in range(40))
        text = agent_md(f"agent-{i}", description, model="sonnet", **fields) + "\n" + body + "\n"
        (folder / f"agent-{i}.md").write_text(text, encoding="utf-8")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    project, user = tmp_path / "project" / ".claude" / "agents", tmp_path / "home" / ".claude" / "agents"
    project.mkdir(parents=True)
    user.mkdir(parents=True)
    return project, user


@pytest.fixture
def env(tmp_path: Path, db_url: str, dirs: tuple[Path, Path]):
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(d) for d in dirs], log_level="warning")
    db = open_database(settings)
    yield settings, db
    db.dispose()


def registry(db) -> dict[str, tuple[str, str | None, str | None]]:
    with db.reader() as s:
        return {a.id: (a.status, a.source_path, a.description) for a in s.scalars(select(Agent))}


def errors(db) -> dict[str, str]:
    with db.reader() as s:
        return {Path(e.path).name: e.reason for e in s.scalars(select(SyncError))}


def history(db, name: str) -> list[str]:
    with db.reader() as s:
        return list(s.scalars(select(AgentHistory.event).where(AgentHistory.agent_id == name)
                              .order_by(AgentHistory.id)))


def folder_truth(folders: list[Path]) -> dict[str, tuple[str, str]]:
    """What the registry must hold, computed from the files alone: name -> (path, content hash)."""
    out: dict[str, tuple[str, str]] = {}
    for folder in folders:
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for path in sorted(folder.glob("*.md")):
            try:
                agent = read_agent_file(path, roundtrip=False)
            except AgentFileError:
                continue
            found[agent.name].append((str(path), agent.content_hash))
        for name, files in found.items():
            if name not in out and len(files) == 1:
                out[name] = files[0]
    return out


def mirrored(db) -> dict[str, tuple[str, str]]:
    with db.reader() as s:
        return {a.id: (a.source_path, a.content_hash) for a in s.scalars(
            select(Agent).where(Agent.status == "active", Agent.origin != "api"))}


def test_reconcile_mirrors_folders_and_keeps_history(env, dirs):
    settings, db = env
    project, _ = dirs
    for f in FIXTURES.glob("*.md"):
        shutil.copy(f, project / f.name)
    generate(project, 20, seed=1)
    report = sync.reconcile(settings, db)
    assert report.events == {"registered": 26} and report.errors == 0
    assert mirrored(db) == folder_truth(list(dirs))
    reg = registry(db)
    assert reg["k8s-helper"][0] == "active" and reg["minimal-agent"][1] == str(project / "minimal-agent.md")

    (project / "minimal-agent.md").write_text(agent_md("minimal-agent", "Summarizes logs, now in French"))
    (project / "python-pro.md").unlink()
    (project / "new-one.md").write_text(agent_md("new-one", "A new agent for release notes"))
    report = sync.reconcile(settings, db)
    assert report.events == {"registered": 1, "updated": 1, "removed": 1}
    reg = registry(db)
    assert reg["minimal-agent"][2] == "Summarizes logs, now in French"
    assert reg["python-pro"][0] == "removed" and history(db, "python-pro") == ["registered", "removed"]
    assert mirrored(db) == folder_truth(list(dirs))

    # A file that comes back restores the agent, its history intact.
    shutil.copy(FIXTURES / "python-pro.md", project / "python-pro.md")
    assert sync.reconcile(settings, db).events == {"restored": 1}
    assert history(db, "python-pro") == ["registered", "removed", "restored"]


def test_project_wins_over_user_and_user_takes_over(env, dirs):
    settings, db = env
    project, user = dirs
    (user / "reviewer.md").write_text(agent_md("reviewer", "User-level reviewer"))
    (project / "reviewer.md").write_text(agent_md("reviewer", "Project reviewer"))
    sync.reconcile(settings, db)
    assert registry(db)["reviewer"] == ("active", str(project / "reviewer.md"), "Project reviewer")

    (project / "reviewer.md").unlink()
    sync.sync_paths(settings, db, [project / "reviewer.md"])
    assert registry(db)["reviewer"] == ("active", str(user / "reviewer.md"), "User-level reviewer")
    (user / "reviewer.md").unlink()
    sync.sync_paths(settings, db, [user / "reviewer.md"])
    assert registry(db)["reviewer"][0] == "removed"


def test_same_name_twice_in_one_folder_keeps_the_previous_entry(env, dirs):
    settings, db = env
    project, _ = dirs
    (project / "a.md").write_text(agent_md("twin", "The first twin"))
    sync.reconcile(settings, db)
    (project / "b.md").write_text(agent_md("twin", "An impostor"))
    sync.reconcile(settings, db)
    assert errors(db) == {"a.md": "duplicate_name", "b.md": "duplicate_name"}
    assert registry(db)["twin"] == ("active", str(project / "a.md"), "The first twin")
    # Even an edit of the registered file waits until the clash is resolved.
    (project / "a.md").write_text(agent_md("twin", "The first twin, edited"))
    sync.sync_paths(settings, db, [project / "a.md"])
    assert registry(db)["twin"][2] == "The first twin"

    (project / "b.md").write_text(agent_md("other-twin", "Renamed"))
    sync.sync_paths(settings, db, [project / "b.md"])
    assert errors(db) == {}
    assert registry(db)["twin"][2] == "The first twin, edited" and registry(db)["other-twin"][0] == "active"


BAD = {  # file name -> (bytes, reason)
    "yaml.md": (b"---\nname: broken\ndescription: [unclosed\n---\nbody\n", "invalid_yaml"),
    "noname.md": (b"---\ndescription: no name here\n---\n", "missing_name"),
    "badname.md": (b"---\nname: Not_A Valid/Name\ndescription: x\n---\n", "invalid_name"),
    "nofront.md": (b"# just markdown\n", "missing_frontmatter"),
    "binary.md": (b"---\nname: bin\x00ary\ndescription: x\n---\n", "binary"),
    "latin1.md": ("---\nname: latin\ndescription: caf\xe9\n---\n".encode("latin-1"), "not_utf8"),
    "huge.md": (b"---\nname: huge\ndescription: big\n---\n" + b"x" * 70_000, "too_large"),
    "longdesc.md": (b"---\nname: longdesc\ndescription: " + b"d" * 25_000 + b"\n---\n", "invalid_field"),
}


def test_bad_files_are_reported_never_erase_and_heal(tmp_path, db_url, dirs):
    project, _ = dirs
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(d) for d in dirs], max_agent_file_bytes=65536)
    db = open_database(settings)
    try:
        # Each bad file first held a good definition of agent "good-<stem>".
        for name in BAD:
            (project / name).write_text(agent_md(f"good-{Path(name).stem}", "Worked yesterday"))
        (project / "fine.md").write_text(agent_md("fine", "Never broken"))
        sync.reconcile(settings, db)
        before = registry(db)
        assert len(before) == len(BAD) + 1

        for name, (data, _reason) in BAD.items():
            (project / name).write_bytes(data)
        report = sync.reconcile(settings, db)
        assert errors(db) == {name: reason for name, (_, reason) in BAD.items()}
        assert report.errors == len(BAD)
        assert registry(db) == before  # nothing erased, nothing half-written

        for name in BAD:  # fixed, with a new description
            (project / name).write_text(agent_md(f"good-{Path(name).stem}", "Fixed today"))
        sync.sync_paths(settings, db, [project / n for n in BAD])
        assert errors(db) == {}
        assert {n: v[2] for n, v in registry(db).items() if n != "fine"} == {
            f"good-{Path(n).stem}": "Fixed today" for n in BAD}

        # A file that was never good: an error row and no agent; deleting it clears the error.
        (project / "junk.md").write_bytes(BAD["yaml.md"][0])
        sync.sync_paths(settings, db, [project / "junk.md"])
        assert errors(db) == {"junk.md": "invalid_yaml"} and "broken" not in registry(db)
        (project / "junk.md").unlink()
        sync.sync_paths(settings, db, [project / "junk.md"])
        assert errors(db) == {}
    finally:
        db.dispose()


def _unprivileged() -> list[str] | None:
    """argv prefix that runs a command without the power to read any file (root ignores chmod 000)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_unreadable_file_and_folder_are_reported_and_heal(tmp_path, db_url, dirs):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    project, user = dirs
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(d) for d in dirs])
    db = open_database(settings)
    try:
        locked = project / "locked.md"
        locked.write_text(agent_md("locked", "Readable at first"))
        (user / "mine.md").write_text(agent_md("mine", "In a folder that will be locked"))
        sync.reconcile(settings, db)
        locked.write_text(agent_md("locked", "Changed, then locked"))
        locked.chmod(0)
        user.chmod(0)
        argv = [*prefix, sys.executable, "-m", "coord.cli", "--json", "agents", "sync"]
        env = child_env(COORD_STATE_DIR=str(settings.state_dir), COORD_DATABASE_URL=settings.db_url,
                        COORD_AGENT_DIRS=",".join(str(d) for d in dirs))
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert errors(db) == {"locked.md": "unreadable", "agents": "folder_unreadable"}
        assert registry(db)["locked"] == ("active", str(locked), "Readable at first")
        assert registry(db)["mine"][0] == "active"  # an unlistable folder is not an empty one
        locked.chmod(0o644)
        user.chmod(0o755)
        os.utime(locked, (time.time() - 60, time.time() - 60))
        sync.reconcile(settings, db)
        assert errors(db) == {} and registry(db)["locked"][2] == "Changed, then locked"
    finally:
        db.dispose()


def test_api_agents_survive_folder_sync(env, dirs, tmp_path):
    settings, db = env
    coordinator = Coordinator(settings)
    try:
        coordinator.register_agent("api-only", "Registered by a program, no file")
        assert sync.reconcile(settings, db).events == {}
        assert registry(db)["api-only"][0] == "active"
    finally:
        coordinator.close()


def test_unchanged_files_are_neither_read_nor_rewritten(env, dirs):
    settings, db = env
    project, user = dirs
    for f in FIXTURES.glob("*.md"):
        shutil.copy(f, project / f.name)
    generate(user, 30, seed=2)
    past = time.time() - 600
    before = {}
    for path in [*project.glob("*.md"), *user.glob("*.md")]:
        os.utime(path, (past, past))
        before[path] = (path.read_bytes(), path.stat().st_mtime_ns)
    sync.reconcile(settings, db)
    second = sync.reconcile(settings, db)
    assert second.read == 0 and second.skipped == len(before) and second.events == {}
    sync.sync_paths(settings, db, list(before))
    # Syncing only reads: every user file keeps its bytes and its mtime, and no file is added.
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert sorted(project.iterdir()) + sorted(user.iterdir()) == sorted(p for p in before if p.parent == project) \
        + sorted(p for p in before if p.parent == user)


def test_touched_but_identical_file_is_hashed_not_reparsed(env, dirs):
    settings, db = env
    project, _ = dirs
    path = project / "same.md"
    path.write_text(agent_md("same", "Unchanged content"))
    sync.reconcile(settings, db)
    os.utime(path, (time.time() - 100, time.time() - 100))
    report = sync.reconcile(settings, db)
    assert report.read == 1 and report.events == {}
    assert history(db, "same") == ["registered"]


def test_folder_dropped_from_settings_removes_its_agents(env, dirs, tmp_path, db_url):
    settings, db = env
    project, user = dirs
    (user / "u.md").write_text(agent_md("user-agent", "Lives in the user folder"))
    (project / "p.md").write_text(agent_md("project-agent", "Lives in the project"))
    sync.reconcile(settings, db)
    narrowed = make_settings(tmp_path, db_url, agent_dirs=[str(project)])
    assert sync.reconcile(narrowed, db).events == {"removed": 1}
    assert registry(db)["user-agent"][0] == "removed" and registry(db)["project-agent"][0] == "active"
    with db.reader() as s:
        assert s.scalar(select(func.count()).select_from(AgentFileState)) == 1


def test_create_agent_file_registers_at_once_and_only_once(env, dirs):
    settings, db = env
    project, _ = dirs
    text = agent_md("release-notes-writer", "Writes release notes from merged pull requests", tools="Read, Grep")
    path = sync.create_agent_file(settings, db, text)
    assert path == project / "release-notes-writer.md" and path.read_text() == text
    with db.reader() as s:
        agent = s.get(Agent, "release-notes-writer")
        assert (agent.origin, agent.source_path, agent.status) == ("coord", str(path), "active")
    # The watcher's event, a reconcile and a replay of the call change nothing: no echo, no duplicate.
    sync.sync_paths(settings, db, [path])
    sync.reconcile(settings, db)
    assert sync.create_agent_file(settings, db, text) == path
    assert history(db, "release-notes-writer") == ["registered"]
    with pytest.raises(Conflict):
        sync.create_agent_file(settings, db, agent_md("release-notes-writer", "Something else"))
    assert path.read_text() == text
    # The user edits it later: it stays a coord-created agent, updated through the same path.
    path.write_text(text.replace("pull requests", "merge requests"))
    sync.sync_paths(settings, db, [path])
    with db.reader() as s:
        assert s.get(Agent, "release-notes-writer").origin == "coord"
    assert history(db, "release-notes-writer") == ["registered", "updated"]


@pytest.mark.slow
def test_sigkill_mid_sync_then_restart_agrees(tmp_path, db_url, dirs):
    """`coord agents sync` over 2,000 files is killed once some batches are committed; a rerun finishes."""
    project, user = dirs
    generate(project, 1200, seed=3)
    generate(user, 800, seed=4, start=1000)  # some names in both folders: precedence must hold after the crash
    settings = make_settings(tmp_path, db_url, agent_dirs=[str(d) for d in dirs])
    db = open_database(settings)
    try:
        env = child_env(COORD_STATE_DIR=str(settings.state_dir), COORD_DATABASE_URL=settings.db_url,
                        COORD_AGENT_DIRS=",".join(str(d) for d in dirs))
        proc = subprocess.Popen([sys.executable, "-m", "coord.cli", "--json", "agents", "sync"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        committed = 0
        while time.time() < deadline and proc.poll() is None:
            with db.reader() as s:
                committed = s.scalar(select(func.count()).select_from(AgentFileState)) or 0
            if committed:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert 0 < committed < 2000, f"the kill should land mid-sync ({committed} file rows committed)"
        with db.reader() as s:
            files_rows = s.scalar(select(func.count()).select_from(AgentFileState))
        assert files_rows < 2000
        # Whatever was committed is consistent batch by batch; the restart completes the rest.
        sync.reconcile(settings, db)
        assert mirrored(db) == folder_truth(list(dirs))
        assert errors(db) == {}
    finally:
        db.dispose()


def test_parser_processes_give_the_same_scans_and_fall_back_when_they_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(agentscan, "POOL_MIN_FILES", 10)
    monkeypatch.setattr(agentscan, "POOL_CHUNK", 7)
    folder = tmp_path / "many"
    folder.mkdir()
    generate(folder, 60, seed=5)
    (folder / "bad.md").write_bytes(b"---\nname: [x\n---\n")
    for path in folder.iterdir():  # old files: their stat no longer depends on when they are read
        os.utime(path, (time.time() - 60, time.time() - 60))
    jobs = [(str(p), str(folder), None) for p in sorted(folder.glob("*.md"))]
    inline = list(agentscan.read_all(jobs, 65536, workers=1))
    assert list(agentscan.read_all(jobs, 65536, workers=2)) == inline
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    assert list(agentscan.read_all(jobs, 65536, workers=2)) == inline
    assert sum(1 for scan in inline if scan.error) == 1


def test_cli_sync_errors_and_status(tmp_path, db_url, dirs):
    from click.testing import CliRunner

    from coord.cli.main import cli

    project, user = dirs
    (project / "ok.md").write_text(agent_md("ok-agent", "Fine"))
    (user / "broken.md").write_text("---\nname: broken\ndescription: [oops\n---\n")
    env = {"COORD_STATE_DIR": str(tmp_path / "cli"), "COORD_DATABASE_URL": db_url,
           "COORD_AGENT_DIRS": f"{project},{user}"}
    runner = CliRunner()
    synced = runner.invoke(cli, ["agents", "sync"], env=env)
    assert synced.exit_code == 0, synced.output
    assert "2 agent files in 2 folders: 1 registered" in synced.output and "1 files have problems" in synced.output
    listed = runner.invoke(cli, ["--json", "agents", "errors"], env=env)
    assert listed.exit_code == 0 and '"reason": "invalid_yaml"' in listed.output and "broken.md" in listed.output
    status = runner.invoke(cli, ["--json", "status"], env=env)
    assert '"sync_errors": 1' in status.output and '"files": 2' in status.output
    (user / "broken.md").write_text(agent_md("broken", "Repaired"))
    again = runner.invoke(cli, ["--json", "agents", "sync"], env=env)
    assert '"registered": 1' in again.output and '"errors": 0' in again.output
    assert "no problems" in runner.invoke(cli, ["agents", "errors"], env=env).output
    empty = runner.invoke(cli, ["agents", "sync"], env={**env, "COORD_AGENT_DIRS": ""})
    assert empty.exit_code == 78 and "no agent folders configured" in empty.output


def test_cli_errors_lists_files_synced_with_a_warning(tmp_path, dirs):
    import json

    from click.testing import CliRunner

    from coord.cli.main import cli

    project, _user = dirs
    # Not valid YAML (a colon inside a plain value), read leniently as Claude Code does: registered, warned.
    (project / "loose.md").write_text("---\nname: loose-agent\ndescription: Triggers on: deploys\n---\nBody\n")
    env = {"COORD_STATE_DIR": str(tmp_path / "cli"), "COORD_AGENT_DIRS": str(project)}
    runner = CliRunner()
    assert runner.invoke(cli, ["agents", "sync"], env=env).exit_code == 0
    assert runner.invoke(cli, ["agents", "show", "loose-agent"], env=env).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["--json", "agents", "errors"], env=env).output)
    [row] = listed
    assert row["reason"] == "warning: lenient_frontmatter" and row["path"].endswith("loose.md")
    assert "not valid YAML" in row["message"] and not row["message"].startswith(str(project))
    (project / "loose.md").write_text(agent_md("loose-agent", "Triggers on deploys"))
    assert runner.invoke(cli, ["agents", "sync"], env=env).exit_code == 0
    assert "no problems" in runner.invoke(cli, ["agents", "errors"], env=env).output


def test_sync_parse_matches_the_round_trip_parse_and_cannot_be_written_back(tmp_path):
    from coord.agentfiles import parse_agent_text, render_agent
    from coord.errors import InvalidInput

    generate(tmp_path, 30, seed=6)
    for path in [*FIXTURES.glob("*.md"), *tmp_path.glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        full, fast = parse_agent_text(text, path), parse_agent_text(text, path, roundtrip=False)
        fields = ("name", "description", "tools", "model", "mcp_servers", "expertise", "expertise_declared",
                  "color", "extra", "body", "content_hash")
        assert {f: getattr(fast, f) for f in fields} == {f: getattr(full, f) for f in fields}, path.name
        with pytest.raises(InvalidInput):
            render_agent(fast)  # would re-create the file and lose its layout (invariant 5)
