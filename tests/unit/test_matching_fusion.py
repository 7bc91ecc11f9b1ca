"""coord.matching.fusion: the hybrid ranking, table-tested (pure functions, no database, no model)."""

from __future__ import annotations

import pytest

from coord.matching.fusion import (
    KEYWORD_WEIGHTS,
    RRF_K,
    SENTENCE_WEIGHTS,
    Weights,
    content_terms,
    fuse,
    weights_for_query,
)


def ids(ranked):
    return [a for a, _ in ranked]


@pytest.mark.parametrize(
    ("lexical", "semantic", "weights", "expected"),
    [
        # nothing in, nothing out
        ([], [], (0.5, 0.5), []),
        # one list empty: the other one's order is kept (no embedder / no word matched)
        ([("a", 3.0), ("b", 9.0)], [], (0.5, 0.5), ["b", "a"]),
        ([], [("a", 0.2), ("b", 0.7)], (0.5, 0.5), ["b", "a"]),
        # semantic-heavy weights: a strong cosine beats the best lexical hit
        ([("lex", 10.0), ("sem", 1.0)], [("sem", 0.8), ("lex", 0.3)], (0.1, 0.9), ["sem", "lex"]),
        # lexical-heavy weights: the exact-word match wins
        ([("lex", 10.0), ("sem", 1.0)], [("sem", 0.5), ("lex", 0.3)], (0.9, 0.1), ["lex", "sem"]),
        # present in both lists beats present in one at equal strength
        (
            [("both", 5.0), ("lexonly", 5.0)],
            [("both", 0.5), ("semonly", 0.5)],
            (0.5, 0.5),
            ["both", "lexonly", "semonly"],
        ),
        # ties are broken by id, whatever the input order
        ([("b", 1.0), ("a", 1.0)], [], (1.0, 0.0), ["a", "b"]),
        # a repeated id counts once, with its best score
        ([("a", 1.0), ("a", 8.0), ("b", 4.0)], [], (1.0, 0.0), ["a", "b"]),
    ],
)
def test_weighted_order(lexical, semantic, weights, expected):
    assert ids(fuse(lexical, semantic, weights=weights)) == expected


@pytest.mark.parametrize(
    ("lexical", "semantic", "weights", "expected"),
    [
        # the best lexical score is scaled to 1.0, others to their fraction of it; cosine as is
        ([("a", 8.0), ("b", 2.0)], [("a", 0.5), ("b", 0.25)], (0.5, 0.5), {"a": 0.75, "b": 0.25}),
        # BM25 scale does not matter: x1000 gives the same fused scores
        ([("a", 8000.0), ("b", 2000.0)], [("a", 0.5), ("b", 0.25)], (0.5, 0.5), {"a": 0.75, "b": 0.25}),
        # negative cosine and non-positive lexical scores add nothing; cosine above 1 is clipped
        ([("a", -3.0), ("b", 0.0)], [("a", -0.4), ("b", 1.2)], (0.5, 0.5), {"a": 0.0, "b": 0.5}),
        # NaN scores are ignored
        ([("a", float("nan")), ("b", 2.0)], [], (1.0, 0.0), {"b": 1.0}),
    ],
)
def test_weighted_scores(lexical, semantic, weights, expected):
    got = dict(fuse(lexical, semantic, weights=weights))
    assert got == pytest.approx(expected)


def test_rrf_scores_use_ranks_only():
    got = dict(fuse([("a", 100.0), ("b", 99.0)], [("b", 0.9), ("a", 0.1)], method="rrf", weights=(1.0, 1.0)))
    expected = 1 / (RRF_K + 1) + 1 / (RRF_K + 2)
    assert got == pytest.approx({"a": expected, "b": expected})
    # equal fused scores: id order
    assert ids(fuse([("a", 100.0), ("b", 99.0)], [("b", 0.9), ("a", 0.1)], method="rrf", weights=(1, 1))) == ["a", "b"]


@pytest.mark.parametrize("weights", [(-0.1, 1.0), (0.0, 0.0), (1.0, -2.0)])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        fuse([("a", 1.0)], [], weights=weights)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse([("a", 1.0)], [], method="borda")  # type: ignore[arg-type]


def test_inputs_are_not_modified():
    lex, sem = [("a", 2.0), ("b", 1.0)], [("b", 0.3)]
    before = (list(lex), list(sem))
    fuse(lex, sem)
    assert (lex, sem) == before


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("Terraform modules", ["terraform", "modules"]),
        ("make our site usable for blind people", ["site", "usable", "blind", "people"]),
        ("ASP.NET Core", ["asp.net", "core"]),
        ("C++ templates", ["c++", "templates"]),
        ("", []),
        ("the and of", []),
        ("%_ ' OR \"", []),
    ],
)
def test_content_terms(query, terms):
    assert content_terms(query) == terms


@pytest.mark.parametrize(
    ("query", "weights"),
    [
        ("GraphQL schema design", KEYWORD_WEIGHTS),
        ("Ghidra", KEYWORD_WEIGHTS),
        ("Kubernetes GitOps with ArgoCD", KEYWORD_WEIGHTS),
        ("our emails keep landing in spam and nobody reads them", SENTENCE_WEIGHTS),
        ("make our site usable for blind people", SENTENCE_WEIGHTS),
        ("", SENTENCE_WEIGHTS),
    ],
)
def test_weights_for_query(query, weights):
    assert weights_for_query(query) == weights


def test_weights_are_a_plain_pair():
    assert fuse([("a", 1.0)], [("b", 0.9)], weights=Weights(lexical=1.0, semantic=0.0))[0][0] == "a"
    assert SENTENCE_WEIGHTS.semantic > SENTENCE_WEIGHTS.lexical


def test_the_instructions_vector_adds_like_the_agents_own():
    semantic = [("a", 0.5), ("b", 0.55)]
    got = dict(fuse([], semantic, weights=Weights(0.0, 1.0, 0.0, 0.5), body_semantic=[("a", 0.4), ("b", -0.2)]))
    assert got == pytest.approx({"a": 0.7, "b": 0.55})  # a negative cosine adds nothing
    assert ids(fuse([], semantic, weights=Weights(0.0, 1.0), body_semantic=[("a", 0.4)])) == ["b", "a"]
    assert KEYWORD_WEIGHTS.body_semantic == 0 < SENTENCE_WEIGHTS.body_semantic < SENTENCE_WEIGHTS.semantic
