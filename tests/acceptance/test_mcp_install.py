"""`coord mcp install` writes a working entry into Claude Code's and Claude Desktop's configs without
touching anything else; the same server also answers over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result
from conftest import child_env, make_settings

pytest.importorskip("mcp.server.mcpserver")

from coord.client import Coordinator
from coord.mcpserver.pinning import snapshot_tools


@pytest.fixture
def coord() -> Iterator[Callable[..., Result]]:
    """The CLI in-process (the server itself runs as a real subprocess below); logging reset afterwards
    because the CLI points structlog at the runner's captured stderr."""
    from coord.cli.main import cli

    def run(env: dict[str, str], *args: str) -> Result:
        return CliRunner().invoke(cli, ["--json", *args], env=env, catch_exceptions=False)

    yield run
    structlog.reset_defaults()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listening on {port} after {timeout}s")


def test_install_writes_a_launchable_entry_and_http_serves_the_same_tools(tmp_path: Path, coord) -> None:
    settings = make_settings(tmp_path)
    with Coordinator(settings) as c:
        c.register_agent("backend-dev", "Backend developer: Python services", expertise=["python"])
    state_dir = str(settings.state_dir.absolute())
    home = tmp_path / "home"
    env = {"COORD_STATE_DIR": state_dir, "COORD_DISPATCH": "inline", "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / ".config")}
    project = tmp_path / "project"
    project.mkdir()
    mcp_json = project / ".mcp.json"
    mcp_json.write_text(json.dumps({"mcpServers": {"github": {"command": "gh-mcp", "args": ["stdio"]}},
                                    "note": "kept"}, indent=4) + "\n")

    done = coord(env, "mcp", "install", "--client", "claude-code", "--project", str(project), "--agent", "backend-dev")
    assert done.exit_code == 0, done.output
    change = json.loads(done.stdout)
    assert change["action"] == "added"
    assert Path(change["backup"]).is_relative_to(state_dir)  # backups with the installer's, not in the project
    doc = json.loads(mcp_json.read_text())
    assert doc["note"] == "kept" and doc["mcpServers"]["github"] == {"command": "gh-mcp", "args": ["stdio"]}
    assert '\n    "mcpServers"' in mcp_json.read_text()  # the file's own indentation is kept
    entry = doc["mcpServers"]["coord"]
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][-5:] == ["mcp", "--agent", "backend-dev", "--state-dir", state_dir]

    again = coord(env, "mcp", "install", "--client", "claude-code", "--project", str(project), "--agent",
                  "backend-dev")
    assert again.exit_code == 0 and json.loads(again.stdout)["action"] == "unchanged"
    ghost = coord(env, "mcp", "install", "--client", "claude-code", "--project", str(project), "--agent", "ghost")
    assert ghost.exit_code == 3 and "'ghost' is not registered" in ghost.stdout
    assert json.loads(mcp_json.read_text()) == doc

    desktop = coord(env, "mcp", "install", "--client", "claude-desktop", "--agent", "backend-dev",
                    "--name", "coord-backend-dev")
    assert desktop.exit_code == 0, desktop.output
    desktop_file = home / ".config" / "Claude" / "claude_desktop_config.json"
    assert json.loads(desktop_file.read_text())["mcpServers"]["coord-backend-dev"] == entry

    # The entry as written starts coord's MCP server for that agent, with a client's bare environment.
    stdio_hash, tools = snapshot_tools(entry, timeout=60)
    assert len(tools) == 12 and {"delegate_task", "claim_task", "complete_task"} <= {t["name"] for t in tools}

    # The same server over streamable HTTP, bound to 127.0.0.1: the same tools, so the same hash.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "coord.cli", "mcp", "--agent", "backend-dev", "--http", "--port", str(port)],
        env=child_env(**env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_port(port, server)
        http_hash, _ = snapshot_tools({"type": "http", "url": f"http://127.0.0.1:{port}/mcp"}, timeout=60)
        assert http_hash == stdio_hash
    finally:
        server.terminate()
        server.wait(timeout=30)
