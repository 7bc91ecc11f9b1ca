"""The policy: one pure function decides `auto`, `needs_approval` or `denied(reason)` for a proposal.

No database, no clock, no I/O: the inputs are the proposal's facts (`Action`) and the settings, so the
whole decision is a table in tests/unit/test_policy.py. The rules, first match wins:

  1. `not_actionable`   the proposal has nothing coord could execute (a search, a workaround)  -> denied
  2. `manual`           a tool coord must never install itself (system packages)                -> denied
  3. `source`           the install source matches none of `allowed_install_sources`           -> denied
  4. `attempts`         `max_install_attempts` installs of this target already failed           -> denied
  5. `flag`             the matching `allow_*` setting is off                                   -> needs_approval
  6. `threshold`        confidence is below `approval_threshold`                                 -> needs_approval
  7. `safe_mode`        safe mode is on and the version is not pinned (a range may install
                        a release nobody reviewed)                                               -> needs_approval
  8. `allowed`          everything above passed                                                  -> auto

Denied is final for that proposal; a person cannot approve past it (change the settings and propose
again). `safety_score` says how risky the action is for the person deciding; it never approves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from coord.installer.plan import source_allowed

Outcome = Literal["auto", "needs_approval", "denied"]

INSTALL_ACTIONS = ("install_tool", "install_mcp")
ACTIONS = (*INSTALL_ACTIONS, "create_agent")
FLAG_FOR = {
    "install_tool": "allow_automated_installs",
    "install_mcp": "allow_mcp_installs",
    "create_agent": "allow_agent_creation",
}

# Safety: 1.0 is harmless. Running a package's code is riskier than writing a prompt file; a
# long-running MCP server with access to data riskier still.
ACTION_RISK = {"create_agent": 0.9, "install_tool": 0.8, "install_mcp": 0.7}
UNPINNED_RISK = 0.8
NOT_ALLOWED_RISK = 0.3
REMOTE_RISK = 0.8
SECRET_RISK = 0.9  # per secret the action will be handed
LOW_CONFIDENCE_RISK = 0.9


@dataclass(frozen=True)
class Action:
    """The facts of a proposal the policy looks at."""

    kind: str  # install_tool | install_mcp | create_agent | anything else is not actionable
    confidence: float
    source: str | None = None  # pypi:<name> | npm:<name> | github:<owner>/<repo> | remote:<host>
    installer: str | None = None  # pip | npm | git | manual | remote
    pinned: bool = True
    failed_attempts: int = 0
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    rule: str
    reason: str
    safety_score: float = 1.0
    safety_why: tuple[str, ...] = field(default_factory=tuple)

    @property
    def denied(self) -> bool:
        return self.outcome == "denied"

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "rule": self.rule, "reason": self.reason,
                "safety_score": self.safety_score, "safety_why": list(self.safety_why)}


def safety(action: Action, settings: Any) -> tuple[float, tuple[str, ...]]:
    """(score in [0, 1], reasons) for the person deciding; lower is riskier."""
    value = ACTION_RISK.get(action.kind, 1.0)
    why = [f"{action.kind} ({ACTION_RISK.get(action.kind, 1.0)})"]
    if action.kind in INSTALL_ACTIONS:
        if not action.pinned:
            value *= UNPINNED_RISK
            why.append("version is a range, not a pin")
        if action.source and not source_allowed(action.source, settings.allowed_install_sources)[0]:
            value *= NOT_ALLOWED_RISK
            why.append(f"source {action.source} is not allowlisted")
        if action.installer == "remote":
            value *= REMOTE_RISK
            why.append("hosted server: data leaves this machine")
    if action.secrets:
        value *= SECRET_RISK ** len(action.secrets)
        why.append(f"handles secrets: {', '.join(action.secrets)}")
    if action.confidence < settings.approval_threshold:
        value *= LOW_CONFIDENCE_RISK
        why.append(f"low confidence {action.confidence:.2f}")
    return round(value, 4), tuple(why)


def decide(action: Action, settings: Any) -> Decision:
    """The decision for `action` under `settings` (see the module docstring for the rules)."""
    score, why = safety(action, settings)

    def result(outcome: Outcome, rule: str, reason: str) -> Decision:
        return Decision(outcome, rule, reason, score, why)

    if action.kind not in ACTIONS:
        return result("denied", "not_actionable",
                      f"a {action.kind} proposal has nothing coord can execute; a person must act on it")
    if action.kind in INSTALL_ACTIONS:
        if action.installer == "manual":
            return result("denied", "manual", "this is a system tool coord never installs; "
                          "its proposal says what a person should run")
        ok, source_why = source_allowed(action.source or "", settings.allowed_install_sources)
        if not ok:
            return result("denied", "source", source_why + "; add a pattern to allowed_install_sources to allow it")
        if action.failed_attempts >= settings.max_install_attempts:
            return result("denied", "attempts", f"{action.failed_attempts} installs of this target failed "
                          f"(max_install_attempts = {settings.max_install_attempts})")
    flag = FLAG_FOR[action.kind]
    if not getattr(settings, flag):
        return result("needs_approval", "flag", f"{flag} is off: a person decides")
    if action.confidence < settings.approval_threshold:
        return result("needs_approval", "threshold", f"confidence {action.confidence:.2f} is below "
                      f"approval_threshold {settings.approval_threshold:.2f}")
    if settings.safe_mode and action.kind in INSTALL_ACTIONS and not action.pinned:
        return result("needs_approval", "safe_mode", "safe_mode is on and the version is a range, not a pin")
    return result("auto", "allowed", f"{flag} is on, confidence {action.confidence:.2f} meets the threshold")


__all__ = ["ACTIONS", "FLAG_FOR", "INSTALL_ACTIONS", "Action", "Decision", "decide", "safety"]
