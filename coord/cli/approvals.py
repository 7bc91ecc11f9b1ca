"""`coord approvals ...`: the human side of invariant 6. Agents have no such command in their client."""

from __future__ import annotations

import click

from coord.approvals import STATUSES, ApprovalDesk
from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fields, json_block, show, show_list, target


def _desk(state: CliState) -> ApprovalDesk:
    c = state.coordinator
    return ApprovalDesk(c.settings, c.db, c.bell, c.now)


@click.group()
def approvals() -> None:
    """Approve or reject what coord proposes (a person decides; agents never do)."""


@approvals.command("ls")
@click.option("--status", type=click.Choice([*STATUSES, "all"]), default="pending", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_state
@click.pass_context
def approvals_ls(ctx: click.Context, state: CliState, status: str, limit: int) -> None:
    """List approvals (pending ones by default, oldest first)."""
    rows = _desk(state).list(None if status == "all" else status, limit)
    show_list(ctx, rows, f"approvals ({status})", ["id", "action", "target", "status", "safety", "why", "expires"],
              lambda a: (a.id, a.action, target(a.details), a.status, a.safety_score, a.reason, a.expires_at))


@approvals.command("show")
@click.argument("approval_id")
@pass_state
@click.pass_context
def approvals_show(ctx: click.Context, state: CliState, approval_id: str) -> None:
    """Show one approval with everything it would do."""
    a = _desk(state).show(approval_id)

    def human() -> None:
        fields((key, value) for key, value in a.to_dict().items() if key != "details")
        definition = a.details.get("definition")
        json_block("details", {k: v for k, v in a.details.items() if k != "definition"})
        if definition:
            console.print("[bold]agent file that would be written[/]")
            console.print(definition, markup=False)

    show(ctx, a, human)


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--by", "by", required=True, help="Your name: recorded as the approver.")
@click.option("--reason", help="Why (kept in the audit log).")
@pass_state
@click.pass_context
def approvals_approve(ctx: click.Context, state: CliState, approval_id: str, by: str, reason: str | None) -> None:
    """Approve APPROVAL_ID; its execution job is queued. Approving twice changes nothing."""
    a = _desk(state).approve(approval_id, by=by, reason=reason)
    show(ctx, a, lambda: console.print(
        f"approved {a.id} by {a.decided_by}" + ("" if a.changed else " (already approved; nothing changed)")
    ))


@approvals.command("reject")
@click.argument("approval_id")
@click.option("--by", "by", required=True, help="Your name: recorded as the decider.")
@click.option("--reason", required=True, help="Why: the agents that reported the gap can read it.")
@pass_state
@click.pass_context
def approvals_reject(ctx: click.Context, state: CliState, approval_id: str, by: str, reason: str) -> None:
    """Reject APPROVAL_ID."""
    a = _desk(state).reject(approval_id, by=by, reason=reason)
    show(ctx, a, lambda: console.print(
        f"rejected {a.id} by {a.decided_by}" + ("" if a.changed else " (already rejected; nothing changed)")
    ))


def register(cli: click.Group) -> None:
    cli.add_command(approvals)
