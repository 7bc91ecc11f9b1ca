"""Lexical evidence from an agent's instructions (the Markdown body of its file), for hybrid ranking.

A description is a sentence or two; the body says in detail what the agent does ("code signing",
"auto-updater", "error budget"). Its words are a small extra signal beside the cosine (weight and figures
in coord.matching.fusion).

Why not the engines' full-text index: at 10,000 agents with real bodies (median 6.4 kB) an FTS5 BM25
search for a sentence's words cost p50 3.5 / p99 9 ms even after dropping the words a tenth of the
agents hold (12 / 26 ms without that filter): FTS5 scores and sorts every body holding a word. Here each
agent's body is reduced once, by the embed job that also makes its vector, to a bag of terms stored
beside the vector (AgentEmbedding.terms); each process keeps the bags as postings (term -> rows, counts)
next to the vector matrix, and a request scores the whole collection with a few array operations
(~0.4 ms at 10,000 agents). Same code on both engines, so both rank alike (invariant 9).

Words: lowercased runs of letters and digits, stopwords dropped, Porter-stemmed (the stemmer of SQLite's
`porter` tokenizer, from `snowballstemmer`, part of the `semantic` extra). A bag counts at most
MAX_TOKENS words of a body and keeps the MAX_TERMS most frequent.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from coord.matching.fusion import STOPWORDS

try:
    import numpy as np

    _NO_ROWS, _NO_COUNTS = np.zeros(0, np.int32), np.zeros(0, np.float32)
except ImportError:  # only hybrid ranking reads bags back, and it needs the extra anyway
    np = None  # type: ignore[assignment]

MAX_TOKENS = 20_000
MAX_TERMS = 2_000
K1, B = 1.2, 0.75  # BM25's usual constants (FTS5's too)
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_HEADER = struct.Struct("<BII")  # format version, words counted, distinct terms
# Version 2 stores the arrays as they are. Version 1 (coord before it) zlib-compressed them, which saved
# little (hashed ids do not compress) and cost 28 us a bag to read: 0.28 s of a process's first request at
# 10,000 agents. Version-1 bags are still read; a zlib stream starts with 0x78, which no version byte is.
_VERSION = 2
_ZLIB_VERSION = 1
# A bag: (words counted, term ids, their counts). A term id is the first 8 bytes of the stem's BLAKE2b
# (no vocabulary to share between processes; two stems of one collection colliding is a ~1e-10 event),
# so a process loading 10,000 bags maps each straight into arrays: no Python object per word.
Bag = tuple[int, Any, Any]


@functools.cache
def _stemmer() -> Any:
    try:
        import snowballstemmer
    except ImportError:  # an extra installed in part: words are matched unstemmed, at both ends alike
        return None
    return snowballstemmer.stemmer("porter")


@functools.lru_cache(maxsize=100_000)
def term_id(word: str) -> int:
    """The id of a lowercased word: its stem's hash."""
    stemmer = _stemmer()
    stem = stemmer.stemWord(word) if stemmer is not None else word
    return int.from_bytes(hashlib.blake2b(stem.encode("utf-8"), digest_size=8).digest(), "little")


def terms(text: str, limit: int = MAX_TOKENS) -> list[int]:
    """The term ids of the content words of `text`, in order (at most `limit`)."""
    out = []
    for match in _TOKEN.finditer(text or ""):
        word = match.group().lower()
        if word in STOPWORDS or len(word) > 40:
            continue
        out.append(term_id(word))
        if len(out) >= limit:
            break
    return out


def to_bytes(text: str) -> bytes:
    """The stored bag of an agent's instructions: its MAX_TERMS most frequent terms, sorted by id."""
    words = terms(text)
    kept = sorted(Counter(words).most_common(MAX_TERMS))
    ids = array("Q", (t for t, _ in kept))
    counts = array("H", (min(n, 65535) for _, n in kept))
    if sys.byteorder != "little":
        ids.byteswap()
        counts.byteswap()
    return _HEADER.pack(_VERSION, len(words), len(kept)) + ids.tobytes() + counts.tobytes()


def from_bytes(blob: bytes | None) -> Bag:
    """A stored bag as arrays. An empty one for None (no instructions), a format this code does not know,
    or a damaged blob: the agent then ranks without body evidence, and ranking never fails over it."""
    try:
        raw, version = bytes(blob or b""), _VERSION
        if raw[:1] == b"\x78":
            raw, version = zlib.decompress(raw), _ZLIB_VERSION
        if len(raw) >= _HEADER.size and raw[0] == version:
            _, length, n = _HEADER.unpack_from(raw)
            if len(raw) == _HEADER.size + 10 * n:
                ids = np.frombuffer(raw, dtype="<u8", count=n, offset=_HEADER.size)
                counts = np.frombuffer(raw, dtype="<u2", count=n, offset=_HEADER.size + 8 * n).astype(np.float32)
                return length, ids, counts
    except zlib.error:
        pass
    return 0, np.zeros(0, np.uint64), np.zeros(0, np.float32)


# An update touching more rows than this share of the index rebuilds the postings in one pass, and so does
# one that would leave more than OVERLAY_MAX terms in the overlay of changes since the last rebuild.
REBUILD_SHARE = 0.05
OVERLAY_MAX = 50_000


@dataclass(frozen=True)
class Postings:
    """Term id -> (rows holding it, their counts), as one sorted array of term ids with a slice of `rows` and
    `counts` each (built in one sort, no Python object per term: for 10,000 bags of 600 terms over a
    380,000-term vocabulary a dict of slices took 0.9 s and 167 MB, this 0.5 s and 32 MB), plus the terms
    incremental updates changed since (`overlay`)."""

    terms: Any  # np.uint64, sorted, unique
    starts: Any  # np.int64 (len(terms) + 1,): term i owns rows[starts[i]:starts[i + 1]]
    rows: Any  # np.int32
    counts: Any  # np.float32
    overlay: dict[int, tuple[Any, Any]]

    @classmethod
    def build(cls, row_terms: list[Any], row_counts: list[Any]) -> Postings:
        terms_ = np.concatenate(row_terms) if row_terms else np.zeros(0, np.uint64)
        counts = np.concatenate(row_counts) if row_counts else np.zeros(0, np.float32)
        rows = np.repeat(np.arange(len(row_terms), dtype=np.int32), [t.size for t in row_terms])
        if not terms_.size:
            return cls(terms_, np.zeros(1, np.int64), rows, counts, {})
        order = np.argsort(terms_, kind="stable")
        terms_, rows, counts = terms_[order], rows[order], counts[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(terms_)) + 1, [terms_.size])).astype(np.int64)
        return cls(terms_[starts[:-1]], starts, rows, counts, {})

    def get(self, term: int) -> tuple[Any, Any]:
        """(rows, counts) of `term`, empty arrays when no row holds it."""
        hit = self.overlay.get(term)
        if hit is not None:
            return hit
        i = int(np.searchsorted(self.terms, np.uint64(term)))
        if i < self.terms.size and int(self.terms[i]) == term:
            return self.rows[self.starts[i]:self.starts[i + 1]], self.counts[self.starts[i]:self.starts[i + 1]]
        return _NO_ROWS, _NO_COUNTS


@dataclass(frozen=True)
class BodyIndex:
    """The bags of one VectorCache entry: row i is the agent of the matrix's row i.

    Kept twice: per row (sorted term ids and counts, to undo a row when it changes) and per term (the
    rows holding it and their counts: a need's words score every agent with a few array operations).
    An instance is never changed (requests may hold it): `updated` returns a new one.
    """

    row_terms: list[Any]  # per row: np.uint64 term ids
    row_counts: list[Any]  # per row: np.float32 counts, same order
    lengths: Any  # np.float32 (rows,): words counted per row
    postings: Postings
    norm: Any  # np.float32 (rows,): BM25's length normalisation of each row, K1 * (1 - B + B * len / avg)

    @classmethod
    def build(cls, bags: Sequence[Bag]) -> BodyIndex:
        empty = Postings.build([], [])
        return cls([], [], np.zeros(0, np.float32), empty, np.zeros(0, np.float32)).updated({}, bags)

    def updated(self, replaced: dict[int, Bag], added: Sequence[Bag]) -> BodyIndex:
        """This index with rows replaced and rows appended."""
        row_terms, row_counts = list(self.row_terms), list(self.row_counts)
        lengths = self.lengths.tolist()
        old = {row: row_terms[row] for row in replaced}
        for row, (length, ids, counts) in replaced.items():
            row_terms[row], row_counts[row], lengths[row] = ids, counts, length
        first_added = len(row_terms)
        for length, ids, counts in added:
            row_terms.append(ids)
            row_counts.append(counts)
            lengths.append(length)
        changed = list(replaced) + list(range(first_added, len(row_terms)))
        touched = sum(old[row].size for row in old) + sum(row_terms[row].size for row in changed)
        if (len(changed) > REBUILD_SHARE * len(row_terms)
                or len(self.postings.overlay) + touched > OVERLAY_MAX):
            postings = Postings.build(row_terms, row_counts)
        else:
            overlay = dict(self.postings.overlay)
            current = replace(self.postings, overlay=overlay)  # reads see the overlay as it grows
            for row in changed:
                for term in old[row].tolist() if row in old else ():
                    rows, counts = current.get(term)
                    keep = rows != row
                    overlay[term] = (rows[keep], counts[keep])
                for term, count in zip(row_terms[row].tolist(), row_counts[row].tolist(), strict=True):
                    rows, counts = current.get(term)
                    overlay[term] = (np.append(rows, np.int32(row)), np.append(counts, np.float32(count)))
            postings = current
        arr = np.array(lengths, dtype=np.float32)
        with_body = arr[arr > 0]
        norm = K1 * (1.0 - B + B * arr / (float(with_body.mean()) if with_body.size else 1.0))
        return BodyIndex(row_terms, row_counts, arr, postings, norm)

    def scores(self, query: str) -> Any:
        """BM25 of the query's words in every row's bag (np.float32, 0 where none occurs), or None when
        no word of the query is in any bag."""
        present = [p for p in map(self.postings.get, set(terms(query, 64))) if p[0].size]
        if not present:
            return None
        n = len(self.lengths)
        out = np.zeros(n, dtype=np.float32)
        for rows, counts in present:
            idf = np.log1p((n - rows.size + 0.5) / (rows.size + 0.5))
            out[rows] += idf * counts * (K1 + 1.0) / (counts + self.norm[rows])
        return out
