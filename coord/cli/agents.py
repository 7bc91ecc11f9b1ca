"""`coord agents ...`: the registry."""

from __future__ import annotations

from typing import Any

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fields, fmt, show, show_list, table


@click.group()
def agents() -> None:
    """List, show and register agents."""


@agents.command("ls")
@click.option("--all", "include_removed", is_flag=True, help="Include removed agents.")
@pass_state
@click.pass_context
def agents_ls(ctx: click.Context, state: CliState, include_removed: bool) -> None:
    """List registered agents."""
    rows = state.coordinator.list_agents(include_removed)
    show_list(ctx, rows, "agents", ["agent", "status", "expertise", "open tasks", "origin"],
              lambda a: (a.id, a.status, a.expertise[:6], a.open_tasks, a.origin))


@agents.command("show")
@click.argument("name")
@pass_state
@click.pass_context
def agents_show(ctx: click.Context, state: CliState, name: str) -> None:
    """Show one agent."""
    a = state.coordinator.get_agent(name)
    show(ctx, a, lambda: fields(a.to_dict().items(), width=12))


@agents.command("add")
@click.argument("name")
@click.option("-d", "--description", required=True, help="When to use this agent (what others match on).")
@click.option("-e", "--expertise", multiple=True, help="An expertise tag; repeat for several.")
@click.option("--tool", "tools", multiple=True, help="A tool the agent needs; repeat. Omit for all tools.")
@click.option("--mcp", "mcp_servers", multiple=True, help="An MCP server the agent needs; repeat.")
@click.option("--model", help="sonnet, opus, haiku, inherit or a model id.")
@click.option("--instructions-file", type=click.File("r", encoding="utf-8"),
              help="Its instructions (what a file's body holds), from a file or - for stdin; matching reads them.")
@pass_state
@click.pass_context
def agents_add(
    ctx: click.Context,
    state: CliState,
    name: str,
    description: str,
    expertise: tuple,
    tools: tuple,
    mcp_servers: tuple,
    model: str | None,
    instructions_file: Any,
) -> None:
    """Register (or update) an agent directly, without a file."""
    a = state.coordinator.register_agent(
        name,
        description,
        expertise=list(expertise),
        tools=list(tools) or None,
        mcp_servers=list(mcp_servers),
        model=model,
        instructions=instructions_file.read() if instructions_file is not None else "",
    )
    show(ctx, a, lambda: console.print(f"registered {a.id} (expertise: {fmt(a.expertise)})"))


@agents.command("rm")
@click.argument("name")
@pass_state
@click.pass_context
def agents_rm(ctx: click.Context, state: CliState, name: str) -> None:
    """Mark an agent removed (its history is kept)."""
    state.coordinator.get_agent(name)
    changed = state.coordinator.remove_agent(name)
    show(
        ctx,
        {"agent": name, "removed": changed},
        lambda: console.print(f"{name}: {'removed' if changed else 'already removed'}"),
    )


@agents.command("sync")
@click.option("--workers", type=click.IntRange(1, 64), help="Parser processes (default: CPUs, at most 4).")
@pass_state
@click.pass_context
def agents_sync(ctx: click.Context, state: CliState, workers: int | None) -> None:
    """Reconcile the agent folders with the registry now (the worker does this at start, then watches)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coord import sync
    from coord.cli.output import err_console
    from coord.errors import SettingsError

    settings = state.settings
    folders = sync.configured_folders(settings)
    if not folders:
        raise SettingsError("no agent folders configured: set agent_dirs (COORD_AGENT_DIRS or the config file), "
                            "e.g. .claude/agents and ~/.claude/agents")
    db = state.coordinator.db
    columns = (TextColumn("syncing agent files"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=state.as_json) as bar:
        task = bar.add_task("sync", total=None)
        report = sync.reconcile(settings, db, workers=workers,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))

    def human() -> None:
        events = ", ".join(f"{n} {e}" for e, n in sorted(report.events.items())) or "no changes"
        console.print(f"{report.files} agent files in {len(folders)} folders: {events} "
                      f"({report.read} read, {report.skipped} unchanged, {report.seconds:.2f} s)")
        if report.errors:
            console.print(f"[bold yellow]{report.errors} files have problems[/]: see `coord agents errors`")

    show(ctx, report, human)


@agents.command("errors")
@pass_state
@click.pass_context
def agents_errors(ctx: click.Context, state: CliState) -> None:
    """Agent files that could not be synced, and why (cleared when a file is fixed or removed); then the
    files that were synced with a warning (e.g. frontmatter that is not valid YAML, read leniently)."""
    from coord import sync

    rows = sync.list_errors(state.coordinator.db, warnings=True)

    def human() -> None:
        if not rows:
            console.print("no problems: every agent file is in sync")
            return
        table(f"{len(rows)} agent files with problems", ["file", "reason", "problem", "since"],
              [(e.path, e.reason, e.message, e.first_seen) for e in rows])

    show(ctx, rows, human)


def register(cli: click.Group) -> None:
    cli.add_command(agents)
