"""Hybrid matching with the real model (the `semantic` extra): needs in other words than the agent's.

Skipped, with the reason, when the extra is not installed. SQLite only: the engine-specific parts of
semantic matching (vector storage, the embed job, the cache) run on both engines in test_matching_semantic.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_settings

from coord.client import Coordinator
from coord.matching import embedder as emb
from coord.matching.hybrid import rank_agents

if emb.installed_model_id() is None:  # packages only: collecting this module must not load the model
    pytest.skip("the 'semantic' extra is not installed (pip install 'coord[semantic]')", allow_module_level=True)

AGENTS = {
    "accessibility-auditor": "Audits web interfaces for screen reader support, keyboard navigation and WCAG "
                             "compliance.",
    "deliverability-expert": "Sets up SPF, DKIM and DMARC records so that messages reach the inbox.",
    "payments-engineer": "Integrates Stripe checkout, subscriptions, refunds and webhooks.",
    "k8s-operator": "Deploys services to Kubernetes clusters with Helm charts.",
    "ui-designer": "Designs user interfaces, visual layouts and interaction flows for web and mobile apps.",
}


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    if emb.load_embedder() is None:
        pytest.skip("the semantic model is installed but does not load (see the log)")
    tmp = tmp_path_factory.mktemp("semantic")
    coordinator = Coordinator(make_settings(Path(tmp), log_level="warning"))
    coordinator.register_agent("requester", "Asks others for help", expertise=["asking"])
    for name, description in AGENTS.items():
        coordinator.register_agent(name, description)  # each registration is embedded by the inline bell
    yield coordinator
    coordinator.close()


def ids(candidates) -> list[str]:
    return [x.agent_id for x in candidates]


@pytest.mark.parametrize("need, agent", [
    ("make our site usable for blind people", "accessibility-auditor"),
    ("our emails keep landing in spam", "deliverability-expert"),
    ("let customers pay by card every month", "payments-engineer"),
])
def test_a_need_sharing_no_word_is_found_by_meaning_only(c: Coordinator, need: str, agent: str):
    with c.db.reader() as s:
        lexical = rank_agents(s, c.db.backend, need, matching="lexical")
        hybrid = rank_agents(s, c.db.backend, need, matching="auto")
    assert agent not in ids(lexical), f"{need!r} shares a word with {agent}: not a semantic-only case"
    assert ids(hybrid)[0] == agent, hybrid
    assert any(w.startswith("semantic:") for w in hybrid[0].why)
    result = c.request_collaboration("requester", need)
    assert result.status == "collaboration_requested" and ids(result.candidates)[0] == agent


def test_delegation_fallback_suggests_by_meaning(c: Coordinator):
    r = c.delegate("requester", "a11y-wizard", {"title": "make the site work for people who cannot see"})
    assert r.status == "agent_not_found" and ids(r.fallback)[0] == "accessibility-auditor"


def test_a_need_nobody_serves_still_gets_no_expert(c: Coordinator):
    assert c.request_collaboration("requester", "banana bread recipe").status == "no_expert_available"


def test_similar_exists_for_an_agent_described_in_other_words(c: Coordinator):
    r = c.propose_new_agent("requester", "screen-designer", "Designs user interfaces, layouts and interaction "
                            "flows for web and mobile applications.", ["wireframing"])
    assert r.status == "similar_exists" and ids(r.alternatives) == ["ui-designer"], r
    assert r.alternatives[0].why[0].startswith("semantic:")
    other = c.propose_new_agent("requester", "tax-advisor", "Prepares tax returns and advises on deductions.",
                                ["taxes"])
    assert other.status == "agent_proposed"


def test_a_described_mcp_gap_finds_its_catalog_entry(c: Coordinator):
    c.record_missing_capability("mcp", "postgres database access", "requester")
    install = [p for p in c.get_proposals("postgres database access") if p.kind == "install_mcp"]
    assert install and install[0].details.get("short_name") == "postgres", install
    assert install[0].confidence_basis["how"] == "semantic"
    assert install[0].confidence < 0.7  # found by description: a person confirms it (approval threshold)
