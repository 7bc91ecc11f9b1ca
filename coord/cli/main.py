"""The `coord` command: one module per command group; this one holds the root and shared options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from coord.cli.output import fail
from coord.errors import CoordError, InvalidInput
from coord.logs import configure_logging
from coord.settings import LoadedSettings, load_settings


@dataclass
class CliState:
    config: str | None
    overrides: dict[str, Any]
    as_json: bool
    verbose: bool = False
    _loaded: LoadedSettings | None = None
    _coordinator: Any = field(default=None, repr=False)

    @property
    def loaded(self) -> LoadedSettings:
        if self._loaded is None:
            self._loaded = load_settings(self.config, self.overrides)
            s = self._loaded.settings
            configure_logging(s.log_level if self.verbose else "warning", s.log_format)
        return self._loaded

    @property
    def settings(self) -> Any:
        return self.loaded.settings

    @property
    def coordinator(self) -> Any:
        if self._coordinator is None:
            from coord.client import Coordinator

            self._coordinator = Coordinator(self.settings)
        return self._coordinator


pass_state = click.make_pass_decorator(CliState)


def parse_json_option(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None


class CoordGroup(click.Group):
    """Maps every CoordError to its message and exit code, once, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CoordError as exc:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            fail(exc, bool(state and state.as_json))


@click.group(cls=CoordGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="TOML settings file (else COORD_CONFIG).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="State directory (else COORD_STATE_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Log events to stderr.")
@click.version_option(package_name="coord")
@click.pass_context
def cli(ctx: click.Context, config: str | None, state_dir: str | None, as_json: bool, verbose: bool) -> None:
    """coord: agents delegate work, find collaborators, and get missing capabilities resolved."""
    ctx.obj = CliState(config=config, overrides={"state_dir": state_dir}, as_json=as_json, verbose=verbose)


def _register() -> None:
    from coord.cli import (
        agents,
        approvals,
        config_cmd,
        core,
        gaps,
        installs,
        mcp_cmd,
        migrate_cmd,
        proposals,
        status,
        tasks,
        worker_cmd,
    )

    for module in (config_cmd, agents, tasks, gaps, core, status, mcp_cmd, approvals, proposals, installs,
                   worker_cmd, migrate_cmd):
        module.register(cli)


_register()


def main() -> None:
    cli(prog_name="coord")
