"""Word bags of agents' instructions and their BM25 index (coord.matching.bodyterms)."""

from __future__ import annotations

import zlib

import pytest

from coord.matching import bodyterms

np = pytest.importorskip("numpy", reason="the body index needs numpy (it comes with the 'semantic' extra)")

BODIES = [
    "You sign installers and ship automatic updates for Windows and macOS.",
    "You tune PostgreSQL replication and vacuum settings.",
    "",  # an agent registered without a file: no instructions
    "You write Playwright end-to-end tests; tests run on every commit.",
]


def bag(text: str) -> bodyterms.Bag:
    return bodyterms.from_bytes(bodyterms.to_bytes(text))


def test_bags_count_stemmed_content_words():
    length, ids, counts = bag("Our tests: testing the tested installers, installer updates!")
    assert length == 6  # "our", "the" are stopwords
    by_word = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    assert by_word == {bodyterms.term_id("test"): 3, bodyterms.term_id("installer"): 2,
                       bodyterms.term_id("updates"): 1}  # Porter stems: test(s/ing/ed), installer(s)
    assert bodyterms.term_id("installers") == bodyterms.term_id("install") != bodyterms.term_id("updates")
    assert bodyterms.to_bytes("B a") == bodyterms.to_bytes("a b")  # the same bag, byte for byte
    good = bodyterms.to_bytes("signed installers")
    for broken in (None, b"", b"not a bag", b"\x09future format" + good[1:], zlib.compress(b"\x09future"),
                   good[:-3], good + b"\x00\x00", zlib.compress(good), b"\x78 not zlib"):
        length, ids, counts = bodyterms.from_bytes(broken)  # missing, unknown, cut short, too long, damaged
        assert length == 0 and ids.size == 0 and counts.size == 0, broken


def test_bags_stored_by_earlier_versions_still_read():
    """Version 1 (zlib-compressed) bags stay in databases until their agent changes."""
    current = bodyterms.to_bytes("You sign installers and ship updates.")
    version_1 = zlib.compress(b"\x01" + current[1:])
    for a, b in zip(bodyterms.from_bytes(version_1), bodyterms.from_bytes(current), strict=True):
        assert np.array_equal(a, b)
    assert bodyterms.from_bytes(current)[0] == 4  # sign, installers, ship, updates


def test_scores_rank_the_body_that_names_the_need():
    index = bodyterms.BodyIndex.build([bag(b) for b in BODIES])
    scores = index.scores("signed installer updates")
    assert scores.argmax() == 0 and scores[1] == scores[2] == scores[3] == 0
    tests = index.scores("end-to-end tests")
    assert tests.argmax() == 3
    assert index.scores("banana bread") is None  # no word of the need in any body
    assert bodyterms.BodyIndex.build([bag(""), bag("")]).scores("installers") is None  # agents without files


def test_rare_words_weigh_more_than_common_ones():
    index = bodyterms.BodyIndex.build([bag(b) for b in ["alpha beta", "alpha gamma", "alpha delta"]])
    assert index.scores("gamma")[1] > index.scores("alpha")[1] > 0


def test_an_update_equals_a_rebuild():
    bags = [bag(b) for b in BODIES]
    changed = bag("You now tune Kafka replication.")
    added = [bag("You review PostgreSQL schemas."), bag("")]
    big = bodyterms.BodyIndex.build(bags * 30)  # 120 rows: a small update takes the incremental path
    updated = big.updated({1: changed}, added)
    rebuilt = bodyterms.BodyIndex.build([*(bags * 30)[:1], changed, *(bags * 30)[2:], *added])
    for need in ("postgresql replication", "kafka", "installers", "schemas"):
        assert np.allclose(updated.scores(need), rebuilt.scores(need)), need
    assert big.scores("kafka") is None  # the index it came from is left as it was


def test_many_small_updates_stay_equal_to_a_rebuild(monkeypatch):
    """Each small update adds to an overlay of changed terms; past OVERLAY_MAX the postings are rebuilt."""
    monkeypatch.setattr(bodyterms, "OVERLAY_MAX", 12)
    bags = [bag(b) for b in BODIES] * 30
    index = bodyterms.BodyIndex.build(bags)
    sizes = []
    edits = ["You tune Kafka.", "You sign installers for Kafka.", "", "You test Kafka consumers."] * 5
    for i, text in enumerate(edits):
        row = i * 7 % len(bags)
        index = index.updated({row: bag(text)}, [])
        bags[row] = bag(text)
        sizes.append(len(index.postings.overlay))
    assert 0 < max(sizes) <= 12 and 0 in sizes[1:]  # overlaid, and folded back into the arrays on the way
    rebuilt = bodyterms.BodyIndex.build(bags)
    for need in ("kafka consumers", "installers", "postgresql vacuum", "playwright tests"):
        assert np.allclose(index.scores(need), rebuilt.scores(need)), need
