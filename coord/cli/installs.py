"""`coord installs ls|show|rollback`: the install history, and undoing an install."""

from __future__ import annotations

import getpass

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fields, json_block, show, show_list, table
from coord.installer.history import STATUSES, InstallDesk


def _desk(state: CliState) -> InstallDesk:
    c = state.coordinator
    return InstallDesk(c.settings, c.db)


@click.group()
def installs() -> None:
    """What coord installed (tools, MCP servers), every attempt, and rollback."""


@installs.command("ls")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--kind", type=click.Choice(["tool", "mcp"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_state
@click.pass_context
def installs_ls(ctx: click.Context, state: CliState, status: str | None, kind: str | None, limit: int) -> None:
    """List installs, newest first."""
    rows = _desk(state).list(status=status, kind=kind, limit=limit)
    show_list(ctx, rows, "installs", ["id", "kind", "name", "status", "attempts", "approved by", "created", "error"],
              lambda r: (r["id"], r["kind"], r["name"], r["status"], r["attempts"], r["approved_by"],
                         r["created_at"], r["error"]))


@installs.command("show")
@click.argument("install_id")
@pass_state
@click.pass_context
def installs_show(ctx: click.Context, state: CliState, install_id: str) -> None:
    """Show one install: plan, approver, every step of every attempt, the changes it made."""
    info = _desk(state).show(install_id)

    def human() -> None:
        fields(((key, info[key]) for key in ("id", "kind", "name", "status", "attempts", "approved_by", "proposal_id",
                                             "prefix", "created_at", "finished_at", "rolled_back_at", "error")),
               width=14)
        if info["required_secrets"]:
            names = info["required_secrets"]
            console.print(f"[bold yellow]set these before starting the server:[/] {', '.join(names)} "
                          "(in the environment your MCP client starts from; coord never stores their values)")
        pin = (info["details"] or {}).get("tools_pin")  # MCP servers: coord.installer.toolpin
        if pin:
            what = (f"{pin['tools']} tools pinned" if pin["status"] == "pinned"
                    else f"NOT RECORDED ({pin['reason']}); `coord mcp verify` has nothing to compare against")
            console.print(f"[bold]{'tool pin':14}[/] ", end="")
            console.print(f"{what} (sandbox {pin['sandbox']})", markup=False, soft_wrap=True)
        json_block("plan", info["plan"])
        if info["steps"]:
            table("steps", ["attempt", "step", "status", "exit", "seconds", "sandbox", "argv"],
                  [(a["attempt"], a["step"], a["status"], a["exit_code"], a["duration"], a["sandbox"],
                    " ".join(a["argv"])) for a in info["steps"]])
            last = info["steps"][-1]
            if last["output_tail"]:
                console.print(f"[bold]output of the last step ({last['step']})[/]")
                console.print(last["output_tail"], markup=False)
        if info["changes"]:
            table("changes", ["type", "where", "action"],
                  [(c.get("type"), c.get("path") or c.get("prefix") or c.get("name"), c.get("action") or "-")
                   for c in info["changes"]])

    show(ctx, info, human)


@installs.command("rollback")
@click.argument("install_id")
@click.option("--by", "by", default=getpass.getuser, show_default="your login name",
              help="Who rolls back (recorded in the audit log).")
@click.option("--restore-backup", is_flag=True,
              help="Put each config file back exactly as it was before the install, even if it changed since.")
@pass_state
@click.pass_context
def installs_rollback(ctx: click.Context, state: CliState, install_id: str, by: str, restore_backup: bool) -> None:
    """Remove INSTALL_ID's prefix and links and the config entries it added (restoring previous ones)."""
    result = _desk(state).rollback(install_id, by=by, restore_backup=restore_backup)

    def human() -> None:
        if not result["changed"]:
            console.print(f"install {install_id} was already rolled back; nothing changed")
        for line in result["undone"]:
            console.print(line, markup=False)
        for line in result["problems"]:
            console.print(f"[bold red]problem:[/] {line}")

    show(ctx, result, human)
    if result["problems"]:
        ctx.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(installs)
