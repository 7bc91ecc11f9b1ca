"""`coord worker`: run the worker daemon in the foreground (systemd runs it as `Type=notify`)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import click
import structlog

from coord.cli.main import CliState, pass_state

log = structlog.get_logger(__name__)


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
    _exit(Daemon(state.config, overrides).run())


def _exit(code: int) -> None:
    """End the daemon's process. A job still running when the grace period is over is abandoned (its outbox
    row is taken again when its lease runs out, invariant 1); its thread may be inside native code, e.g.
    ONNX Runtime loading the model. Finalizing the interpreter under such a thread aborts the process
    (SIGABRT, "terminate called without an active exception"), which systemd records as a crash. So when
    threads are left, the logs are flushed and the process leaves without finalizing."""
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if not left:
        raise SystemExit(code)
    log.warning("worker.abandoned_jobs", threads=left, exit_code=code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def register(cli: click.Group) -> None:
    cli.add_command(worker)
