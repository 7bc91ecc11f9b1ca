"""The `execute` job: carry out an approved proposal (policy `auto`, or a person's approval).

- `create_agent`: write the agent file and register it (coord.creation); the proposal is `executed`.
- `install_tool` / `install_mcp`: record an `installs` row (status `pending`, the structured plan, who
  approved) and hand it to the installer service, `coord.installer.service.execute_install(session,
  install, ctx)`, when that module exists. Until then the install waits, pending, with a log event.
- `repin_mcp`: pin the tools a person approved for a drifted MCP server (coord.mcpserver.pinning);
  the install is `installed` again at once, not at the next `coord mcp verify`.

Idempotent on the proposal: a replayed job finds the proposal executed, or its install row, and adds
nothing. A problem a retry cannot fix (a bad definition, a file in the way, no agent folder) fails the
proposal with the message instead of retrying.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coord import audit, creation
from coord.db.models import Approval, CapabilityGap, Install, Proposal
from coord.errors import Conflict, InvalidInput, NotFound
from coord.ids import new_id
from coord.logs import get_logger
from coord.mcpserver.pinning import REPIN, execute_repin  # no MCP SDK needed: it writes the approved hash

log = get_logger(__name__)

INSTALL_KINDS = {"install_tool": "tool", "install_mcp": "mcp"}
INSTALLER_SERVICE = "coord.installer.service"


def execute(session: Session, backend: Any, settings: Any, proposal_id: str, *, now: datetime,
            ctx: Any = None) -> list[str]:
    proposal = session.get(Proposal, proposal_id)
    if proposal is None:
        raise NotFound(f"proposal {proposal_id!r} vanished before execution")
    if proposal.status != "approved":
        # executing/executed: a replay; rejected/expired/denied: never approved, so nothing runs.
        log.info("execute.skipped", proposal_id=proposal_id, status=proposal.status)
        return []
    approval = session.scalar(select(Approval).where(Approval.proposal_id == proposal.id))
    approved_by = approval.decided_by if approval is not None else "policy"
    if proposal.kind == "create_agent":
        return _create_agent(session, backend, settings, proposal, approved_by, now)
    if proposal.kind in INSTALL_KINDS:
        return _install(session, proposal, approval, approved_by, now, ctx)
    if proposal.kind == REPIN:
        return _repin(session, proposal, now)
    finish_proposal(session, proposal, "failed", now, error=f"a {proposal.kind} proposal cannot be executed")
    return []


def _create_agent(session: Session, backend: Any, settings: Any, proposal: Proposal, approved_by: str | None,
                  now: datetime) -> list[str]:
    try:
        with session.begin_nested():  # a refused write leaves the registry as it was
            result = creation.create_agent(session, backend, settings, proposal, now=now)
    except (InvalidInput, Conflict) as exc:  # includes SettingsError and FileFormatError
        finish_proposal(session, proposal, "failed", now, error=exc.message)
        return []
    finish_proposal(session, proposal, "executed", now, result=result)
    audit.record(session, approved_by or "policy", "agent.created", "agent", result["agent_id"], now,
                 proposal_id=proposal.id, path=result["path"])
    return []


def _repin(session: Session, proposal: Proposal, now: datetime) -> list[str]:
    install_id = (proposal.details or {}).get("install_id")
    try:
        execute_repin(session, proposal, now)
    except NotFound as exc:  # the install row is gone: no retry brings it back
        finish_proposal(session, proposal, "failed", now, error=exc.message)
        return []
    if proposal.status != "executed":
        # Only a re-pin of the install's current pin applies: a newer one has been approved since.
        finish_proposal(session, proposal, "failed", now, error=(
            f"install {install_id} is no longer pinned to the hash this re-pin replaces; "
            "run `coord mcp verify` again to see its tools now"))
        return []
    install = session.get(Install, install_id)
    finish_proposal(session, proposal, "executed", now,
                    result={"install_id": install_id, "tools_hash": install.tools_hash, "status": install.status})
    return []


def _install(session: Session, proposal: Proposal, approval: Approval | None, approved_by: str | None,
             now: datetime, ctx: Any) -> list[str]:
    install = session.scalar(select(Install).where(Install.proposal_id == proposal.id))
    if install is None:
        details = proposal.details
        name = details.get("short_name") or details.get("tool") or "?"
        plan = dict(details.get("plan") or {})
        if proposal.kind == "install_mcp":
            plan["launch_spec"] = details.get("launch_spec")
            plan["server"] = details.get("server")
        install = Install(id=new_id(), proposal_id=proposal.id, approval_id=approval.id if approval else None,
                          kind=INSTALL_KINDS[proposal.kind], name=name, plan=plan, status="pending",
                          approved_by=approved_by, created_at=now)
        session.add(install)
        session.flush()
        audit.record(session, approved_by or "policy", "install.requested", "install", install.id, now,
                     proposal_id=proposal.id, name=name)
    proposal.status, proposal.updated_at = "executing", now
    try:
        service = importlib.import_module(INSTALLER_SERVICE)
    except ModuleNotFoundError as exc:
        if exc.name != INSTALLER_SERVICE:
            raise
        log.info("install.pending", install_id=install.id, proposal_id=proposal.id, name=install.name,
                 reason="the installer service is not available yet; the install stays pending")
        return []
    return service.execute_install(session, install, ctx) or []


def finish_proposal(session: Session, proposal: Proposal, status: str, now: datetime, *, error: str | None = None,
            result: dict[str, Any] | None = None) -> None:
    proposal.status, proposal.updated_at = status, now
    proposal.details = {**proposal.details, "execution": {"status": status, "at": now.isoformat(),
                                                          **({"error": error} if error else {}),
                                                          **({"result": result} if result else {})}}
    if proposal.gap_id:
        gap = session.get(CapabilityGap, proposal.gap_id)
        if gap is not None and status == "executed":
            gap.resolution_status = "resolved"
            gap.resolution_details = {**(gap.resolution_details or {}), "resolved_by": proposal.id}
    if error:
        log.warning("execute.failed", proposal_id=proposal.id, error=error)


__all__ = ["execute"]
