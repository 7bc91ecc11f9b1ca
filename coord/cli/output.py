"""Output for people (rich tables) and programs (`--json`), and the one error-to-exit-code mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from coord.errors import CoordError

console = Console(highlight=False, soft_wrap=False)
# soft_wrap: an error line is never broken mid-word (people copy paths out of it; programs grep it).
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, default=str))


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return json.dumps(value, default=str)[:80]
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(fmt(v) for v in row))
    console.print(t)


def show(ctx: click.Context, value: Any, human: Any) -> None:
    """`--json` prints the value; otherwise `human()` prints it for a person."""
    if ctx.find_root().params.get("as_json") or (ctx.obj and ctx.obj.as_json):
        emit_json(value)
    else:
        human()


def show_list(ctx: click.Context, rows: Sequence[Any], what: str, columns: Sequence[str],
              row: Callable[[Any], Sequence[Any]]) -> None:
    """An `ls` command's output: `--json` prints `rows`; a person gets a table titled "N `what`",
    one line `row(item)` per item."""
    show(ctx, rows, lambda: table(f"{len(rows)} {what}", columns, [row(r) for r in rows]))


def fields(pairs: Iterable[tuple[str, Any]], width: int = 16) -> None:
    """A `show` command's "key  value" lines: the key in bold, padded to `width`."""
    for key, value in pairs:
        console.print(f"[bold]{key:{width}}[/] {fmt(value)}")


def json_block(heading: str, value: Any) -> None:
    """A bold heading, then `value` as indented JSON, printed as it is (no rich markup)."""
    console.print(f"[bold]{heading}[/]")
    console.print(json.dumps(value, indent=2, default=str), markup=False)


def target(details: dict, *more: str) -> str:
    """What a proposal or approval is about, for a table cell: the first name its details give.

    `more` adds keys to try after the usual ones (a proposal can name only what was asked for).
    """
    found = (details.get("short_name") or details.get("tool") or (details.get("agent") or {}).get("name")
             or details.get("query"))
    for key in more:
        found = found or details.get(key)
    return found or "-"


def fail(exc: CoordError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(exc.to_dict(), default=str))
    else:
        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
    sys.exit(exc.exit_code)
