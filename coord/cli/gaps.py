"""`coord gaps ...`: missing capabilities."""

from __future__ import annotations

import click

from coord.cli.main import CliState, parse_json_option, pass_state
from coord.cli.output import console, show, show_list
from coord.states import GAP_TYPES


@click.group()
def gaps() -> None:
    """Missing tools, MCP servers, agents and expertise."""


@gaps.command("ls")
@click.option("--type", "capability_type", type=click.Choice(GAP_TYPES))
@pass_state
@click.pass_context
def gaps_ls(ctx: click.Context, state: CliState, capability_type: str | None) -> None:
    """List recorded gaps, most requested first."""
    from coord.gaps import list_gaps

    with state.coordinator.db.reader() as s:
        rows = [
            {
                "id": g.id,
                "type": g.capability_type,
                "name": g.name,
                "frequency": g.frequency,
                "status": g.resolution_status,
                "first_requested_by": g.requested_by,
                "last_requested": g.last_requested,
            }
            for g in list_gaps(s, capability_type)
        ]
    show_list(ctx, rows, "gaps", ["id", "type", "name", "frequency", "status", "first by", "last requested"],
              lambda r: tuple(r.values()))


@gaps.command("record")
@click.argument("capability_type", type=click.Choice(GAP_TYPES))
@click.argument("name")
@click.option("--agent", required=True, help="The agent that is missing it.")
@click.option("--context", "context_json", help="Why it is needed, as a JSON object.")
@click.option("--id", "report_id", help="Report id (replaying the same id counts once).")
@pass_state
@click.pass_context
def gaps_record(
    ctx: click.Context,
    state: CliState,
    capability_type: str,
    name: str,
    agent: str,
    context_json: str | None,
    report_id: str | None,
) -> None:
    """Record that AGENT is missing a capability."""
    r = state.coordinator.record_missing_capability(
        capability_type, name, agent, parse_json_option(context_json, "--context"), id=report_id
    )
    show(
        ctx,
        r,
        lambda: console.print(f"{r.status}: {r.capability_type} {r.name!r} (frequency {r.frequency}, id {r.gap_id})"),
    )


def register(cli: click.Group) -> None:
    cli.add_command(gaps)
