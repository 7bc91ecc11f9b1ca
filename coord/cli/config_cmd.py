"""`coord init` and `coord config show`."""

from __future__ import annotations

import click

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, show, table


@click.command()
@pass_state
@click.pass_context
def init(ctx: click.Context, state: CliState) -> None:
    """Create the state directory and bring the database schema up to date."""
    from coord.db import open_database
    from coord.db.migrate import current_revision

    s = state.settings
    s.state_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(s)
    info = {"state_dir": str(s.state_dir), "database": db.safe_url, "schema": current_revision(db),
            "queue": s.queue_location}
    db.dispose()
    show(ctx, info, lambda: [console.print(f"{k:10} {v}") for k, v in info.items()])


@click.group()
def config() -> None:
    """Inspect settings."""


@config.command("show")
@pass_state
@click.pass_context
def config_show(ctx: click.Context, state: CliState) -> None:
    """Print the effective settings and where each value came from."""
    loaded = state.loaded
    rows = loaded.rows()
    value = {name: {"value": v, "source": src} for name, v, src in rows}
    title = f"settings (file: {loaded.config_file or 'none'})"
    show(ctx, value, lambda: table(title, ["setting", "value", "source"], rows))


def register(cli: click.Group) -> None:
    cli.add_command(init)
    cli.add_command(config)
