"""Sandboxed installs of tools and MCP servers, and the client-config writer.

Pure of the database and the queue: the wiring turns an approved proposal into an InstallPlan, calls
`install`, stores `InstallOutcome.to_dict()` as install history and retries when `retryable` says so.
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
