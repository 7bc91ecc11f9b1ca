"""`coord agents ...`: the registry."""

from __future__ import annotations

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fmt, show, table


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
    show(
        ctx,
        rows,
        lambda: table(
            f"{len(rows)} agents",
            ["agent", "status", "expertise", "open tasks", "origin"],
            [(a.id, a.status, a.expertise[:6], a.open_tasks, a.origin) for a in rows],
        ),
    )


@agents.command("show")
@click.argument("name")
@pass_state
@click.pass_context
def agents_show(ctx: click.Context, state: CliState, name: str) -> None:
    """Show one agent."""
    a = state.coordinator.get_agent(name)

    def human() -> None:
        for key, value in a.to_dict().items():
            console.print(f"[bold]{key:12}[/] {fmt(value)}")

    show(ctx, a, human)


@agents.command("add")
@click.argument("name")
@click.option("-d", "--description", required=True, help="When to use this agent (what others match on).")
@click.option("-e", "--expertise", multiple=True, help="An expertise tag; repeat for several.")
@click.option("--tool", "tools", multiple=True, help="A tool the agent needs; repeat. Omit for all tools.")
@click.option("--mcp", "mcp_servers", multiple=True, help="An MCP server the agent needs; repeat.")
@click.option("--model", help="sonnet, opus, haiku, inherit or a model id.")
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
) -> None:
    """Register (or update) an agent directly, without a file."""
    a = state.coordinator.register_agent(
        name,
        description,
        expertise=list(expertise),
        tools=list(tools) or None,
        mcp_servers=list(mcp_servers),
        model=model,
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


def register(cli: click.Group) -> None:
    cli.add_command(agents)
