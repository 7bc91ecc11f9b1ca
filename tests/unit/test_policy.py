"""The policy table: every rule of coord.policy.decide, in order, and the safety score."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from coord.policy import Action, decide, safety


@dataclass(frozen=True)
class S:
    """The settings the policy reads (the real Settings has the same names)."""

    allow_automated_installs: bool = True
    allow_mcp_installs: bool = True
    allow_agent_creation: bool = True
    approval_threshold: float = 0.7
    max_install_attempts: int = 3
    allowed_install_sources: list[str] = field(
        default_factory=lambda: ["pypi:*", "npm:@modelcontextprotocol/*", "github:anthropics/*"])
    safe_mode: bool = True


TOOL = Action("install_tool", 0.95, source="pypi:ruff", installer="pip")
MCP = Action("install_mcp", 0.9, source="npm:@modelcontextprotocol/server-postgres", installer="npm")
AGENT = Action("create_agent", 0.8)

CASES = [
    # (name, action, settings, outcome, rule)
    ("search is not actionable", Action("search_required", 0.3), S(), "denied", "not_actionable"),
    ("workaround is not actionable", Action("workaround", 0.9), S(), "denied", "not_actionable"),
    ("manual tool", replace(TOOL, installer="manual", source=None), S(), "denied", "manual"),
    ("source outside allowlist", replace(MCP, source="npm:mcp-evil"), S(), "denied", "source"),
    ("no source at all", replace(TOOL, source=None), S(), "denied", "source"),
    ("empty allowlist", TOOL, S(allowed_install_sources=[]), "denied", "source"),
    ("github owner prefix is not the owner", replace(TOOL, source="github:anthropics-fake/x", installer="git"),
     S(), "denied", "source"),
    ("remote not allowlisted", replace(MCP, source="remote:api.example.com", installer="remote"), S(),
     "denied", "source"),
    ("attempts exhausted", replace(TOOL, failed_attempts=3), S(), "denied", "attempts"),
    ("attempts left", replace(TOOL, failed_attempts=2), S(), "auto", "allowed"),
    ("installs flag off", TOOL, S(allow_automated_installs=False), "needs_approval", "flag"),
    ("mcp flag off", MCP, S(allow_mcp_installs=False), "needs_approval", "flag"),
    ("mcp ignores the tool flag", MCP, S(allow_automated_installs=False), "auto", "allowed"),
    ("agent flag off", AGENT, S(allow_agent_creation=False), "needs_approval", "flag"),
    ("below threshold", replace(TOOL, confidence=0.69), S(), "needs_approval", "threshold"),
    ("at threshold", replace(TOOL, confidence=0.7), S(), "auto", "allowed"),
    ("agent below threshold", replace(AGENT, confidence=0.5), S(), "needs_approval", "threshold"),
    ("safe mode, unpinned", replace(TOOL, pinned=False), S(), "needs_approval", "safe_mode"),
    ("no safe mode, unpinned", replace(TOOL, pinned=False), S(safe_mode=False), "auto", "allowed"),
    ("safe mode does not gate agents", AGENT, S(), "auto", "allowed"),
    ("tool allowed", TOOL, S(), "auto", "allowed"),
    ("mcp allowed", MCP, S(), "auto", "allowed"),
    ("denial beats a missing flag", replace(TOOL, source="npm:left-pad"), S(allow_automated_installs=False),
     "denied", "source"),
]


@pytest.mark.parametrize(("action", "settings", "outcome", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(action: Action, settings: S, outcome: str, rule: str) -> None:
    decision = decide(action, settings)
    assert (decision.outcome, decision.rule) == (outcome, rule), decision.reason
    assert decision.reason  # every outcome says why


def test_every_rule_is_covered() -> None:
    rules = {c[4] for c in CASES}
    assert rules == {"not_actionable", "manual", "source", "attempts", "flag", "threshold", "safe_mode", "allowed"}


def test_the_default_settings_never_auto() -> None:
    from coord.settings import Settings

    defaults = Settings()
    for action in (TOOL, MCP, AGENT):
        assert decide(action, defaults).outcome == "needs_approval"


def test_reasons_name_the_setting() -> None:
    assert "allowed_install_sources" in decide(replace(TOOL, source="npm:x"), S()).reason
    assert "allow_mcp_installs" in decide(MCP, S(allow_mcp_installs=False)).reason
    assert "0.60" in decide(replace(TOOL, confidence=0.6), S()).reason


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (AGENT, 0.9),
        (TOOL, 0.8),
        (MCP, 0.7),
        (replace(TOOL, pinned=False), 0.64),
        (replace(MCP, secrets=("PG",)), 0.63),
        (replace(TOOL, source="npm:x"), 0.24),
        (replace(MCP, installer="remote", source="remote:x"), 0.168),
        (replace(AGENT, confidence=0.5), 0.81),
    ],
)
def test_safety_score(action: Action, expected: float) -> None:
    value, why = safety(action, S())
    assert value == pytest.approx(expected, abs=1e-3)
    assert why and why[0].startswith(action.kind)
