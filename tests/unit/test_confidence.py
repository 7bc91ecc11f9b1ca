"""Confidence: one formula over how the match was made; the table below is the specification."""

from __future__ import annotations

import pytest

from coord.confidence import HOW, SECRET_FACTOR, TRUST, UNPINNED_FACTOR, Evidence, score


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (Evidence("exact"), 1.0),
        (Evidence("alias"), HOW["alias"]),
        (Evidence("fuzzy", 0.89), round(HOW["fuzzy"] * 0.89, 4)),
        (Evidence("template", trust="internal"), HOW["template"]),
        (Evidence("partial", 0.5, trust="internal"), HOW["partial"] * 0.5),
        (Evidence("search", 0.6), round(HOW["search"] * 0.6, 4)),
        (Evidence("search", 0.0), 0.0),  # nothing known, nothing close: no confidence at all
        (Evidence("alias", missing_secrets=("PG_URL",)), round(HOW["alias"] * SECRET_FACTOR, 4)),
        (Evidence("exact", missing_secrets=("A", "B")), round(SECRET_FACTOR**2, 4)),
        (Evidence("exact", trust="manual"), TRUST["manual"]),
        (Evidence("exact", trust="not_allowed"), TRUST["not_allowed"]),
        (Evidence("exact", trust="remote"), TRUST["remote"]),
        (Evidence("exact", pinned=False), UNPINNED_FACTOR),
        (Evidence("fuzzy", 1.7), HOW["fuzzy"]),  # similarity is clamped into [0, 1]
        (Evidence("fuzzy", -1.0), 0.0),
    ],
)
def test_score_table(evidence: Evidence, expected: float) -> None:
    assert score(evidence).value == pytest.approx(expected, abs=1e-4)


def test_order_exact_alias_fuzzy_search() -> None:
    values = [score(Evidence(how, 0.85)).value for how in ("exact", "alias", "fuzzy", "search")]
    values[0] = score(Evidence("exact")).value
    values[1] = score(Evidence("alias")).value
    assert values == sorted(values, reverse=True) and len(set(values)) == 4


def test_the_seed_example_clears_its_bar() -> None:
    # postgresql -> the postgres server through an alias, its connection string not in the environment:
    # still above the seed's `proposals[0].confidence > 0.8`, and below an exact, secret-free hit.
    c = score(Evidence("alias", 1.0, ("POSTGRES_CONNECTION_STRING",)))
    assert 0.8 < c.value < score(Evidence("exact")).value


def test_basis_explains_every_factor() -> None:
    c = score(Evidence("fuzzy", 0.9, ("TOKEN",), "remote", False, {"matched": "rufff"}))
    basis = c.basis
    assert basis["how"] == "fuzzy" and basis["missing_secrets"] == ["TOKEN"] and basis["trust"] == "remote"
    assert basis["notes"] == {"matched": "rufff"}
    product = 1.0
    for value in basis["factors"].values():
        product *= value
    assert c.value == pytest.approx(product, abs=1e-3)


@pytest.mark.parametrize("bad", [Evidence("guess"), Evidence("exact", trust="friend")])  # type: ignore[arg-type]
def test_unknown_kinds_are_errors(bad: Evidence) -> None:
    with pytest.raises(ValueError):
        score(bad)
