"""An MCP server install driven the way a person does it: an agent reports the gap, `coord approvals
approve` carries the install out (real npm, offline, dispatch inline), `coord installs ls|show` report it
with the secret to set, `coord status` names the sandbox, and `coord installs rollback` leaves the prefix
gone and the client config byte-identical."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, child_env

from coord.approvals import ApprovalDesk
from coord.client import Coordinator
from coord.installer.history import InstallDesk
from coord.settings import load_settings

FIXTURES = REPO / "tests" / "fixtures" / "installer"
pytestmark = pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A config file for a fresh state dir whose install sources are a local folder; returns (config, .mcp.json)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    src = shutil.copytree(FIXTURES / "npm-hello", tmp_path / "npm-hello")
    subprocess.run(["npm", "pack", "--offline", "--no-audit", "--no-fund", "--pack-destination", str(dist)],
                   cwd=src, check=True, timeout=120, capture_output=True,
                   env=child_env(HOME=str(tmp_path), npm_config_cache=str(tmp_path / "npm-cache")))
    project = tmp_path / "project"
    project.mkdir()
    mcp_json = project / ".mcp.json"
    mcp_json.write_bytes(b'{"mcpServers": {"mine": {"command": "my-server", "args": ["--x"]}}, "other": true}')
    config = tmp_path / "coord.toml"
    config.write_text("\n".join([
        f'state_dir = "{tmp_path / "state"}"', 'dispatch = "inline"', 'log_level = "warning"',
        f'catalog_paths = ["{FIXTURES / "catalog"}"]', f'install_find_links = ["{dist}"]', "install_offline = true",
        'allowed_install_sources = ["npm:@coord-fixtures/*"]', f'mcp_config_files = ["{mcp_json}"]',
    ]) + "\n", encoding="utf-8")
    return config, mcp_json


def coord(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coord.cli", "--config", str(config), *args], env=child_env(),
                          capture_output=True, text=True, timeout=180)


def test_approve_install_show_and_roll_back_through_the_cli(setup: tuple[Path, Path]) -> None:
    config, mcp_json = setup
    original = mcp_json.read_bytes()
    with Coordinator(load_settings(config).settings) as c:  # the agent side, in process
        c.register_agent("dev-agent", "Writes code.")
        c.record_missing_capability("mcp", "hello-mcp", "dev-agent")
        (approval,) = [a for a in ApprovalDesk(c.settings, c.db, c.bell).list() if a.action == "install_mcp"]
        desk = InstallDesk(c.settings, c.db)

        approved = coord(config, "approvals", "approve", approval.id, "--by", "alice")
        assert approved.returncode == 0, approved.stderr

        (install,) = json.loads(coord(config, "--json", "installs", "ls").stdout)
        assert (install["name"], install["status"], install["approved_by"]) == ("hello-mcp", "installed", "alice")
        shown = desk.show(install["id"])
        assert shown["required_secrets"] == ["HELLO_API_KEY"]
        assert [(s["step"], s["status"]) for s in shown["steps"]] == [("install", "ok")]
        assert "--ignore-scripts" in shown["steps"][0]["argv"] and shown["steps"][0]["sandbox"] in ("bwrap", "none")
        prefix = Path(shown["prefix"])
        entry = json.loads(mcp_json.read_text())["mcpServers"]["hello-mcp"]
        assert entry == {"command": str(prefix / "node_modules" / ".bin" / "hello-npm"), "args": [],
                         "env": {"HELLO_API_KEY": "${HELLO_API_KEY}"}}
        human = coord(config, "installs", "show", install["id"]).stdout
        assert "HELLO_API_KEY" in human and "set these" in human and "--ignore-scripts" in human

        status = coord(config, "status")
        assert status.returncode == 0, status.stderr
        (line,) = [ln for ln in status.stdout.splitlines() if ln.startswith("sandbox")]
        assert "setting sandbox='auto'" in line and line.split()[1] in ("bwrap", "none")

        rolled = coord(config, "installs", "rollback", install["id"], "--by", "bob")
        assert rolled.returncode == 0, rolled.stderr + rolled.stdout
        assert not prefix.exists()
        assert mcp_json.read_bytes() == original
        after = desk.show(install["id"])
        assert after["status"] == "rolled_back" and after["details"]["rollback"]["by"] == "bob"
