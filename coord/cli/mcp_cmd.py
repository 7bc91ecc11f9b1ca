"""`coord mcp ...`: run coord as an MCP server for one agent, put it in a client's config, verify pins."""

from __future__ import annotations

from pathlib import Path

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, show, table
from coord.errors import InvalidInput
from coord.mcpserver.clientconfig import CLIENTS
from coord.mcpserver.pinning import DEFAULT_TIMEOUT

DEFAULT_PORT = 8765


def _settings_from(state: CliState, state_dir: str | None, config: str | None) -> None:
    """`coord mcp --state-dir X` reads like `coord --state-dir X mcp`: client configs put options last."""
    if config:
        state.config = config
    if state_dir:
        state.overrides["state_dir"] = state_dir


@click.group("mcp", invoke_without_command=True)
@click.option("--agent", envvar="COORD_AGENT", help="The agent this server acts for (else COORD_AGENT).")
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP on 127.0.0.1 instead of stdio.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port for --http.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="State directory (else COORD_STATE_DIR).")
@click.option("--config", type=click.Path(dir_okay=False), help="TOML settings file (else COORD_CONFIG).")
@pass_state
@click.pass_context
def mcp(ctx: click.Context, state: CliState, agent: str | None, use_http: bool, port: int, state_dir: str | None,
        config: str | None) -> None:
    """Run coord's MCP server for one agent (stdio by default).

    The agent's identity comes from --agent / COORD_AGENT only; the server refuses to start for an agent
    that is not registered, and refuses every call once it is removed.
    """
    _settings_from(state, state_dir, config)
    if ctx.invoked_subcommand:
        return
    if not agent:
        raise InvalidInput("name the agent this server acts for: `coord mcp --agent NAME` (or set COORD_AGENT)")
    from coord.mcpserver import require_sdk

    require_sdk()
    from coord.mcpserver.server import HTTP_HOST, build_server, serve_http, serve_stdio

    app = build_server(state.coordinator, agent, log_level="INFO" if state.verbose else "WARNING")
    try:
        if use_http:
            click.echo(f"coord MCP server for {agent} on http://{HTTP_HOST}:{port}/mcp", err=True)
            serve_http(app, port)
        else:
            serve_stdio(app)
    except KeyboardInterrupt:
        pass


@mcp.command("install")
@click.option("--client", type=click.Choice(CLIENTS), required=True, help="Which MCP client's config to write.")
@click.option("--agent", required=True, help="The agent the client's coord server acts for.")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path),
              help="claude-code: the project folder whose .mcp.json to write (default: the current folder).")
@click.option("--name", default="coord", show_default=True, help="The server's key under mcpServers.")
@click.option("--replace", is_flag=True, help="Replace an existing, different entry of that name.")
@pass_state
@click.pass_context
def mcp_install(ctx: click.Context, state: CliState, client: str, agent: str, project: Path | None, name: str,
                replace: bool) -> None:
    """Write coord itself into a client's MCP config (merged; backed up; never clobbered)."""
    from coord import registry
    from coord.mcpserver import clientconfig

    with state.coordinator.db.reader() as s:
        registry.require_active(s, agent)
    change, entry = clientconfig.install(
        client, agent, state.settings, config_file=state.loaded.config_file, project=project, name=name,
        replace=replace,
    )
    out = {**change.to_dict(), "client": client, "agent": agent, "entry": entry}

    def human() -> None:
        console.print(f"{change.action}: MCP server {name!r} for agent {agent} in {change.path}")
        console.print(f"  runs: {' '.join([entry['command'], *entry['args']])}")
        if change.backup:
            console.print(f"  previous file kept at {change.backup}")
        if client == "claude-code":
            console.print("  Claude Code asks you to approve a project's MCP servers the first time it starts them.")

    show(ctx, out, human)


@mcp.command("verify")
@click.argument("name")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for the server to list its tools.")
@pass_state
@click.pass_context
def mcp_verify(ctx: click.Context, state: CliState, name: str, timeout: float) -> None:
    """Start installed MCP server NAME, hash its tools and compare with the hash approved. Exit 1 on drift."""
    from coord.mcpserver.pinning import verify_install

    report = verify_install(state.coordinator, name, actor="coord mcp verify", timeout=timeout)

    def human() -> None:
        style = "green" if report.status == "clean" else "bold red"
        console.print(f"[{style}]{report.status}[/]: {report.message}")
        if report.status != "clean":
            table("tools now", ["tool", "description"],
                  [(t["name"], t["description"][:100]) for t in report.tools])

    show(ctx, report, human)
    if report.status != "clean":
        ctx.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(mcp)
