"""The small decisions of hybrid matching, table-tested (no database, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coord.matching.catalog_match import CATALOG_MARGIN, CATALOG_MIN_COSINE, _best, is_description
from coord.matching.hybrid import worth_embedding
from coord.matching.index import text_hash
from coord.matching.lexical import lexical_words


@pytest.mark.parametrize("need, embedded", [
    ("make our site usable for blind people", True),
    ("Terraform", True),
    ("IT", False),  # a stopword: lexical ranking alone (which keeps it as a word)
    ("%", False), ("the", False), ("' OR '1'='1", False), ("42", False), ("", False), ("who can help", False),
])
def test_which_needs_are_embedded(need: str, embedded: bool):
    assert worth_embedding(need) is embedded


@pytest.mark.parametrize("need, words", [
    ("make our site usable for blind people", ["site", "usable", "blind", "people"]),
    ("who can help", ["who", "can", "help"]),  # nothing but stopwords: keep them rather than search nothing
    ("IT", ["it"]),
    ("%_%", []),
])
def test_lexical_words_drop_stopwords_but_never_empty_a_need(need: str, words: list[str]):
    assert lexical_words(need) == words


@pytest.mark.parametrize("query, description", [
    ("postgres database access", True), ("search the web", True),
    ("postgrez-db", False), ("ruff", False), ("sequential_thinking", False), ("", False),
])
def test_only_phrases_are_matched_by_meaning_in_the_catalogs(query: str, description: bool):
    assert is_description(query) is description


def entry(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name)


@pytest.mark.parametrize("ranked, expected", [
    ([(entry("postgres"), 0.71), (entry("sqlite"), 0.34)], "postgres"),
    ([(entry("sqlite"), 0.45), (entry("postgres"), 0.38)], None),  # ahead by less than the margin
    ([(entry("jq"), CATALOG_MIN_COSINE - 0.01)], None),  # too far from everything
    ([(entry("jq"), CATALOG_MIN_COSINE + CATALOG_MARGIN)], "jq"),
    ([], None),
])
def test_a_semantic_catalog_match_needs_a_clear_winner(ranked, expected):
    match = _best(ranked, "q u")
    assert (match.entry.name if match else None) == expected
    if match:
        assert match.how == "semantic" and match.similarity == pytest.approx(ranked[0][1], abs=1e-4)


def test_text_hash_ignores_tag_order_but_not_text():
    base = text_hash("ops-agent", "Runs deployments.", ["kubernetes", "helm"])
    assert text_hash("ops-agent", "Runs deployments.", ["helm", "kubernetes"]) == base
    assert text_hash("ops-agent", "Runs deployments safely.", ["helm", "kubernetes"]) != base
    assert text_hash("ops-agent2", "Runs deployments.", ["helm", "kubernetes"]) != base
    plain = text_hash("ops-agent", "Runs deployments.", ["helm"])
    assert text_hash("ops-agent", "Runs deployments.", ["helm"], "") == plain
    # a row holds the instructions' vector and word bag too
    assert text_hash("ops-agent", "Runs deployments.", ["helm"], "You roll back.") != plain
