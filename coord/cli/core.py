"""`coord delegate`, `coord inbox`, `coord collab`: the seed's coordination calls."""

from __future__ import annotations

import click

from coord.cli.main import CliState, parse_json_option, pass_state
from coord.cli.output import console, show, show_list, table
from coord.states import PRIORITIES


@click.command()
@click.argument("from_agent")
@click.argument("to_agent")
@click.option("--title", help="Short title of the task.")
@click.option("--description", help="What needs doing.")
@click.option("--data", "data_json", help="Task data as a JSON object (merged with --title/--description).")
@click.option("--priority", type=click.Choice(list(PRIORITIES)), default="medium", show_default=True)
@click.option("--id", "task_id", help="Task id (replaying the same id creates one task).")
@pass_state
@click.pass_context
def delegate(ctx: click.Context, state: CliState, from_agent: str, to_agent: str, title: str | None,
             description: str | None, data_json: str | None, priority: str, task_id: str | None) -> None:
    """FROM_AGENT delegates a task to TO_AGENT."""
    data = parse_json_option(data_json, "--data") or {}
    if not isinstance(data, dict):
        from coord.errors import InvalidInput

        raise InvalidInput("--data must be a JSON object")
    data = {**data, **{k: v for k, v in (("title", title), ("description", description)) if v}}
    r = state.coordinator.delegate(from_agent, to_agent, data, priority=priority, id=task_id)

    def human() -> None:
        if r.status == "delegated":
            console.print(f"delegated {r.coordination_id} to {r.to_agent}")
        else:
            console.print(f"agent_not_found: {to_agent} (gap {r.gap_id} recorded)")
            if r.fallback:
                table("alternatives", ["agent", "score", "why"], [(c.agent_id, c.score, c.why) for c in r.fallback])

    show(ctx, r, human)
    if r.status != "delegated":
        ctx.exit(3)


@click.command()
@click.argument("agent")
@click.option("--all", "include_read", is_flag=True, help="Include messages already read.")
@click.option("--mark-read", is_flag=True, help="Mark the listed messages read.")
@pass_state
@click.pass_context
def inbox(ctx: click.Context, state: CliState, agent: str, include_read: bool, mark_read: bool) -> None:
    """Show AGENT's notifications."""
    items = state.coordinator.inbox(agent, unread_only=not include_read, mark_read=mark_read)
    show_list(ctx, items, f"messages for {agent}", ["kind", "ref", "from / about", "at"],
              lambda i: (i.kind, i.ref_id, i.body.get("from_agent") or i.body.get("requester") or i.body, i.created_at))


@click.command()
@click.argument("from_agent")
@click.argument("expertise")
@click.option("--context", "context_json", help="Task context as a JSON object.")
@click.option("--id", "request_id", help="Request id (replay-safe).")
@pass_state
@click.pass_context
def collab(ctx: click.Context, state: CliState, from_agent: str, expertise: str, context_json: str | None,
           request_id: str | None) -> None:
    """FROM_AGENT asks for a collaborator with EXPERTISE."""
    r = state.coordinator.request_collaboration(
        from_agent, expertise, parse_json_option(context_json, "--context"), id=request_id
    )

    def human() -> None:
        if r.status == "no_expert_available":
            console.print(f"no_expert_available for {expertise!r}: gap {r.gap_id} recorded; suggestion: {r.suggestion}")
        else:
            table(f"collaboration {r.collaboration_id}", ["candidate", "score", "why"],
                  [(c.agent_id, c.score, c.why) for c in r.candidates])

    show(ctx, r, human)


def register(cli: click.Group) -> None:
    for command in (delegate, inbox, collab):
        cli.add_command(command)
