"""How sure a proposal is that it closes its gap: one formula, one table of weights, nothing else.

Every proposal's confidence is computed here from *how* its target was found, never written as a
constant in the branch that builds it (the seed pasted 0.8, 0.9, 0.3, 0.2 per branch):

    confidence = HOW[how] * similarity * SECRET_FACTOR ** missing_secrets * TRUST[trust] * pin

- `how`: exact catalog name, declared/implicit alias, fuzzy name match, an entry the gap's words
  describe (semantic, coord.matching.catalog_match), a new agent rendered from the
  template, a partial cover by an existing agent (workaround), or a search (nothing matched; only
  suggestions exist).
- `similarity` in [0, 1]: 1.0 for exact and alias hits and for a template; the difflib ratio for a fuzzy
  hit; the cosine for a semantic one; the best suggestion's ratio for a search (0 when there is none);
  the share of the need an existing agent covers for a workaround.
- `missing_secrets`: secrets the launch spec references (`${VAR}`) that the environment does not hold.
  Installing still works, but the server will not start until a person supplies them.
- `trust`: where the artifact comes from (an allowed source, a hosted remote, a manual tool coord never
  installs, a source the allowlist refuses, or coord itself for agent files).
- `pin`: an exact version or commit is reproducible; a range may install something nobody reviewed.

The result and every factor are kept (`Confidence.basis`) in `proposals.confidence_basis`, so a person
reading a proposal sees why it scored what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

How = Literal["exact", "alias", "fuzzy", "semantic", "template", "partial", "search"]
Trust = Literal["allowed", "internal", "remote", "manual", "not_allowed"]

# The one table. Exact beats alias beats fuzzy: an alias can be shared or stale, a fuzzy hit can be a
# different tool. A template agent is new and untested. A search has found nothing to act on.
HOW: dict[str, float] = {
    "exact": 1.0,
    "alias": 0.95,
    "fuzzy": 0.9,
    "semantic": 0.8,  # the gap's words describe a catalog entry (coord.matching.catalog_match); similarity = cosine
    "template": 0.8,
    "partial": 0.8,
    "search": 0.3,
}
TRUST: dict[str, float] = {
    "allowed": 1.0,  # a registry source the allowlist accepts
    "internal": 1.0,  # an agent file coord renders itself
    "remote": 0.9,  # a hosted server: nothing installed, but data leaves the machine
    "manual": 0.6,  # coord never installs it: a person must, so the gap stays open longer
    "not_allowed": 0.5,  # the allowlist refuses the source: policy will deny it
}
SECRET_FACTOR = 0.85  # per required secret the environment lacks
UNPINNED_FACTOR = 0.95  # a version range rather than an exact version or commit
DIGITS = 4


@dataclass(frozen=True)
class Evidence:
    """What a proposal builder knows about its match; the only input of `score`."""

    how: How
    similarity: float = 1.0
    missing_secrets: tuple[str, ...] = ()
    trust: Trust = "allowed"
    pinned: bool = True
    notes: dict[str, Any] = field(default_factory=dict)  # free-form context kept in the basis


@dataclass(frozen=True)
class Confidence:
    value: float
    basis: dict[str, Any]


def score(evidence: Evidence) -> Confidence:
    """The confidence of a proposal in [0, 1] and the factors that produced it."""
    if evidence.how not in HOW:
        raise ValueError(f"unknown match kind {evidence.how!r}; known: {', '.join(HOW)}")
    if evidence.trust not in TRUST:
        raise ValueError(f"unknown trust level {evidence.trust!r}; known: {', '.join(TRUST)}")
    similarity = min(max(float(evidence.similarity), 0.0), 1.0)
    factors = {
        "how": HOW[evidence.how],
        "similarity": similarity,
        "secrets": SECRET_FACTOR ** len(evidence.missing_secrets),
        "trust": TRUST[evidence.trust],
        "pinned": 1.0 if evidence.pinned else UNPINNED_FACTOR,
    }
    value = 1.0
    for factor in factors.values():
        value *= factor
    value = round(value, DIGITS)
    basis = {
        "how": evidence.how,
        "similarity": round(similarity, DIGITS),
        "missing_secrets": list(evidence.missing_secrets),
        "trust": evidence.trust,
        "pinned": evidence.pinned,
        "factors": {k: round(v, DIGITS) for k, v in factors.items()},
        "formula": "how * similarity * secrets * trust * pinned",
        **({"notes": evidence.notes} if evidence.notes else {}),
    }
    return Confidence(value, basis)


__all__ = ["HOW", "SECRET_FACTOR", "TRUST", "UNPINNED_FACTOR", "Confidence", "Evidence", "score"]
