"""Pin an MCP server's tools when coord installs it, so `coord mcp verify` has the approved hash from day one.

The install is what a person approved, so the tools the new server lists right after it are the ones to pin
(coord.mcpserver.pinning: `snapshot_tools`, `record_pin`). The server is started as its client would start
it, but inside the install sandbox when there is one: bubblewrap with a read-only system, a private /tmp as
HOME and no network (listing tools needs none). The environment is handed over by the process starter, not
as bwrap arguments, so a secret the entry references never shows in a process list. A remote server (http,
sse) has no process to sandbox: coord connects to it.

When the server cannot be started or listed here (a secret the worker does not have, a server that wants
the network or a writable home, no MCP SDK), the install succeeds as it did before pins were recorded:
the reason is kept (`details.tools_pin`, audit `mcp.tools_not_pinned`) and `coord mcp verify` repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coord import audit
from coord.db.models import Install
from coord.errors import CoordError
from coord.installer.runner import bwrap_argv, resolve_sandbox
from coord.mcpserver.pinning import record_pin, snapshot_tools

ACTOR = "coord"
PIN_TIMEOUT = 30.0  # seconds for the new server to start and list its tools
SANDBOX_HOME = "/tmp"  # bubblewrap's private tmpfs: the only writable place in the sandbox


@dataclass(frozen=True)
class InstallPin:
    """What the install-time snapshot gave: a hash and the tools, or the reason there is none."""

    sandbox: str  # bwrap | none | remote
    tools_hash: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def summary(self) -> dict[str, Any]:
        if self.tools_hash:
            return {"status": "pinned", "sandbox": self.sandbox, "tools": len(self.tools)}
        return {"status": "not_recorded", "sandbox": self.sandbox, "reason": self.reason}


def pin_timeout(settings: Any) -> float:
    return min(PIN_TIMEOUT, settings.install_timeout)


def sandboxed(spec: dict[str, Any], sandbox: str) -> dict[str, Any]:
    """The launch spec to list the tools with: a stdio server wrapped in bubblewrap when sandbox is bwrap."""
    if sandbox != "bwrap" or spec.get("type", "stdio") != "stdio":
        return dict(spec)
    argv = bwrap_argv([spec["command"], *spec.get("args", [])], cwd=Path(SANDBOX_HOME), writable=[],
                      network=False, env={"HOME": SANDBOX_HOME}, clearenv=False)
    return {"command": argv[0], "args": argv[1:], "env": dict(spec.get("env") or {})}


def snapshot_at_install(settings: Any, spec: dict[str, Any]) -> InstallPin:
    """Start the just-installed server (sandboxed when possible) and list its tools; never raises."""
    sandbox = "remote" if spec.get("type", "stdio") != "stdio" else settings.sandbox
    try:
        if sandbox != "remote":
            sandbox = resolve_sandbox(settings.sandbox)
        digest, tools = snapshot_tools(sandboxed(spec, sandbox), timeout=pin_timeout(settings))
    except Exception as exc:  # the pin is an addition: no reason it cannot be taken may fail the install
        reason = exc.message if isinstance(exc, CoordError) else f"{type(exc).__name__}: {exc}"
        return InstallPin(sandbox, reason=reason)
    return InstallPin(sandbox, digest, tools)


def record_at_install(session: Any, install: Install, pin: InstallPin, now: Any) -> None:
    """In the transaction that marks the install `installed`: the pin, or plainly why there is none."""
    install.details = {**(install.details or {}), "tools_pin": pin.summary()}
    if pin.tools_hash:
        record_pin(session, install, pin.tools_hash, pin.tools, actor=ACTOR, now=now)
    else:
        audit.record(session, ACTOR, "mcp.tools_not_pinned", "install", install.id, now, reason=pin.reason,
                     sandbox=pin.sandbox)
