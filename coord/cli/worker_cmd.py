"""`coord worker`: run the worker daemon in the foreground (systemd runs it as `Type=notify`)."""

from __future__ import annotations

import click

from coord.cli.main import CliState, pass_state


@click.command()
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), help="Workers (else worker_concurrency).")
@click.option("--worker-type", type=click.Choice(["thread", "process"]), help="Else worker_type.")
@pass_state
def worker(state: CliState, concurrency: int | None, worker_type: str | None) -> None:
    """Run the worker daemon: queue consumer, periodic jobs, agent-folder watcher.

    SIGTERM stops it gracefully (running jobs get shutdown_grace_seconds), SIGHUP reloads the settings
    that can change live, SIGINT stops it at once. Logs go to stderr (JSON off a terminal).
    """
    from worker.daemon import Daemon

    overrides = {**state.overrides, "worker_concurrency": concurrency, "worker_type": worker_type}
    raise SystemExit(Daemon(state.config, overrides).run())


def register(cli: click.Group) -> None:
    cli.add_command(worker)
