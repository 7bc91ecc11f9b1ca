"""MCP client config writes: concurrent writers lose nothing, readers never see a torn file, a corrupt
file is never overwritten, and every change can be rolled back."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from coord.errors import Conflict, FileFormatError, InvalidInput
from coord.installer.mcpconfig import add_server, proposed_path, remove_server, rollback

ENTRY = {"command": "/opt/tools/bin/server", "args": ["--stdio"], "env": {"API_KEY": "${API_KEY}"}}


def _writer(path: str, prefix: str, count: int) -> None:
    for i in range(count):
        add_server(Path(path), f"{prefix}-{i}", {"command": f"/tools/bin/{prefix}", "args": [str(i)]})


def _poller(path: str, stop, results) -> None:
    reads, bad = 0, []
    while not stop.is_set():
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        reads += 1
        try:
            json.loads(data)
        except ValueError as exc:
            bad.append(f"{exc}: {data[:80]!r}")
        time.sleep(0.001)  # still hundreds of reads per second, but leaves a core for the writers
    results.put((reads, bad[:5]))


@pytest.mark.timeout(120)
def test_two_processes_add_200_servers_and_the_file_always_parses(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    config.write_text(json.dumps({"projectSettings": {"keep": True, "order": [3, 1, 2]}, "mcpServers": {}},
                                 indent=2))
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    poller = ctx.Process(target=_poller, args=(str(config), stop, results))
    poller.start()
    writers = [ctx.Process(target=_writer, args=(str(config), name, 100)) for name in ("alpha", "beta")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(90)
    stop.set()
    reads, bad = results.get(timeout=30)
    poller.join(10)
    assert [w.exitcode for w in writers] == [0, 0]
    assert bad == [], bad
    assert reads > 10  # the poller really raced the writers
    doc = json.loads(config.read_bytes())
    assert len(doc["mcpServers"]) == 200
    assert {f"{p}-{i}" for p in ("alpha", "beta") for i in range(100)} == set(doc["mcpServers"])
    assert doc["projectSettings"] == {"keep": True, "order": [3, 1, 2]}
    assert list(doc) == ["projectSettings", "mcpServers"]  # key order kept


def test_corrupt_config_is_left_byte_identical_and_a_proposal_is_written(tmp_path: Path) -> None:
    config = tmp_path / "claude_desktop_config.json"
    corrupt = b'{"mcpServers": {"a": {"command": "x",}}, // user was editing\n'
    config.write_bytes(corrupt)
    with pytest.raises(FileFormatError) as err:
        add_server(config, "hello", ENTRY, secret_vars=["API_KEY"])
    assert str(config) in err.value.message and "line 1 column" in err.value.message
    assert config.read_bytes() == corrupt
    proposed = proposed_path(config)
    assert err.value.details["proposed"] == str(proposed)
    assert json.loads(proposed.read_bytes()) == {"mcpServers": {"hello": ENTRY}}
    assert not list(tmp_path.glob("*.bak"))


def test_duplicate_keys_count_as_corrupt(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    config.write_bytes(b'{"mcpServers": {}, "mcpServers": {"x": {"command": "y"}}}')
    with pytest.raises(FileFormatError, match="duplicate"):
        add_server(config, "hello", ENTRY)


def test_add_keeps_everything_else_and_rolls_back_exactly(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    original = (b'{\n    "z-first": 1,\n    "mcpServers": {\n        "other": {"command": "o"}\n    },\n'
                b'    "a": null\n}')
    config.write_bytes(original)
    change = add_server(config, "hello", ENTRY)
    doc = json.loads(config.read_bytes())
    assert list(doc) == ["z-first", "mcpServers", "a"] and list(doc["mcpServers"]) == ["other", "hello"]
    assert b'\n    "z-first"' in config.read_bytes()  # indentation kept
    assert change.action == "added" and change.previous is None
    assert change.backup and change.backup.read_bytes() == original
    assert add_server(config, "hello", ENTRY).action == "unchanged"  # idempotent replay
    rollback(change)
    assert config.read_bytes() == original


def test_rollback_of_a_created_file_removes_it(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    change = add_server(config, "hello", ENTRY)
    assert change.created and json.loads(config.read_text()) == {"mcpServers": {"hello": ENTRY}}
    rollback(change)
    assert not config.exists()


def test_rollback_after_someone_else_edited_only_undoes_our_entry(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    config.write_text(json.dumps({"mcpServers": {"hello": {"command": "old"}}}))
    with pytest.raises(Conflict):
        add_server(config, "hello", ENTRY)
    change = add_server(config, "hello", ENTRY, replace=True)
    assert change.action == "replaced" and change.previous == {"command": "old"}
    doc = json.loads(config.read_text())
    doc["mcpServers"]["theirs"] = {"command": "desktop-added"}  # Claude Desktop rewrote the file
    config.write_text(json.dumps(doc))
    rollback(change)
    assert json.loads(config.read_text())["mcpServers"] == {"hello": {"command": "old"},
                                                           "theirs": {"command": "desktop-added"}}
    assert remove_server(config, "theirs").action == "removed"
    assert remove_server(config, "absent").action == "unchanged"


@pytest.mark.parametrize(("name", "entry", "secret", "reason"), [
    ("hello", {**ENTRY, "env": {"API_KEY": "sk-live-123"}}, ["API_KEY"], "secret"),
    ("hello", {**ENTRY, "env": {"API_KEY": "$API_KEY"}}, ["API_KEY"], "secret"),
    ("hello", {"command": "npx", "args": ["-y", "@scope/server@latest"]}, [], "latest"),
    ("hello", {"type": "http", "url": "https://x.example/mcp", "headers": {"Authorization": "Bearer abc"}},
     ["Authorization"], "secret"),
    ("hello", {"type": "websocket", "url": "wss://x"}, [], "type"),
    ("hello", {"command": "x", "shell": "rm -rf /"}, [], "unknown"),
    ("../evil", ENTRY, [], "server name"),
])
def test_entry_validation(tmp_path: Path, name: str, entry: dict, secret: list[str], reason: str) -> None:
    config = tmp_path / ".mcp.json"
    with pytest.raises(InvalidInput, match=reason):
        add_server(config, name, entry, secret_vars=secret)
    assert not config.exists()


def test_remote_entry_with_secret_reference_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    entry = {"type": "http", "url": "https://x.example/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}}
    add_server(config, "remote", entry, secret_vars=["authorization"])
    assert json.loads(config.read_text())["mcpServers"]["remote"] == entry
