"""Tool pinning: the defence against an MCP server that changes its tool descriptions after approval.

A server's tools are what a model reads and obeys, so an approved server that later rewrites a tool
description (or widens a schema) is a new, unapproved server. At approval we start the server with the
SDK's client, list its tools and store a hash of their names, descriptions and input schemas
(`snapshot_tools` + `record_pin`: installs.tools_hash, with the tool list in the audit log for the
approver and for diffs). `coord mcp verify NAME` starts it again and compares: a different hash is
drift, the install is marked `drifted` and must be approved again.

The hash is sha256 over canonical JSON (keys sorted, no whitespace, tools sorted by name), so it does
not depend on the order a server lists its tools in or on how its JSON is formatted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from coord import audit
from coord.db.models import Approval, AuditEvent, Install, Proposal
from coord.errors import Conflict, CoordError, InvalidInput, NotFound, Unavailable
from coord.ids import new_id
from coord.logs import get_logger
from coord.mcpserver import require_sdk

log = get_logger("coord.mcpserver.pinning")

PINNED_FIELDS = ("name", "description", "inputSchema")
DEFAULT_TIMEOUT = 30.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STDERR_TAIL = 2000


# --- hashing -------------------------------------------------------------------------------------------
def canonical_tools(tools: Iterable[Any]) -> list[dict[str, Any]]:
    """The pinned part of each tool (SDK Tool models or wire dicts), sorted by name."""
    out = []
    for tool in tools:
        wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(tool, "model_dump") else tool
        out.append({
            "name": wire["name"],
            "description": wire.get("description") or "",
            "inputSchema": wire.get("inputSchema") or {},
        })
    return sorted(out, key=lambda t: (t["name"], _canonical_json(t)))


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tools_hash(tools: Iterable[Any]) -> str:
    return hashlib.sha256(_canonical_json(canonical_tools(tools)).encode("utf-8")).hexdigest()


def diff_tools(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, list[str]]:
    old = {t["name"]: t for t in before}
    new = {t["name"]: t for t in after}
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(n for n in set(old) & set(new) if _canonical_json(old[n]) != _canonical_json(new[n])),
    }


# --- starting a server and listing its tools -------------------------------------------------------------
def expand(value: str, env: Mapping[str, str]) -> str:
    """Claude Code's expansion: `${VAR}` and `${VAR:-default}`; an unset `${VAR}` stays literal."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and (env[name] or default is None):
            return env[name]  # `${VAR:-x}` also takes the default when VAR is empty, as in the shell
        return default if default is not None else m.group(0)

    return _VAR.sub(sub, value)


def snapshot_tools(
    launch_spec: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Start the server a client-config entry describes, list its tools, and return (hash, tools).

    `launch_spec` is an `mcpServers` entry: `{"command", "args", "env"}` (stdio) or `{"type": "http"|"sse",
    "url", "headers"}`. `${VAR}` references are expanded from `env` (default: this process's environment)
    as the client would. Raises Unavailable (with the server's stderr tail) when it cannot be listed.
    """
    require_sdk()
    import anyio

    env = os.environ if env is None else env
    tools = anyio.run(_list_tools, dict(launch_spec), timeout, env)
    canon = canonical_tools(tools)
    return tools_hash(canon), canon


async def _list_tools(spec: dict[str, Any], timeout: float, env: Mapping[str, str]) -> list[Any]:
    import anyio
    from mcp import ClientSession

    kind = spec.get("type", "stdio")
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            with anyio.fail_after(timeout):
                async with _transport(spec, kind, env, errlog) as (read, write), ClientSession(read, write) as s:
                    await s.initialize()
                    tools, cursor = [], None
                    while True:
                        page = await s.list_tools(params=_page(cursor))
                        tools += page.tools
                        cursor = page.next_cursor
                        if not cursor:
                            return tools
        except CoordError:
            raise
        except Exception as exc:
            errlog.seek(0)
            tail = errlog.read()[-_STDERR_TAIL:].strip()
            what = spec.get("url") or " ".join([spec.get("command", "?"), *spec.get("args", [])])
            reason = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else _leaf(exc)
            raise Unavailable(
                f"could not list the tools of MCP server `{what}`: {reason}" + (f"; its stderr: {tail}" if tail else "")
            ) from None


def _page(cursor: str | None) -> Any:
    from mcp_types import PaginatedRequestParams

    return PaginatedRequestParams(cursor=cursor) if cursor else None


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _transport(spec: dict[str, Any], kind: str, env: Mapping[str, str], errlog: Any) -> Any:
    if kind == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        if not isinstance(spec.get("command"), str) or not spec["command"]:
            raise InvalidInput("a stdio launch spec needs a `command`")
        params = StdioServerParameters(
            command=expand(spec["command"], env),
            args=[expand(str(a), env) for a in spec.get("args", [])],
            env={k: expand(str(v), env) for k, v in (spec.get("env") or {}).items()},
            cwd=spec.get("cwd"),
        )
        return stdio_client(params, errlog=errlog)
    if kind in ("http", "sse"):
        url = expand(str(spec.get("url", "")), env)
        headers = {k: expand(str(v), env) for k, v in (spec.get("headers") or {}).items()}
        if kind == "sse":
            from mcp.client.sse import sse_client

            return sse_client(url, headers=headers)
        return _streamable_http(url, headers)
    raise InvalidInput(f"launch spec type {kind!r} is not one of stdio, http, sse")


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    import httpx2  # the SDK's HTTP client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=30.0) as client, \
            streamable_http_client(url, http_client=client) as streams:
        yield streams


# --- install records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyReport:
    name: str
    install_id: str
    status: str  # clean | drifted
    pinned_hash: str
    current_hash: str
    tools: list[dict[str, Any]]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    approval_id: str | None = None
    repinned_by: str | None = None  # an approved re-pin applied just before this check
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _server_names(install: Install) -> set[str]:
    """The install's catalog name, and the key(s) its client-config entries were written under."""
    names = {install.name, (install.details or {}).get("server_key")}
    names |= {c.get("name") for c in install.changes or [] if isinstance(c, dict)}
    return {n for n in names if isinstance(n, str) and n}


def find_install(session: Any, name: str) -> Install:
    """The newest MCP install (not rolled back) named `name`, by catalog name or client-config server name."""
    rows = session.scalars(
        select(Install).where(Install.kind == "mcp", Install.rolled_back_at.is_(None)).order_by(
            Install.created_at.desc(), Install.id.desc()
        )
    )
    for install in rows:
        if name in _server_names(install):
            return install
    raise NotFound(f"no installed MCP server named {name!r} (see `coord installs ls --kind mcp`)", name=name)


def launch_spec_of(install: Install, extra_config_files: Iterable[Path] = ()) -> dict[str, Any]:
    """How a client starts this install, in this order: the entry now in a client config file the install
    wrote (what actually runs, later edits included); the entry recorded with that change; the launch spec
    the installer resolved (`details.launch_spec`) or execution recorded (`plan.launch_spec`); an entry of
    that name in one of the `mcp_config_files` settings."""
    changes = [c for c in install.changes or [] if isinstance(c, dict)]
    for change in changes:
        if change.get("path"):
            entry = _entry_in(Path(change["path"]), change.get("name") or install.name)
            if entry is not None:
                return entry
    recorded = [c.get("entry") for c in changes] + [(install.details or {}).get("launch_spec"),
                                                     (install.plan or {}).get("launch_spec")]
    for entry in recorded:
        if isinstance(entry, dict):
            return entry
    for path in extra_config_files:
        for name in sorted(_server_names(install)):
            entry = _entry_in(Path(path), name)
            if entry is not None:
                return entry
    raise NotFound(f"cannot find how to start MCP server {install.name!r}: no client config file its install "
                   "wrote still has its entry, and no launch spec was recorded", install_id=install.id)


def _entry_in(path: Path, name: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = doc.get("mcpServers", {}).get(name) if isinstance(doc, dict) else None
    return entry if isinstance(entry, dict) else None


def record_pin(session: Any, install: Install, digest: str, tools: list[dict[str, Any]], *, actor: str,
               now: Any) -> None:
    """Store the approved tool hash, and the tool list in the audit log (for the approver and for diffs).

    The installer/approval side calls this with what `snapshot_tools` returned once the approved server
    runs; re-pinning a drifted install makes it `installed` again.
    """
    install.tools_hash = digest
    if install.status == "drifted":
        install.status = "installed"
    audit.record(session, actor, "mcp.tools_pinned", "install", install.id, now, tools_hash=digest, tools=tools)


def pinned_tools(session: Any, install: Install) -> list[dict[str, Any]] | None:
    """The tool list recorded with the install's current pin, for diffs; None when not recorded."""
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.subject_type == "install", AuditEvent.subject_id == install.id,
                                 AuditEvent.action == "mcp.tools_pinned").order_by(AuditEvent.id.desc())
    )
    for event in events:
        if (event.details or {}).get("tools_hash") == install.tools_hash:
            return list(event.details.get("tools") or [])
    return None


def pin_install(coordinator: Any, name: str, *, actor: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, list]:
    """Snapshot an install's tools now and pin them: what recording an approved install's tools amounts to."""
    with coordinator.db.reader() as s:
        install = find_install(s, name)
        spec, install_id = launch_spec_of(install, coordinator.settings.mcp_config_files), install.id
    digest, tools = snapshot_tools(spec, timeout=timeout)
    with coordinator.db.session() as s:
        record_pin(s, s.get(Install, install_id), digest, tools, actor=actor, now=coordinator.now())
    log.info("mcp.tools_pinned", install_id=install_id, name=name, tools_hash=digest, tools=len(tools))
    return digest, tools


def verify_install(coordinator: Any, name: str, *, actor: str = "coord", timeout: float = DEFAULT_TIMEOUT
                   ) -> VerifyReport:
    """Start the installed server, hash its tools and compare with the pin. Drift marks the install
    `drifted`, audits the difference and asks a person to approve the new tools; the report says what changed.
    A re-pin a person has approved since is applied first."""
    with coordinator.db.session() as s:
        install = find_install(s, name)
        repinned_by = apply_approved_repins(s, install, coordinator.now())
        if not install.tools_hash:
            # The installer records why it could not pin (coord.installer.toolpin): say it again here.
            why = ((install.details or {}).get("tools_pin") or {}).get("reason")
            raise Conflict(f"MCP server {name!r} has no pinned tool hash: its tools were never recorded when it "
                           "was approved, so there is nothing to verify against"
                           + (f" (at install: {why})" if why else ""), install_id=install.id)
        spec = launch_spec_of(install, coordinator.settings.mcp_config_files)
        install_id, pinned, before = install.id, install.tools_hash, pinned_tools(s, install)
    digest, tools = snapshot_tools(spec, timeout=timeout)
    if digest == pinned:
        return VerifyReport(name, install_id, "clean", pinned, digest, tools, repinned_by=repinned_by,
                            message=f"{name}: its {len(tools)} tools match the approved pin")
    delta = diff_tools(before, tools) if before is not None else {"added": [], "removed": [], "changed": []}
    now = coordinator.now()
    with coordinator.db.session() as s:
        install = s.get(Install, install_id)
        install.status = "drifted"
        details = {"install_id": install_id, "name": install.name, "pinned_hash": pinned, "tools_hash": digest,
                   **delta, "tools": tools}
        audit.record(s, actor, "mcp.tools_drifted", "install", install_id, now, **details)
        approval_id, how, outbox = request_reapproval(s, coordinator, install, details, now)
    coordinator._ring(outbox)
    log.warning("mcp.tools_drifted", install_id=install_id, name=name, pinned_hash=pinned, current_hash=digest,
                approval_id=approval_id, **delta)
    what = "; ".join(f"{k}: {', '.join(v)}" for k, v in delta.items() if v) or "no tool list was kept with the pin"
    return VerifyReport(
        name, install_id, "drifted", pinned, digest, tools, approval_id=approval_id, repinned_by=repinned_by,
        message=f"{name}: its tools changed since approval ({what}); the install is marked drifted and "
                f"needs approval again. {how}",
        **delta,
    )


# --- approving the new tools again -------------------------------------------------------------------------
REPIN = "repin_mcp"  # the proposal kind: "pin these tools of install X" (details: install_id, tools_hash, tools)
REPIN_SAFETY = 0.5  # a server that rewrote its instructions after approval: read the new descriptions first


def request_reapproval(session: Any, coordinator: Any, install: Install, details: dict[str, Any], now: Any
                       ) -> tuple[str | None, str, list[str]]:
    """Open a pending approval for pinning the drifted tools (once per install and tool hash), through the
    approvals module; (approval id, what to tell the person, outbox ids to ring after commit)."""
    try:
        from coord import approvals
        from coord.policy import Decision
    except ImportError:
        return None, ("This version has no approvals module: the drift is in the audit log (action "
                      "mcp.tools_drifted) for a person to act on."), []
    key = f"{REPIN}:{install.id}:{details['tools_hash']}"
    proposal = session.scalar(select(Proposal).where(Proposal.dedupe_key == key))
    if proposal is None:
        proposal = Proposal(
            id=new_id(), gap_id=None, kind=REPIN, details=details, proposed_by="coordination-system",
            confidence=1.0, confidence_basis={"source": "coord mcp verify", "rule": "tool hash differs from pin"},
            status="pending_approval", dedupe_key=key, created_at=now, updated_at=now,
        )
        session.add(proposal)
        session.flush()
    changed = ", ".join(details["changed"] + details["added"] + details["removed"]) or "unknown tools"
    decision = Decision("needs_approval", "tool_drift",
                        f"MCP server {install.name!r} changed its tools after approval ({changed}); read the new "
                        "descriptions before approving them", REPIN_SAFETY, ("tool descriptions changed",))
    approval_id, outbox = approvals.request(session, coordinator.db.backend, coordinator.settings, proposal,
                                            decision, now=now)
    return approval_id, (f"Approval {approval_id} is pending: `coord approvals show {approval_id}`; once a person "
                         "approves it, the next `coord mcp verify` pins the new tools."), outbox


def apply_approved_repins(session: Any, install: Install, now: Any) -> str | None:
    """Pin the tools a person approved for this install, oldest approval first; returns who approved the
    last one applied. Only a re-pin of the install's current pin applies, so an old approval never rolls
    a newer pin back. Safe to call from the execute job as well (a second call finds nothing to do)."""
    rows = session.execute(
        select(Proposal, Approval).join(Approval, Approval.proposal_id == Proposal.id)
        .where(Proposal.kind == REPIN, Proposal.status != "executed", Approval.status == "approved")
        .order_by(Approval.decided_at, Approval.id)
    ).all()
    applied = None
    for proposal, approval in rows:
        d = proposal.details or {}
        if d.get("install_id") != install.id or d.get("pinned_hash") != install.tools_hash:
            continue
        record_pin(session, install, d["tools_hash"], d.get("tools") or [], actor=approval.decided_by or "?", now=now)
        proposal.status, proposal.updated_at = "executed", now
        applied = approval.decided_by
    return applied


def execute_repin(session: Any, proposal: Proposal, now: Any) -> str | None:
    """The execute job's handler for an approved `repin_mcp` proposal (same effect as the next verify)."""
    install = session.get(Install, (proposal.details or {}).get("install_id"))
    if install is None:
        raise NotFound(f"the install of re-pin proposal {proposal.id} no longer exists")
    return apply_approved_repins(session, install, now)
