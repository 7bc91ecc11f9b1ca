"""Agent creation (seed `proposeNewAgent`, `autoCreateAgent`): validate, render, and once allowed, write.

A new agent is proposed with its whole file already rendered from `config/agent-template.md`, so the
person approving reads exactly the bytes that will be written. Writing happens only from the `execute`
job of an approved proposal (coord.execution): the file goes into `settings.agent_create_dir` under a
validated name (lowercase letters, digits, single hyphens: no path can leave the folder), atomically,
and an existing file is never overwritten (invariant 5). The registry learns the agent the way it learns
any file, through the folder-sync path (coord.sync), in the same transaction as the proposal's outcome.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from coord import sync
from coord.agentfiles import agent_path, parse_agent_text, validate_agent_name
from coord.db.backend import Backend
from coord.db.models import Agent, Proposal
from coord.errors import Conflict, InvalidInput, SettingsError
from coord.logs import get_logger
from coord.templates import load_agent_template, render_agent_template

log = get_logger(__name__)

MAX_DESCRIPTION = 2_000
MAX_EXPERTISE = 20
MAX_TAG = 100
MAX_TEXT = 5_000


@dataclass
class AgentProposalSpec:
    """What an agent (or the worker) proposes; the seed's proposal fields."""

    name: str
    description: str
    expertise: list[str]
    body_hint: str = ""
    tools: list[str] | None = None
    model: str = "inherit"
    based_on: str | None = None
    justification: str | None = None
    expected_usage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_spec(spec: AgentProposalSpec) -> list[str]:
    """Every problem with `spec`, as messages a person can act on (the seed's `invalid_proposal` errors)."""
    errors: list[str] = []
    name = spec.name
    if isinstance(name, str) and ("/" in name or "\\" in name or ".." in name or "\x00" in name):
        errors.append(f"agent name {name[:80]!r} must not contain path separators or '..': it names a file")
    else:
        try:
            validate_agent_name(name)
        except InvalidInput as exc:
            errors.append(exc.message)
    if not isinstance(spec.description, str) or not spec.description.strip():
        errors.append("a description is required: it is what other agents are matched on")
    elif len(spec.description) > MAX_DESCRIPTION:
        errors.append(f"the description is over {MAX_DESCRIPTION} characters")
    tags = spec.expertise
    if isinstance(tags, str) or not isinstance(tags, list) or not tags:
        errors.append("expertise must be a non-empty list of areas, such as ['blockchain', 'solidity']")
    else:
        if len(tags) > MAX_EXPERTISE:
            errors.append(f"at most {MAX_EXPERTISE} expertise areas")
        if any(not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG or "\n" in t for t in tags):
            errors.append(f"each expertise area must be one line of 1-{MAX_TAG} characters")
    if spec.tools is not None and (not isinstance(spec.tools, list) or not all(isinstance(t, str) for t in spec.tools)):
        errors.append("tools must be a list of tool names, or omitted to inherit every tool")
    for label in ("body_hint", "justification", "expected_usage"):
        value = getattr(spec, label)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            errors.append(f"{label} must be text of at most {MAX_TEXT} characters")
    return errors


def render_definition(spec: AgentProposalSpec, template_path: Path | None = None) -> str:
    """The agent file's text, from the template; raises InvalidInput / FileFormatError."""
    hint = "\n\n".join(x.strip() for x in (
        spec.body_hint,
        f"Why you exist: {spec.justification}" if spec.justification else "",
        f"Expected usage: {spec.expected_usage}" if spec.expected_usage else "",
    ) if x and x.strip())
    text = render_agent_template(
        load_agent_template(template_path), name=spec.name, description=spec.description,
        expertise=[t.strip() for t in spec.expertise], tools=spec.tools, body_hint=hint, model=spec.model,
    )
    parse_agent_text(text)  # what we propose must read back as a valid agent file
    return text


def create_agent(session: Session, backend: Backend, settings: Any, proposal: Proposal, *,
                 now: datetime) -> dict[str, Any]:
    """Write the approved agent file and register it through the folder-sync path, in the caller's
    transaction; idempotent (a replay finds the same bytes and writes nothing)."""
    spec = proposal.details.get("agent") or {}
    name, text = spec.get("name"), proposal.details.get("definition")
    if not isinstance(name, str) or not isinstance(text, str):
        raise InvalidInput(f"proposal {proposal.id} has no agent definition to write")
    agent = parse_agent_text(text)  # re-validated at write time: the stored text is the approved text
    if agent.name != name:
        raise InvalidInput(f"proposal {proposal.id}: the definition names {agent.name!r}, not {name!r}")
    folder = settings.agent_create_dir
    if folder is None:
        raise SettingsError("no folder to create agents in: set agent_write_dir (or agent_dirs)")
    folder = Path(os.path.abspath(os.path.expanduser(str(folder))))
    path = agent_path(folder, name)  # validated: no separators, no `..`, cannot leave the folder
    if path.is_symlink():
        raise Conflict(f"{path} is a symbolic link; coord does not write through links", path=str(path))
    existing = session.get(Agent, name)
    if existing is not None and existing.status == "active" and existing.source_path != str(path):
        raise Conflict(f"agent {name!r} already exists ({existing.source_path or 'registered via the API'})",
                       agent_id=name)
    # The file first (invariant 5), then the registry through the same code the watcher runs, so the
    # watcher's later event for this file finds nothing to do.
    path, written = sync.write_new_agent(folder, text)
    sync.register_agent_file(session, backend, settings, path, now=now, origin="coord")
    log.info("agent.created", agent_id=name, path=str(path), written=written, proposal_id=proposal.id)
    return {"agent_id": name, "path": str(path), "written": written}


__all__ = ["AgentProposalSpec", "check_spec", "create_agent", "render_definition"]
