"""Lexical evidence from an agent's instructions (the Markdown body of its file), for hybrid ranking.

A description is a sentence or two; the body says in detail what the agent does ("code signing",
"auto-updater", "error budget"). Its words are a small extra signal beside the cosine (weight and figures
in coord.matching.fusion).

Why not the engines' full-text index: at 10,000 agents with real bodies (median 6.4 kB) an FTS5 BM25
search for a sentence's words cost p50 3.5 / p99 9 ms even after dropping the words a tenth of the
agents hold (12 / 26 ms without that filter), because every body holding a word is scored. Only the
50-100 candidates that the cosine and the name/description search found need a body score, so each
agent's body is reduced once, by the embed job that also makes its vector, to a bag of stemmed words
stored beside the vector (AgentEmbedding.terms), and a request scores its candidates in memory with
BM25 (~0.2 ms). Same code on both engines, so both rank alike (invariant 9).

Words: lowercased runs of letters and digits, stopwords dropped, Porter-stemmed (the stemmer of SQLite's
`porter` tokenizer, from `snowballstemmer`, part of the `semantic` extra). A bag counts at most
MAX_TOKENS words of a body and keeps the MAX_TERMS most frequent.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coord.matching.fusion import STOPWORDS

try:
    import numpy as np

    _NO_ROWS, _NO_COUNTS = np.zeros(0, np.int32), np.zeros(0, np.float32)
except ImportError:  # only the embed job and hybrid ranking use this module, both behind the extra
    np = None  # type: ignore[assignment]

MAX_TOKENS = 20_000
MAX_TERMS = 2_000
K1, B = 1.2, 0.75  # BM25's usual constants (FTS5's too)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
Bag = tuple[int, dict[str, int]]  # (words counted, {stem: count})


@functools.cache
def _stemmer() -> Any:
    try:
        import snowballstemmer
    except ImportError:  # an extra installed in part: words are matched unstemmed, at both ends alike
        return None
    return snowballstemmer.stemmer("porter")


@functools.lru_cache(maxsize=100_000)
def _stem(word: str) -> str:
    stemmer = _stemmer()
    return stemmer.stemWord(word) if stemmer is not None else word


def terms(text: str, limit: int = MAX_TOKENS) -> list[str]:
    """The stemmed content words of `text`, in order (at most `limit`)."""
    out = []
    for match in _TOKEN.finditer(text or ""):
        word = match.group().lower()
        if word in STOPWORDS or len(word) > 40:
            continue
        out.append(_stem(word))
        if len(out) >= limit:
            break
    return out


def bag(text: str) -> Bag:
    words = terms(text)
    counts = Counter(words)
    if len(counts) > MAX_TERMS:
        counts = Counter(dict(counts.most_common(MAX_TERMS)))
    return len(words), dict(counts)


def to_bytes(b: Bag) -> bytes:
    return zlib.compress(json.dumps(list(b), separators=(",", ":"), sort_keys=True).encode("utf-8"))


def from_bytes(blob: bytes | None) -> Bag:
    """A stored bag; an empty one for None (no instructions)."""
    if not blob:
        return 0, {}
    length, counts = json.loads(zlib.decompress(blob))
    return int(length), {str(k): int(v) for k, v in counts.items()}


# An update touching more rows than this share of the index rebuilds the postings in one pass.
REBUILD_SHARE = 0.05


@dataclass(frozen=True)
class BodyIndex:
    """The bags of one VectorCache entry: row i is the agent of the matrix's row i.

    Kept twice: per row (sorted term ids and counts, to undo a row when it changes) and per term (the
    rows holding it and their counts: a need's words score every agent with a few array operations).
    An instance is never changed (requests may hold it): `updated` returns a new one.
    """

    vocab: dict[str, int]
    row_terms: list[Any]  # per row: np.int32 term ids
    row_counts: list[Any]  # per row: np.float32 counts, same order
    lengths: Any  # np.float32 (rows,): words counted per row
    postings: dict[int, tuple[Any, Any]]  # term id -> (np.int32 rows, np.float32 counts)

    @classmethod
    def build(cls, bags: Sequence[Bag]) -> BodyIndex:
        return cls({}, [], [], np.zeros(0, np.float32), {}).updated({}, bags)

    def updated(self, replaced: dict[int, Bag], added: Sequence[Bag]) -> BodyIndex:
        """This index with rows replaced and rows appended."""
        vocab = dict(self.vocab)
        row_terms, row_counts = list(self.row_terms), list(self.row_counts)
        lengths = self.lengths.tolist()

        def encode(b: Bag) -> tuple[Any, Any]:
            ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in b[1]), dtype=np.int32, count=len(b[1]))
            return ids, np.fromiter(b[1].values(), dtype=np.float32, count=len(b[1]))

        old = {row: row_terms[row] for row in replaced}
        for row, b in replaced.items():
            row_terms[row], row_counts[row] = encode(b)
            lengths[row] = b[0]
        first_added = len(row_terms)
        for b in added:
            ids, counts = encode(b)
            row_terms.append(ids)
            row_counts.append(counts)
            lengths.append(b[0])
        changed = list(replaced) + list(range(first_added, len(row_terms)))
        if len(changed) > REBUILD_SHARE * len(row_terms):
            postings = _postings(row_terms, row_counts)
        else:
            postings = dict(self.postings)
            for row in changed:
                for term in old.get(row, ()):
                    rows, counts = postings[int(term)]
                    keep = rows != row
                    postings[int(term)] = (rows[keep], counts[keep])
                for term, count in zip(row_terms[row].tolist(), row_counts[row].tolist(), strict=True):
                    rows, counts = postings.get(term, (_NO_ROWS, _NO_COUNTS))
                    postings[term] = (np.append(rows, np.int32(row)), np.append(counts, np.float32(count)))
        return BodyIndex(vocab, row_terms, row_counts, np.array(lengths, dtype=np.float32), postings)

    def scores(self, query: str) -> Any:
        """BM25 of the query's words in every row's bag (np.float32, 0 where none occurs), or None when
        no word of the query is in any bag."""
        terms_ = {self.vocab[t] for t in terms(query, 64) if t in self.vocab}
        present = [self.postings[t] for t in terms_ if t in self.postings and self.postings[t][0].size]
        if not present:
            return None
        n = len(self.lengths)
        with_body = self.lengths[self.lengths > 0]
        norm = K1 * (1.0 - B + B * self.lengths / float(with_body.mean()))
        out = np.zeros(n, dtype=np.float32)
        for rows, counts in present:
            idf = np.log1p((n - rows.size + 0.5) / (rows.size + 0.5))
            out[rows] += idf * counts * (K1 + 1.0) / (counts + norm[rows])
        return out


def _postings(row_terms: list[Any], row_counts: list[Any]) -> dict[int, tuple[Any, Any]]:
    """Term id -> (rows, counts), built in one sort."""
    if not row_terms:
        return {}
    terms_ = np.concatenate(row_terms)
    counts = np.concatenate(row_counts)
    rows = np.repeat(np.arange(len(row_terms), dtype=np.int32), [t.size for t in row_terms])
    order = np.argsort(terms_, kind="stable")
    terms_, rows, counts = terms_[order], rows[order], counts[order]
    cuts = np.flatnonzero(np.diff(terms_)) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [terms_.size])).tolist()
    return {int(terms_[a]): (rows[a:b], counts[a:b]) for a, b in zip(starts, ends, strict=True) if b > a}
