"""Sandboxed installs of tools and MCP servers, and the client-config writer.

The modules imported here are pure of the database and the queue. The wiring lives beside them and is
imported on its own: `service` turns an approved proposal into an InstallPlan, runs it as an outbox job
(recording every step, retrying when `retryable` says so) and writes MCP client configs; `history`
lists, shows and rolls back installs.
"""

from coord.installer.install import InstallOutcome, install, rollback, uninstall
from coord.installer.mcpconfig import ConfigChange, add_server, remove_server
from coord.installer.mcpconfig import rollback as rollback_config
from coord.installer.plan import InstallPlan, check_source, parse_plan, source_allowed
from coord.installer.runner import Limits, RunResult, probe_sandbox, run
from coord.installer.steps import InstallOptions

__all__ = [
    "ConfigChange",
    "InstallOptions",
    "InstallOutcome",
    "InstallPlan",
    "Limits",
    "RunResult",
    "add_server",
    "check_source",
    "install",
    "parse_plan",
    "probe_sandbox",
    "remove_server",
    "rollback",
    "rollback_config",
    "run",
    "source_allowed",
    "uninstall",
]
