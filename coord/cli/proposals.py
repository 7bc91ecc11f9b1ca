"""`coord proposals ...` (what coord proposes for each gap) and `coord collaboration ...` (answers)."""

from __future__ import annotations

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fields, json_block, show, show_list, table, target
from coord.states import GAP_TYPES


@click.group()
def proposals() -> None:
    """Proposals that would close capability gaps."""


@proposals.command("ls")
@click.option("--name", help="Capability name, e.g. postgresql.")
@click.option("--type", "capability_type", type=click.Choice(GAP_TYPES))
@click.option("--gap", "gap_id", help="Gap id.")
@click.option("--status", help="proposed, pending_approval, approved, denied, rejected, expired, executed, ...")
@pass_state
@click.pass_context
def proposals_ls(ctx: click.Context, state: CliState, name: str | None, capability_type: str | None,
                 gap_id: str | None, status: str | None) -> None:
    """List proposals, most confident first."""
    rows = state.coordinator.get_proposals(name, capability_type=capability_type, gap_id=gap_id, status=status)
    show_list(ctx, rows, "proposals", ["id", "kind", "target", "status", "confidence", "how", "approval"],
              lambda p: (p.id, p.kind, target(p.details, "requested_name", "need"), p.status, p.confidence,
                         p.confidence_basis.get("how"), p.approval_id))


@proposals.command("show")
@click.argument("proposal_id")
@pass_state
@click.pass_context
def proposals_show(ctx: click.Context, state: CliState, proposal_id: str) -> None:
    """Show one proposal, its confidence basis and its policy decision."""
    from coord.proposals import get_proposal, info

    with state.coordinator.db.reader() as s:
        p = info(s, get_proposal(s, proposal_id))

    def human() -> None:
        fields((key, getattr(p, key)) for key in ("id", "gap_id", "kind", "status", "confidence", "proposed_by",
                                                  "created_at", "approval_id", "approval_status"))
        json_block("confidence basis", p.confidence_basis)
        json_block("details", p.details)

    show(ctx, p, human)


@click.group()
def collaboration() -> None:
    """Answer or close collaboration requests (see `coord collab` to ask)."""


def _status_line(r) -> None:
    console.print(f"{r.request_id}: {r.status}" + (f", assigned to {', '.join(r.assigned)}" if r.assigned else "")
                  + ("" if r.changed else " (nothing changed)"))


@collaboration.command("show")
@click.argument("request_id")
@pass_state
@click.pass_context
def collaboration_show(ctx: click.Context, state: CliState, request_id: str) -> None:
    """Show a request's state and answers."""
    r = state.coordinator.get_collaboration(request_id)
    show(ctx, r, lambda: (_status_line(r), table("answers", ["candidate", "answer"],
                                                 [(c, r.responses.get(c, "-")) for c in r.candidates])))


@collaboration.command("accept")
@click.argument("request_id")
@click.option("--agent", required=True, help="The candidate agent that accepts.")
@click.option("--note", help="A note for the requester.")
@pass_state
@click.pass_context
def collaboration_accept(ctx: click.Context, state: CliState, request_id: str, agent: str, note: str | None) -> None:
    """AGENT accepts REQUEST_ID: it is assigned and the requester is told."""
    r = state.coordinator.respond_collaboration(request_id, agent, accept=True, note=note)
    show(ctx, r, lambda: _status_line(r))


@collaboration.command("decline")
@click.argument("request_id")
@click.option("--agent", required=True, help="The candidate agent that declines.")
@click.option("--note", help="Why, for the requester.")
@pass_state
@click.pass_context
def collaboration_decline(ctx: click.Context, state: CliState, request_id: str, agent: str, note: str | None) -> None:
    """AGENT declines REQUEST_ID; when every candidate has declined the requester is told."""
    r = state.coordinator.respond_collaboration(request_id, agent, accept=False, note=note)
    show(ctx, r, lambda: _status_line(r))


@collaboration.command("close")
@click.argument("request_id")
@click.option("--requester", required=True, help="The agent that asked.")
@pass_state
@click.pass_context
def collaboration_close(ctx: click.Context, state: CliState, request_id: str, requester: str) -> None:
    """The requester closes REQUEST_ID (withdrawn, or done)."""
    r = state.coordinator.close_collaboration(request_id, requester)
    show(ctx, r, lambda: _status_line(r))


def register(cli: click.Group) -> None:
    cli.add_command(proposals)
    cli.add_command(collaboration)
