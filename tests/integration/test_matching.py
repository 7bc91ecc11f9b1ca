"""Expertise matching: user text is matched literally, removed agents never match, ranking is sane.

The seed matched with `LIKE '%' || need || '%'`, so `%` matched everyone and `_` any character. Here a
query is split into words and nothing the user types acts as a wildcard or as SQL / FTS syntax.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from coord.client import Coordinator
from coord.db.models import Agent, AgentExpertise
from coord.settings import Settings

AGENTS = {
    "test-automator": ("Writes test suites until they reach 100% test coverage", ["testing", "pytest"]),
    "snake-charmer": ("Python code in snake_case, typing and packaging", ["python"]),
    "quote-keeper": ('Handles "quoted" strings, O\'Reilly names and SQL escaping', ["sql"]),
    "frontend-expert": ("React user interfaces and CSS layouts", ["frontend", "react"]),
}


@pytest.fixture
def c(coordinator: Coordinator) -> Coordinator:
    """The default matching mode (`auto`: hybrid when the semantic model loads, else lexical)."""
    for name, (description, expertise) in AGENTS.items():
        coordinator.register_agent(name, description, expertise=expertise)
    coordinator.register_agent("requester", "Asks others for help", expertise=["asking"])
    return coordinator


@pytest.fixture
def lex(c: Coordinator, settings: Settings) -> Iterator[Coordinator]:
    """The same database ranked by words alone: here matches can be asserted exactly."""
    lexical = Coordinator(settings.model_copy(update={"matching": "lexical"}))
    yield lexical
    lexical.close()


def _ids(candidates) -> list[str]:
    return [x.agent_id for x in candidates]


WILDCARDS = ["%", "%%", "_", "__", "%_%", "*", "' OR '1'='1", "-", '"', "()", "^"]


def test_wildcards_match_nothing(c: Coordinator, lex: Coordinator):
    for query in WILDCARDS:
        assert c.find_experts(query) == [] and lex.find_experts(query) == [], query
        result = c.request_collaboration("requester", query, {"task": "x"})
        assert (result.status, result.candidates) == ("no_expert_available", []), query


def test_search_operators_are_plain_words(c: Coordinator, lex: Coordinator):
    # In FTS5 or tsquery syntax these would exclude, prefix-match or group; here they are just words.
    for query in ("NOT react", "react*", "NEAR(react css)", "-react", "react OR python"):
        expected = ["frontend-expert", "snake-charmer"] if "python" in query else ["frontend-expert"]
        assert _ids(lex.find_experts(query)) == expected, query
        assert _ids(c.find_experts(query))[0] == "frontend-expert", query


def test_percent_and_underscore_inside_words_are_literal(c: Coordinator, lex: Coordinator):
    # "100%" is the word 100: it finds the agent that literally says 100%, and no one else.
    assert _ids(lex.find_experts("100%")) == ["test-automator"]
    assert _ids(c.find_experts("100%")) == ["test-automator"]
    # "snake_case" is matched as written, not as the LIKE pattern snake?case.
    assert _ids(lex.find_experts("snake_case")) == ["snake-charmer"]
    assert _ids(c.find_experts("snake_case"))[0] == "snake-charmer"
    assert lex.find_experts("snakeXcase") == []


def test_sql_in_a_query_is_harmless(c: Coordinator, lex: Coordinator):
    with c.db.reader() as s:
        before = (s.scalar(select(func.count()).select_from(Agent)),
                  s.scalar(select(func.count()).select_from(AgentExpertise)))
    for query in ['"; DROP TABLE agents; --', "'; DELETE FROM agent_expertise; --", "O'Reilly", 'say "quoted"']:
        found = _ids(lex.find_experts(query))
        assert set(found) <= {"quote-keeper"}, f"{query!r} matched {found}"
        c.find_experts(query)
        c.request_collaboration("requester", query)
    assert _ids(lex.find_experts("O'Reilly")) == ["quote-keeper"]
    with c.db.reader() as s:
        after = (s.scalar(select(func.count()).select_from(Agent)),
                 s.scalar(select(func.count()).select_from(AgentExpertise)))
    assert after == before
    assert len(c.list_agents()) == len(AGENTS) + 1


def test_removed_agent_never_matches(c: Coordinator, lex: Coordinator):
    c.register_agent("chain-smith", "Blockchain smart contracts and wallets", expertise=["blockchain", "solidity"])
    assert _ids(c.find_experts("blockchain"))[0] == "chain-smith"
    assert c.remove_agent("chain-smith")

    assert "chain-smith" not in _ids(c.find_experts("blockchain")) + _ids(c.find_experts("chain smith"))
    assert lex.find_experts("blockchain") == []
    collab = c.request_collaboration("requester", "blockchain smart contracts")
    assert "chain-smith" not in _ids(collab.candidates)
    delegated = c.delegate("requester", "chain-wizard", {"title": "Write blockchain smart contracts"})
    assert delegated.status == "agent_not_found"
    assert "chain-smith" not in _ids(delegated.fallback)
    to_removed = c.delegate("requester", "chain-smith", {"title": "Audit the blockchain wallet"})
    assert to_removed.status == "agent_not_found"
    assert "chain-smith" not in _ids(to_removed.fallback)

    # Coming back (re-registered) makes it matchable again: removal is not a tombstone on the name.
    c.register_agent("chain-smith", "Blockchain smart contracts and wallets", expertise=["blockchain"])
    assert _ids(lex.find_experts("blockchain")) == ["chain-smith"]


def test_exact_tag_beats_words_in_a_description(c: Coordinator, lex: Coordinator):
    c.register_agent("k8s-operator", "Deploys services to clusters", expertise=["kubernetes"])
    c.register_agent("cloud-writer", "Writes about Kubernetes: Kubernetes operators, Kubernetes networking, "
                     "Kubernetes storage and more Kubernetes", expertise=["writing"])
    ranked = lex.find_experts("kubernetes")
    assert _ids(ranked) == ["k8s-operator", "cloud-writer"]
    assert ranked[0].score > ranked[1].score
    assert "tag:kubernetes" in ranked[0].why and ranked[1].why == ["text"]
    default = _ids(c.find_experts("kubernetes"))
    assert default.index("k8s-operator") < default.index("cloud-writer")


def test_busy_agent_ranks_below_an_idle_equal_one(c: Coordinator):
    for name in ("rust-dev-a", "rust-dev-b"):
        c.register_agent(name, "Rust systems programming", expertise=["rust"])

    def order() -> list:
        return [x for x in c.find_experts("rust") if x.agent_id.startswith("rust-dev")]

    idle = order()
    assert _ids(idle) == ["rust-dev-a", "rust-dev-b"]
    assert idle[0].score == pytest.approx(idle[1].score, rel=0.05)  # only the names differ

    for n in range(3):
        c.delegate("requester", "rust-dev-a", {"title": f"port module {n}"})
        assert c.claim_next("rust-dev-a") is not None
    busy = order()
    assert _ids(busy) == ["rust-dev-b", "rust-dev-a"]
    assert busy[1].score < busy[0].score
    collab = c.request_collaboration("rust-dev-b", "rust")
    assert "rust-dev-b" not in _ids(collab.candidates)  # never your own candidate
    assert _ids(c.request_collaboration("requester", "rust").candidates)[:2] == ["rust-dev-b", "rust-dev-a"]
