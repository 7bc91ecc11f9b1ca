"""`coord tasks ...`: the agent side of the queue."""

from __future__ import annotations

import click

from coord.cli.main import CliState, parse_json_option, pass_state
from coord.cli.output import console, fields, fmt, show, show_list
from coord.states import TASK_FINAL, TASK_OPEN


@click.group()
def tasks() -> None:
    """List, claim and finish coordination tasks."""


@tasks.command("ls")
@click.option("--agent", help="Tasks to or from this agent.")
@click.option("--status", type=click.Choice(TASK_OPEN + TASK_FINAL))
@click.option("--limit", default=50, show_default=True)
@pass_state
@click.pass_context
def tasks_ls(ctx: click.Context, state: CliState, agent: str | None, status: str | None, limit: int) -> None:
    """List tasks, newest first."""
    rows = state.coordinator.tasks(agent_id=agent, status=status, limit=limit)
    show_list(ctx, rows, "tasks", ["id", "from", "to", "priority", "status", "attempts", "title", "created"],
              lambda t: (t.id, t.from_agent, t.to_agent, t.priority, t.status, t.attempts, t.payload.get("title"),
                         t.created_at))


@tasks.command("show")
@click.argument("task_id")
@pass_state
@click.pass_context
def tasks_show(ctx: click.Context, state: CliState, task_id: str) -> None:
    """Show one task."""
    t = state.coordinator.get_task(task_id)
    show(ctx, t, lambda: fields(t.to_dict().items()))


@tasks.command("claim")
@click.argument("agent")
@click.option("--lease", "lease_seconds", type=float, help="Lease in seconds (default: setting lease_seconds).")
@pass_state
@click.pass_context
def tasks_claim(ctx: click.Context, state: CliState, agent: str, lease_seconds: float | None) -> None:
    """Claim the next task for AGENT (highest priority, then oldest). Exit 0 with nothing when empty."""
    c = state.coordinator.claim_next(agent, lease_seconds=lease_seconds)
    if c is None:
        show(ctx, None, lambda: console.print(f"no pending task for {agent}"))
        return
    show(ctx, c, lambda: console.print(
        f"claimed {c.task_id} token={c.token} lease until {fmt(c.lease_expires_at)} from {c.from_agent}: "
        f"{c.payload.get('title', '')}"
    ))


@tasks.command("heartbeat")
@click.argument("task_id")
@click.argument("token", type=int)
@click.option("--lease", "lease_seconds", type=float)
@pass_state
@click.pass_context
def tasks_heartbeat(ctx: click.Context, state: CliState, task_id: str, token: int, lease_seconds: float | None) -> None:
    """Extend the lease on a claimed task."""
    until = state.coordinator.heartbeat(task_id, token, lease_seconds=lease_seconds)
    show(ctx, {"task_id": task_id, "lease_expires_at": until}, lambda: console.print(f"lease until {fmt(until)}"))


@tasks.command("complete")
@click.argument("task_id")
@click.argument("token", type=int)
@click.option("--result", "result_json", help="Result as a JSON object.")
@click.option("--next", "next_agent", metavar="AGENT", help="Then claim AGENT's next task, in the same transaction.")
@click.option("--lease", "lease_seconds", type=float, help="Lease of the next task (with --next).")
@pass_state
@click.pass_context
def tasks_complete(ctx: click.Context, state: CliState, task_id: str, token: int, result_json: str | None,
                   next_agent: str | None, lease_seconds: float | None) -> None:
    """Complete a claimed task (and with --next, claim the agent's next one)."""
    result = parse_json_option(result_json, "--result")
    if next_agent is None:
        state.coordinator.complete(task_id, token, result)
        show(ctx, {"task_id": task_id, "status": "completed"}, lambda: console.print(f"{task_id} completed"))
        return
    c = state.coordinator.complete_and_claim(task_id, token, result, agent_id=next_agent, lease_seconds=lease_seconds)
    show(ctx, {"task_id": task_id, "status": "completed", "next": c}, lambda: console.print(
        f"{task_id} completed; " + (f"claimed {c.task_id} token={c.token} lease until {fmt(c.lease_expires_at)}"
                                    if c else f"no pending task for {next_agent}")
    ))


@tasks.command("fail")
@click.argument("task_id")
@click.argument("token", type=int)
@click.option("--error", required=True, help="Why it failed.")
@click.option("--no-retry", is_flag=True, help="Fail for good instead of returning it to the queue.")
@pass_state
@click.pass_context
def tasks_fail(ctx: click.Context, state: CliState, task_id: str, token: int, error: str, no_retry: bool) -> None:
    """Fail the current attempt of a claimed task."""
    status = state.coordinator.fail(task_id, token, error, retry=not no_retry)
    show(ctx, {"task_id": task_id, "status": status}, lambda: console.print(f"{task_id} is now {status}"))


@tasks.command("release")
@click.argument("task_id")
@click.argument("token", type=int)
@pass_state
@click.pass_context
def tasks_release(ctx: click.Context, state: CliState, task_id: str, token: int) -> None:
    """Give a claimed task back without counting the attempt."""
    state.coordinator.release(task_id, token)
    show(ctx, {"task_id": task_id, "status": "pending"}, lambda: console.print(f"{task_id} released"))


def register(cli: click.Group) -> None:
    cli.add_command(tasks)
