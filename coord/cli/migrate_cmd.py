"""`coord migrate-data`: copy a coordination database into another engine (SQLite -> PostgreSQL)."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, err_console, show, table


class _Bar:
    """coord.migrate_data's progress sink drawn as one rich bar (on stderr: `--json` keeps stdout clean)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        )
        self.task: Any = None

    def start(self, total_rows: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("copying", total=total_rows)

    def table(self, name: str, rows: int) -> None:
        self.progress.update(self.task, description=name)

    def advance(self, rows: int) -> None:
        self.progress.advance(self.task, rows)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, description="copied")
        self.progress.stop()


@click.command("migrate-data")
@click.option("--from", "source", required=True, metavar="URL",
              help="Database to copy, e.g. sqlite:////var/lib/coord/coord.db")
@click.option("--to", "target", required=True, metavar="URL",
              help="Database to fill, e.g. postgresql+psycopg://coord@db.internal/coord")
@click.option("--force", is_flag=True, help="Replace what the target holds (default: refuse a non-empty target).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Rows per INSERT.")
@pass_state
@click.pass_context
def migrate_data(ctx: click.Context, state: CliState, source: str, target: str, force: bool, batch_size: int) -> None:
    """Copy a coordination database into another one, e.g. SQLite into PostgreSQL.

    The target's schema comes from the migrations; the copy is one transaction (all or nothing) and is
    verified by a row count per table. Stop the workers on the source first: what they write after the copy
    started is not copied. Then point COORD_DATABASE_URL at the target.
    """
    from coord.migrate_data import migrate_data as copy

    state.loaded  # noqa: B018 -- configures logging (to stderr) before any engine logs
    bar = _Bar()
    try:
        report = copy(source, target, force=force, batch_size=batch_size, progress=bar)
    finally:
        bar.stop()

    def human() -> None:
        table(f"verified {report.target}", ["table", "source rows", "target rows", "ok"],
              [(t.table, t.source, t.target, "yes" if t.ok else "NO") for t in report.tables])
        console.print(f"copied {report.rows} rows from {report.source} in {report.seconds:.1f} s"
                      f"{' (replaced the previous contents)' if report.replaced else ''}; "
                      f"search index rebuilt for {report.indexed_agents} agents; schema {report.schema}")

    show(ctx, report.to_dict(), human)


def register(cli: click.Group) -> None:
    cli.add_command(migrate_data)
