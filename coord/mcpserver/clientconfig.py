"""`coord mcp install`: put coord itself into an MCP client's config, through the installer's safe writer.

The entry launches `coord mcp --agent NAME --state-dir DIR` with absolute paths, because clients start
servers from any working directory with a minimal environment. Writing goes through
`coord.installer.mcpconfig.add_server` (lock, re-read, backup, atomic rename; an unparsable file is left
untouched), so this module only decides where the file is and what the entry says.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from coord.errors import InvalidInput
from coord.installer.mcpconfig import ConfigChange, add_server

Client = Literal["claude-code", "claude-desktop"]
CLIENTS: tuple[str, ...] = ("claude-code", "claude-desktop")


def config_path(client: str, project: Path | None = None) -> Path:
    """Claude Code: `<project>/.mcp.json` (project scope). Claude Desktop: its per-user config file."""
    if client == "claude-code":
        root = Path(project or Path.cwd()).absolute()
        if not root.is_dir():
            raise InvalidInput(f"project folder {root} does not exist")
        return root / ".mcp.json"
    if client == "claude-desktop":
        if project is not None:
            raise InvalidInput("--project is for claude-code; Claude Desktop has one config file per user")
        home = Path.home()
        if sys.platform == "darwin":
            base = home / "Library" / "Application Support"
        elif sys.platform == "win32":
            base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
        else:  # no official Linux build; the community builds read the XDG config folder
            base = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        return base / "Claude" / "claude_desktop_config.json"
    raise InvalidInput(f"client {client!r} is not one of {', '.join(CLIENTS)}")


def coord_command() -> list[str]:
    """How a client starts this coord: the `coord` script of this environment, else `python -m coord.cli`.

    Not resolved through symlinks: a venv's python is a symlink, and resolving it would leave the venv.
    """
    here = Path(sys.executable).absolute().parent / ("coord.exe" if sys.platform == "win32" else "coord")
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here)]
    found = shutil.which("coord")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "coord.cli"]


def coord_entry(agent: str, *, state_dir: Path, config_file: Path | None = None) -> dict[str, Any]:
    """The stdio `mcpServers` entry that runs coord's MCP server as `agent` against `state_dir`."""
    command, *prefix = coord_command()
    args = [*prefix, "mcp", "--agent", agent, "--state-dir", str(Path(state_dir).absolute())]
    if config_file is not None:
        args += ["--config", str(Path(config_file).absolute())]
    return {"command": command, "args": args}


def install(
    client: str,
    agent: str,
    settings: Any,
    *,
    config_file: Path | None = None,
    project: Path | None = None,
    name: str = "coord",
    replace: bool = False,
    path: Path | None = None,
) -> tuple[ConfigChange, dict[str, Any]]:
    """Add (or, with replace, update) the coord entry in the client's config file: (the change, the entry).
    The previous file is backed up where the installer keeps its config backups (under the state dir)."""
    from coord.installer.service import backup_dir_for

    target = path or config_path(client, project)
    entry = coord_entry(agent, state_dir=settings.state_dir, config_file=config_file)
    return add_server(target, name, entry, replace=replace, backup_dir=backup_dir_for(settings, target)), entry
