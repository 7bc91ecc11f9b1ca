"""Proposals (seed `proposeResolution` and friends): what could close a capability gap, and how sure we are.

A gap gets its proposals from the worker's `propose` job (`propose_for_gap`). Each builder turns a gap
into `Draft`s; `save` stores a draft once per `dedupe_key` (so repeated or overlapping gaps do not pile
up copies), scores it (coord.confidence), asks the policy (coord.policy) and routes it, in the caller's
transaction:

    auto            -> status `approved`, outbox `execute`
    needs_approval  -> status `pending_approval`, an approval row (coord.approvals), notifier jobs
    denied          -> status `denied`, the reason kept in `details.policy`
    not actionable  -> status `proposed` (a search, a workaround: information for agents and people)
                       or `invalid` (an agent proposal that failed validation)

Builders per gap type: `tool` (catalog hit -> structured install plan; miss -> `search_required` with
the closest names), `mcp` (catalog hit -> install steps + the client launch spec; miss -> alternatives),
`agent` / `expertise` (a new agent rendered from the template, see coord.creation), and for every type
a `workaround` when an existing agent covers part of the need.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coord import approvals, audit, creation
from coord.catalog import Catalog, load_catalog, shipped_config_dir
from coord.confidence import Evidence, score
from coord.db.backend import Backend, insert_ignore, query_words
from coord.db.models import Agent, Approval, CapabilityGap, Install, Proposal
from coord.errors import CoordError, NotFound
from coord.gaps import normalize_gap_name
from coord.ids import check_id, new_id
from coord.installer.plan import source_allowed
from coord.logs import get_logger
from coord.matching.catalog_match import semantic_mcp, semantic_tool
from coord.matching.hybrid import ranker_for, similar_agents
from coord.outbox import add_job
from coord.policy import Action, decide
from coord.results import AgentProposalResult, ProposalInfo
from coord.states import JOB_EXECUTE

log = get_logger(__name__)

SYSTEM = "coordination-system"  # the author of proposals the worker makes; never a valid approver
# A proposal whose dedupe key is held by one of these may be proposed afresh (the key is retired);
# `rejected` is kept: a person said no, and a new report must not ask them again.
RETIRABLE = ("expired", "denied", "failed")
MAX_SUGGESTIONS = 5
_GENERIC_AGENT_WORDS = {"agent", "expert", "specialist", "assistant", "bot"}

Ranker = Callable[..., list]


@dataclass
class Draft:
    """A proposal before it is stored: what to do, why, and the facts the policy and the score need."""

    kind: str  # install_tool | install_mcp | create_agent | workaround
    dedupe_key: str
    details: dict[str, Any]
    evidence: Evidence
    action: Action | None = None  # None: nothing to execute (a search, a workaround, an invalid spec)
    proposed_by: str = SYSTEM
    id: str | None = None
    invalid: bool = False


@dataclass
class Saved:
    proposal: Proposal
    created: bool
    outbox: list[str] = field(default_factory=list)
    approval_id: str | None = None


# ---------------------------------------------------------------------------------------- catalogs


def catalog_paths(settings: Any) -> list[Path]:
    """The shipped catalog, then the user's (`catalog_paths`): a later entry replaces an earlier one."""
    return [shipped_config_dir(), *[Path(p).expanduser() for p in settings.catalog_paths]]


def load_catalog_for(settings: Any) -> Catalog:
    catalog = load_catalog(catalog_paths(settings))
    for issue in catalog.errors:  # a broken user entry hides only itself; say which one
        log.warning("catalog.issue", issue=str(issue))
    return catalog


# ---------------------------------------------------------------------------------------- builders


def _trust(source: str | None, installer: str | None, settings: Any) -> str:
    if installer == "manual":
        return "manual"
    if not source or not source_allowed(source, settings.allowed_install_sources)[0]:
        return "not_allowed"
    return "remote" if installer == "remote" else "allowed"


def _failed_installs(session: Session, kind: str, name: str) -> int:
    return int(session.scalar(
        select(func.count()).select_from(Install).where(Install.kind == kind, Install.name == name,
                                                        Install.status == "failed")) or 0)


def tool_drafts(session: Session, settings: Any, catalog: Catalog, name: str) -> list[Draft]:
    match = catalog.find_tool(name) or semantic_tool(catalog, name, settings)
    if match is None:
        closest = catalog.closest_tools(name, MAX_SUGGESTIONS)
        suggestions = [{"name": m.entry.name, "similarity": round(m.similarity, 4),
                        "description": m.entry.description} for m in closest]
        evidence = Evidence("search", closest[0].similarity if closest else 0.0)
        details = {"method": "search_required", "query": name, "suggestions": suggestions}
        return [Draft("install_tool", f"search_tool:{name}", details, evidence)]
    entry = match.entry
    trust = _trust(entry.source, entry.installer, settings)
    evidence = Evidence(match.how, match.similarity, trust=trust, pinned=entry.pinned,  # type: ignore[arg-type]
                        notes={"matched": match.matched})
    plan = None if entry.installer == "manual" else {
        "kind": "tool", "name": entry.name, "installer": entry.installer, "package": entry.package,
        "version": entry.version, "source": entry.source, "commit": entry.commit, "allow_sdist": entry.allow_sdist,
        "bins": list(entry.bins), "verify": list(entry.verify),
    }
    details = {
        "method": entry.installer, "tool": entry.name, "matched": match.matched, "how": match.how,
        "description": entry.description, "source": entry.source, "pinned": entry.pinned,
        "plan": plan, "verification": list(entry.verify),
        **({"manual_steps": entry.manual_steps} if entry.manual_steps else {}),
    }
    action = Action("install_tool", 0.0, source=entry.source, installer=entry.installer, pinned=entry.pinned,
                    failed_attempts=_failed_installs(session, "tool", entry.name))
    return [Draft("install_tool", f"install_tool:{entry.name}", details, evidence, action)]


def _install_package(entry: Any) -> Any:
    """The package the default launch spec runs (the catalog's rule: the first stdio npm/pypi/oci one)."""
    return next((p for p in entry.packages
                 if p.registry_type in ("npm", "pypi", "oci") and p.transport.type == "stdio"), None)


def mcp_drafts(session: Session, settings: Any, catalog: Catalog, name: str,
               env: Mapping[str, str]) -> list[Draft]:
    match = catalog.find_mcp(name) or semantic_mcp(catalog, name, settings)
    if match is None:
        closest = catalog.closest_mcp(name, MAX_SUGGESTIONS)
        alternatives = [{"name": m.entry.name, "short_name": m.entry.short_name, "similarity": round(m.similarity, 4),
                         "description": m.entry.description} for m in closest]
        evidence = Evidence("search", closest[0].similarity if closest else 0.0)
        details = {"status": "unknown_server", "query": name, "alternatives": alternatives}
        return [Draft("install_mcp", f"unknown_mcp:{name}", details, evidence)]
    entry = match.entry
    package = _install_package(entry)
    if package is not None:
        installer = {"npm": "npm", "pypi": "pip"}.get(package.registry_type, package.registry_type)
        source = f"{package.registry_type}:{package.identifier}"
        plan: dict[str, Any] | None = {
            "kind": "mcp", "name": entry.short_name, "installer": installer, "package": package.identifier,
            "version": package.version, "source": source,
            "bins": [entry.meta.coord.bin or package.identifier.rsplit("/", 1)[-1]],
        }
    else:
        installer, plan = "remote", None
        source = f"remote:{urlsplit(entry.remotes[0].url or '').hostname or '?'}"
    launch = entry.launch_spec(prefer_remote=package is None)
    secrets = entry.required_secrets if package is not None else _remote_secrets(launch)
    missing = tuple(s for s in secrets if not env.get(s))
    evidence = Evidence(match.how, match.similarity, missing, _trust(source, installer, settings),  # type: ignore[arg-type]
                        notes={"matched": match.matched})
    steps: list[dict[str, Any]] = [{"action": "install", "plan": plan}] if plan else []
    steps.append({"action": "configure", "server_key": entry.short_name, "launch_spec": launch})
    details = {
        "server": entry.name, "short_name": entry.short_name, "matched": match.matched, "how": match.how,
        "description": entry.description, "version": entry.version, "source": source, "installer": installer,
        "steps": steps, "launch_spec": launch, "plan": plan,
        "required_secrets": list(secrets), "missing_secrets": list(missing),
    }
    action = Action("install_mcp", 0.0, source=source, installer=installer, pinned=True,
                    failed_attempts=_failed_installs(session, "mcp", entry.short_name), secrets=tuple(secrets))
    return [Draft("install_mcp", f"install_mcp:{entry.name}", details, evidence, action)]


def _remote_secrets(launch: dict[str, Any]) -> tuple[str, ...]:
    text = " ".join(str(v) for v in (launch.get("headers") or {}).values()) + " " + str(launch.get("url", ""))
    return tuple(dict.fromkeys(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)))


def coverage(need: str, candidate: Any) -> float:
    """The share of the need's words an existing agent covers (its tags, then its description words)."""
    words = [w for w in query_words(need.replace("-", " ")) if w not in _GENERIC_AGENT_WORDS]
    if not words:
        return 0.0
    tags = {w.removeprefix("tag:") for w in candidate.why if w.startswith("tag:")}
    tag_words = {part for t in tags for part in re.split(r"[-\s]+", t)}
    described = set(query_words(candidate.description))
    covered = [w for w in words if w in tag_words or w in described]
    return len(covered) / len(words)


def workaround_drafts(session: Session, backend: Backend, need: str, gap: CapabilityGap,
                      ranker: Ranker) -> list[Draft]:
    exclude = (gap.requested_by,)
    candidates = ranker(session, backend, need.replace("-", " "), limit=MAX_SUGGESTIONS, exclude=exclude)
    scored = [(coverage(need, c), c) for c in candidates]
    scored = [(share, c) for share, c in scored if share > 0]
    if not scored:
        return []
    scored.sort(key=lambda sc: (-sc[0], -sc[1].score, sc[1].agent_id))
    share, best = scored[0]
    details = {
        "method": "use_existing_agent", "need": need, "agent": best.agent_id,
        "alternatives": [{"agent_id": c.agent_id, "coverage": round(s, 4), "score": c.score, "why": c.why}
                         for s, c in scored],
        "suggestion": f"delegate to {best.agent_id!r}, which covers {share:.0%} of {need!r}",
    }
    evidence = Evidence("partial", share, trust="internal", notes={"agent": best.agent_id})
    return [Draft("workaround", f"workaround:{gap.id}:{best.agent_id}", details, evidence)]


def _agent_name_for(gap: CapabilityGap) -> str:
    if gap.capability_type == "agent":
        return gap.name  # the name someone delegated to: used as is, or refused (never repaired)
    slug = re.sub(r"[^a-z0-9]+", "-", gap.name.lower()).strip("-")
    slug = "-".join(p for p in slug.split("-") if p not in _GENERIC_AGENT_WORDS)[:50].strip("-")
    return f"{slug}-expert" if slug else ""


def agent_drafts(session: Session, backend: Backend, settings: Any, gap: CapabilityGap, ranker: Ranker) -> list[Draft]:
    name = _agent_name_for(gap)
    if gap.capability_type == "agent":
        need = " ".join(w for w in query_words(name.replace("-", " ")) if w not in _GENERIC_AGENT_WORDS) or gap.name
        description = f"Takes on {need} work: the tasks other agents delegate to {name}."
    else:
        need = gap.name
        description = f"Expert in {need}: takes on tasks and questions that need {need} expertise."
    spec = creation.AgentProposalSpec(
        name=name, description=description, expertise=[need], body_hint=_body_hint(gap),
    )
    drafts = [agent_draft(session, settings, spec, proposed_by=SYSTEM, gap_key=gap.id)]
    return drafts + workaround_drafts(session, backend, need, gap, ranker)


def _body_hint(gap: CapabilityGap) -> str:
    hint = (f"coord created you to close a recorded gap ({gap.capability_type} {gap.display_name!r}), first "
            f"reported by {gap.requested_by}.")
    task = gap.context.get("task") if isinstance(gap.context, dict) else None
    first = (task.get("task") or task.get("title")) if isinstance(task, dict) else task
    if isinstance(first, str) and first.strip():
        hint += f" The first request was: {first.strip()[:500]}"
    return hint


def agent_draft(session: Session, settings: Any, spec: creation.AgentProposalSpec, *, proposed_by: str,
                gap_key: str | None = None, draft_id: str | None = None) -> Draft:
    """A `create_agent` draft; invalid specs become an `invalid` draft carrying the errors."""
    errors = creation.check_spec(spec)
    existing = session.get(Agent, spec.name) if not errors else None
    if existing is not None:
        errors.append(f"an agent named {spec.name!r} is already registered; choose another name"
                      if existing.status == "active" else
                      f"an agent named {spec.name!r} was removed; restore its file, or choose another name")
    definition = None
    if not errors:
        try:
            definition = creation.render_definition(spec)
        except CoordError as exc:
            errors.append(exc.message)
    if errors:
        details = {"status": "invalid_proposal", "errors": errors, "requested_name": spec.name[:200]}
        key = f"invalid_agent:{gap_key or draft_id or new_id()}"
        return Draft("create_agent", key, details, Evidence("search", 0.0), None, proposed_by, draft_id, True)
    details = {
        "agent": spec.to_dict(), "definition": definition,
        "folder": str(settings.agent_create_dir) if settings.agent_create_dir else None,
    }
    action = Action("create_agent", 0.0)
    return Draft("create_agent", f"create_agent:{spec.name}", details, Evidence("template", 1.0, trust="internal"),
                 action, proposed_by, draft_id)


def drafts_for_gap(session: Session, backend: Backend, settings: Any, gap: CapabilityGap, *, catalog: Catalog,
                   env: Mapping[str, str], ranker: Ranker) -> list[Draft]:
    if gap.capability_type == "tool":
        drafts = tool_drafts(session, settings, catalog, gap.display_name)
        return drafts + workaround_drafts(session, backend, gap.name, gap, ranker)
    if gap.capability_type == "mcp":
        drafts = mcp_drafts(session, settings, catalog, gap.display_name, env)
        return drafts + workaround_drafts(session, backend, gap.name, gap, ranker)
    return agent_drafts(session, backend, settings, gap, ranker)


# ---------------------------------------------------------------------------------------- storing


def save(session: Session, backend: Backend, settings: Any, draft: Draft, *, gap_id: str | None,
         now: datetime) -> Saved:
    """Store `draft` unless its dedupe key is taken; score it, ask the policy and route it."""
    existing = session.scalar(select(Proposal).where(Proposal.dedupe_key == draft.dedupe_key))
    if existing is not None and existing.status in RETIRABLE:
        existing.dedupe_key = f"{draft.dedupe_key}#{existing.id}"[:300]  # history stays; the key frees up
        session.flush()
        existing = None
    if existing is not None:
        return Saved(existing, False)

    confidence = score(draft.evidence)
    details = dict(draft.details)
    action = replace(draft.action, confidence=confidence.value) if draft.action else None
    decision = decide(action, settings) if action else None
    if decision is not None:
        details["policy"] = decision.to_dict()
    status = ("invalid" if draft.invalid else "proposed") if decision is None else {
        "auto": "approved", "needs_approval": "pending_approval", "denied": "denied"}[decision.outcome]
    proposal_id = draft.id or new_id()
    values = dict(
        id=proposal_id, gap_id=gap_id, kind=draft.kind, details=details, proposed_by=draft.proposed_by,
        confidence=confidence.value, confidence_basis=confidence.basis, status=status,
        dedupe_key=draft.dedupe_key, created_at=now, updated_at=now,
    )
    if not insert_ignore(session, backend, Proposal.__table__, values):
        # Another transaction stored the same key (or this id) first: theirs stands.
        taken = session.scalar(select(Proposal).where(Proposal.dedupe_key == draft.dedupe_key))
        return Saved(taken or session.get(Proposal, proposal_id), False)
    proposal = session.get(Proposal, proposal_id)
    audit.record(session, draft.proposed_by, "proposal.created", "proposal", proposal_id, now,
                 kind=draft.kind, status=status, confidence=confidence.value, gap_id=gap_id,
                 decision=decision.to_dict() if decision else None)
    saved = Saved(proposal, True)
    if decision is None:
        return saved
    if decision.outcome == "auto":
        audit.record(session, "policy", "proposal.approved", "proposal", proposal_id, now, rule=decision.rule)
        saved.outbox.append(add_job(session, backend, JOB_EXECUTE, proposal_id, now=now,
                                    max_attempts=settings.outbox_max_attempts))
    elif decision.outcome == "needs_approval":
        approval_id, outbox = approvals.request(session, backend, settings, proposal, decision, now=now)
        saved.approval_id = approval_id
        saved.outbox += outbox
    log.info("proposal.created", proposal_id=proposal_id, kind=draft.kind, status=status,
             confidence=confidence.value, gap_id=gap_id, rule=decision.rule)
    return saved


def propose_for_gap(
    session: Session,
    backend: Backend,
    settings: Any,
    gap_id: str,
    *,
    now: datetime,
    catalog: Catalog | None = None,
    env: Mapping[str, str] | None = None,
    ranker: Ranker | None = None,
) -> list[str]:
    """The `propose` job: store the gap's proposals, mark it in progress. Returns outbox ids to ring.

    Idempotent: a second run finds every dedupe key taken and changes nothing.
    """
    gap = session.get(CapabilityGap, gap_id)
    if gap is None:
        raise NotFound(f"capability gap {gap_id!r} does not exist")
    catalog = catalog if catalog is not None else load_catalog_for(settings)
    drafts = drafts_for_gap(session, backend, settings, gap, catalog=catalog,
                            env=os.environ if env is None else env, ranker=ranker or ranker_for(settings))
    outbox: list[str] = []
    ids: list[str] = []
    for draft in drafts:
        saved = save(session, backend, settings, draft, gap_id=gap.id, now=now)
        ids.append(saved.proposal.id)
        outbox += saved.outbox
    previous = (gap.resolution_details or {}).get("proposals", [])
    gap.resolution_details = {**(gap.resolution_details or {}), "proposals": list(dict.fromkeys([*previous, *ids]))}
    if gap.resolution_status == "pending":
        actionable = session.scalars(select(Proposal.status).where(Proposal.id.in_(ids))).all()
        if any(s in ("approved", "pending_approval") for s in actionable):
            gap.resolution_status = "in_progress"
    return outbox


def propose_new_agent(
    session: Session,
    backend: Backend,
    settings: Any,
    *,
    proposal_id: str,
    proposing_agent: str,
    spec: creation.AgentProposalSpec,
    now: datetime,
    ranker: Ranker | None = None,
) -> tuple[AgentProposalResult, list[str]]:
    """Seed `proposeNewAgent`: `invalid_proposal` (errors), `similar_exists` (alternatives: an agent already
    holds one of the expertise tags) or `agent_proposed` (stored; usually awaiting a person)."""
    check_id(proposal_id, "proposal id")
    replay = session.get(Proposal, proposal_id)
    if replay is not None:
        return _agent_result(session, replay), []
    errors = creation.check_spec(spec)
    if errors:
        return AgentProposalResult("invalid_proposal", errors=errors), []
    similar: dict[str, Any] = {}
    for tag in spec.expertise:
        for c in (ranker or ranker_for(settings))(session, backend, tag, limit=MAX_SUGGESTIONS,
                                                  exclude=(proposing_agent,)):
            if any(w.startswith("tag:") for w in c.why):
                similar.setdefault(c.agent_id, c)
    # An agent that means the same thing in other words (an existing "ui-designer" for a proposed
    # "interface-artist") is similar too; [] in lexical mode.
    for c in similar_agents(session, spec.name, spec.description, spec.expertise, exclude=(proposing_agent,),
                            matching=settings.matching):
        similar.setdefault(c.agent_id, c)
    if similar:
        alternatives = sorted(similar.values(), key=lambda c: (-c.score, c.agent_id))
        return AgentProposalResult("similar_exists", agent_id=spec.name, alternatives=alternatives,
                                   suggestion="use_existing_or_enhance"), []
    draft = agent_draft(session, settings, spec, proposed_by=proposing_agent, draft_id=proposal_id)
    if draft.invalid:
        return AgentProposalResult("invalid_proposal", errors=draft.details["errors"]), []
    saved = save(session, backend, settings, draft, gap_id=None, now=now)
    return _agent_result(session, saved.proposal), saved.outbox


def _agent_result(session: Session, p: Proposal) -> AgentProposalResult:
    pinfo = info(session, p)
    agent = p.details.get("agent") or {}
    return AgentProposalResult(
        "agent_proposed", agent_id=agent.get("name"), proposal_id=p.id, approval_id=pinfo.approval_id,
        requires_approval=p.status == "pending_approval", definition=p.details.get("definition"),
        proposal_status=p.status,
    )


# ---------------------------------------------------------------------------------------- reading


def info(session: Session, p: Proposal) -> ProposalInfo:
    approval = session.scalar(select(Approval).where(Approval.proposal_id == p.id))
    return ProposalInfo(
        id=p.id, gap_id=p.gap_id, kind=p.kind, status=p.status, confidence=p.confidence,
        confidence_basis=p.confidence_basis, details=p.details, proposed_by=p.proposed_by,
        created_at=p.created_at, approval_id=approval.id if approval else None,
        approval_status=approval.status if approval else None,
    )


def list_proposals(
    session: Session,
    *,
    name: str | None = None,
    capability_type: str | None = None,
    gap_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[ProposalInfo]:
    """Proposals best first (seed `getCapabilityProposals(name)`): by gap name, gap id, status or all."""
    stmt = select(Proposal)
    if name is not None or capability_type is not None or gap_id is not None:
        gaps = select(CapabilityGap)
        if name is not None:
            gaps = gaps.where(CapabilityGap.name == normalize_gap_name(name))
        if capability_type is not None:
            gaps = gaps.where(CapabilityGap.capability_type == capability_type)
        if gap_id is not None:
            gaps = gaps.where(CapabilityGap.id == gap_id)
        ids: list[str] = []
        for gap in session.scalars(gaps):
            ids += [gap.id]
            ids += (gap.resolution_details or {}).get("proposals", [])
        # A proposal shared by several gaps is stored under the first; the others list it by id.
        stmt = stmt.where((Proposal.gap_id.in_(ids)) | (Proposal.id.in_(ids)))
    if status is not None:
        stmt = stmt.where(Proposal.status == status)
    stmt = stmt.order_by(Proposal.confidence.desc(), Proposal.created_at, Proposal.id).limit(limit)
    return [info(session, p) for p in session.scalars(stmt)]


def get_proposal(session: Session, proposal_id: str) -> Proposal:
    proposal = session.get(Proposal, proposal_id)
    if proposal is None:
        raise NotFound(f"proposal {proposal_id!r} does not exist (see `coord proposals ls`)")
    return proposal


__all__ = [
    "Draft", "Saved", "agent_draft", "catalog_paths", "coverage", "drafts_for_gap", "get_proposal",
    "list_proposals", "load_catalog_for", "propose_for_gap", "propose_new_agent", "save",
]
