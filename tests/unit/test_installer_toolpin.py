"""How the installer starts a new MCP server to pin its tools (coord.installer.toolpin): under bubblewrap
without network, its environment handed over by the starter (never as arguments), and a sandbox it cannot
have is a reason recorded, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings

from coord.installer.runner import probe_sandbox
from coord.installer.toolpin import sandboxed, snapshot_at_install

SPEC = {"command": "/opt/tools/bin/server", "args": ["--stdio"], "env": {"API_TOKEN": "${API_TOKEN}"}}


def test_bwrap_wraps_a_stdio_server_without_network_and_keeps_env_out_of_argv() -> None:
    wrapped = sandboxed(SPEC, "bwrap")
    args = wrapped["args"]
    assert Path(wrapped["command"]).name == "bwrap"
    assert args[-3:] == ["--", "/opt/tools/bin/server", "--stdio"]
    assert "--unshare-all" in args and "--share-net" not in args
    assert "--clearenv" not in args and wrapped["env"] == SPEC["env"]  # the secret goes by environment
    assert not any("API_TOKEN" in a for a in args)
    home = args.index("--setenv")
    assert args[home:home + 3] == ["--setenv", "HOME", "/tmp"] and args[args.index("--chdir") + 1] == "/tmp"


@pytest.mark.parametrize("spec", [SPEC, {"type": "http", "url": "https://mcp.example.com/mcp"}])
def test_no_sandbox_or_a_remote_server_is_started_as_configured(spec: dict) -> None:
    assert sandboxed(spec, "none") == spec
    if "url" in spec:
        assert sandboxed(spec, "bwrap") == spec  # no process of ours to wrap


def test_a_sandbox_that_is_not_there_is_recorded_as_the_reason(tmp_path: Path) -> None:
    if probe_sandbox() == "bwrap":
        pytest.skip("bubblewrap runs here")
    pin = snapshot_at_install(make_settings(tmp_path, sandbox="bwrap"), SPEC)
    assert pin.tools_hash is None and "sandbox='bwrap' was asked for" in pin.reason
    assert pin.summary() == {"status": "not_recorded", "sandbox": "bwrap", "reason": pin.reason}
