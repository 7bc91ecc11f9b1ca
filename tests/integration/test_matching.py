"""Expertise matching: user text is matched literally, removed agents never match, ranking is sane.

The seed matched with `LIKE '%' || need || '%'`, so `%` matched everyone and `_` any character. Here a
query is split into words and nothing the user types acts as a wildcard or as SQL / FTS syntax.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from coord.client import Coordinator
from coord.db.models import Agent, AgentExpertise

AGENTS = {
    "test-automator": ("Writes test suites until they reach 100% test coverage", ["testing", "pytest"]),
    "snake-charmer": ("Python code in snake_case, typing and packaging", ["python"]),
    "quote-keeper": ('Handles "quoted" strings, O\'Reilly names and SQL escaping', ["sql"]),
    "frontend-expert": ("React user interfaces and CSS layouts", ["frontend", "react"]),
}


@pytest.fixture
def c(coordinator: Coordinator) -> Coordinator:
    for name, (description, expertise) in AGENTS.items():
        coordinator.register_agent(name, description, expertise=expertise)
    coordinator.register_agent("requester", "Asks others for help", expertise=["asking"])
    return coordinator


def _ids(candidates) -> list[str]:
    return [x.agent_id for x in candidates]


WILDCARDS = ["%", "%%", "_", "__", "%_%", "*", "' OR '1'='1", "-", '"', "()", "^"]


def test_wildcards_match_nothing(c: Coordinator):
    for query in WILDCARDS:
        assert c.find_experts(query) == [], query
        result = c.request_collaboration("requester", query, {"task": "x"})
        assert (result.status, result.candidates) == ("no_expert_available", []), query


def test_search_operators_are_plain_words(c: Coordinator):
    # In FTS5 or tsquery syntax these would exclude, prefix-match or group; here they are just words.
    assert _ids(c.find_experts("NOT react")) == ["frontend-expert"]
    assert _ids(c.find_experts("react*")) == ["frontend-expert"]
    assert _ids(c.find_experts("NEAR(react css)")) == ["frontend-expert"]
    assert _ids(c.find_experts("-react")) == ["frontend-expert"]


def test_percent_and_underscore_inside_words_are_literal(c: Coordinator):
    # "100%" is the word 100: it finds the agent that literally says 100%, and no one else.
    assert _ids(c.find_experts("100%")) == ["test-automator"]
    # "snake_case" is matched as written, not as the LIKE pattern snake?case.
    assert _ids(c.find_experts("snake_case")) == ["snake-charmer"]
    assert c.find_experts("snakeXcase") == []


def test_sql_in_a_query_is_harmless(c: Coordinator):
    with c.db.reader() as s:
        before = (s.scalar(select(func.count()).select_from(Agent)),
                  s.scalar(select(func.count()).select_from(AgentExpertise)))
    for query in ['"; DROP TABLE agents; --', "'; DELETE FROM agent_expertise; --", "O'Reilly", 'say "quoted"']:
        found = _ids(c.find_experts(query))
        assert set(found) <= {"quote-keeper"}, f"{query!r} matched {found}"
        c.request_collaboration("requester", query)
    assert _ids(c.find_experts("O'Reilly")) == ["quote-keeper"]
    with c.db.reader() as s:
        after = (s.scalar(select(func.count()).select_from(Agent)),
                 s.scalar(select(func.count()).select_from(AgentExpertise)))
    assert after == before
    assert len(c.list_agents()) == len(AGENTS) + 1


def test_removed_agent_never_matches(c: Coordinator):
    c.register_agent("chain-smith", "Blockchain smart contracts and wallets", expertise=["blockchain", "solidity"])
    assert _ids(c.find_experts("blockchain")) == ["chain-smith"]
    assert c.remove_agent("chain-smith")

    assert c.find_experts("blockchain") == []
    assert c.find_experts("chain smith") == []
    collab = c.request_collaboration("requester", "blockchain")
    assert collab.status == "no_expert_available"
    delegated = c.delegate("requester", "chain-wizard", {"title": "Write blockchain smart contracts"})
    assert delegated.status == "agent_not_found"
    assert "chain-smith" not in _ids(delegated.fallback)
    to_removed = c.delegate("requester", "chain-smith", {"title": "Audit the wallet"})
    assert to_removed.status == "agent_not_found"
    assert "chain-smith" not in _ids(to_removed.fallback)

    # Coming back (re-registered) makes it matchable again: removal is not a tombstone on the name.
    c.register_agent("chain-smith", "Blockchain smart contracts and wallets", expertise=["blockchain"])
    assert _ids(c.find_experts("blockchain")) == ["chain-smith"]


def test_exact_tag_beats_words_in_a_description(c: Coordinator):
    c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])
    c.register_agent("cloud-writer", "Writes about Kubernetes: Kubernetes operators, Kubernetes networking, "
                     "Kubernetes storage and more Kubernetes", expertise=["writing"])
    ranked = c.find_experts("kubernetes")
    assert _ids(ranked) == ["k8s-operator", "cloud-writer"]
    assert ranked[0].score > ranked[1].score
    assert "tag:kubernetes" in ranked[0].why and ranked[1].why == ["text"]


def test_busy_agent_ranks_below_an_idle_equal_one(c: Coordinator):
    for name in ("rust-dev-a", "rust-dev-b"):
        c.register_agent(name, "Rust systems programming", expertise=["rust"])
    idle_order = c.find_experts("rust")
    assert _ids(idle_order) == ["rust-dev-a", "rust-dev-b"]  # equal: the tie goes by name
    assert idle_order[0].score == idle_order[1].score

    for n in range(3):
        c.delegate("requester", "rust-dev-a", {"title": f"port module {n}"})
        assert c.claim_next("rust-dev-a") is not None
    busy_order = c.find_experts("rust")
    assert _ids(busy_order) == ["rust-dev-b", "rust-dev-a"]
    assert busy_order[1].score < busy_order[0].score
    collab = c.request_collaboration("requester", "rust")
    assert _ids(collab.candidates)[0] == "rust-dev-b"


def test_requester_is_not_its_own_candidate(c: Coordinator):
    result = c.request_collaboration("frontend-expert", "react")
    assert "frontend-expert" not in _ids(result.candidates)
