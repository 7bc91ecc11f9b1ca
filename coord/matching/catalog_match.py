"""Catalog entries found by what a gap describes, when its name matches no entry's name.

An agent reports a missing capability in its own words: "postgres database access", "search the
web". Name lookups (exact, alias, difflib; coord.catalog) find typos of a name, not a description; a
gap named without spaces is a name, and only those lookups see it (`is_description`). A phrase is
embedded and compared with each entry's name + description; the best entry counts as a match only
when it is close enough (CATALOG_MIN_COSINE) and clearly ahead of the runner-up (CATALOG_MARGIN):
"database access" alone is as close to sqlite as to postgres and matches neither. A match is marked
`how="semantic"` so its proposal's confidence says how it was found (coord.confidence), and it goes
through the policy like any other.

Entry vectors are cached per process by (model, text): catalogs are small (tens of entries) and are
re-loaded for every proposal job, and embedding one costs ~10 ms.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import Any

from coord.catalog import MAX_QUERY_CHARS, Catalog, Match
from coord.matching import embedder as emb
from coord.matching.hybrid import semantic_embedder, worth_embedding

# Measured on the shipped catalog (47 tools, 18 MCP servers) with 24 gap phrasings: those that describe
# one entry score 0.45-0.85 and lead by 0.09 or more ("postgres database access" -> postgres 0.71 vs
# sqlite 0.34; "search the web" -> brave-search 0.49 vs 0.33; "json processor" -> jq 0.72 vs 0.61).
# Ambiguous ones lead by less ("database access": sqlite 0.45, postgres 0.38; "sqlite" tools 0.83 vs
# 0.78) and unrelated ones stay under 0.4 ("translate legal contracts" 0.31, "make coffee" 0.18): they
# only get the name-based suggestions.
CATALOG_MIN_COSINE = 0.45
CATALOG_MARGIN = 0.08

_lock = threading.Lock()
_vectors: dict[str, Any] = {}


def _entry_vector(embedder: emb.Embedder, name: str, description: str, aliases: Iterable[str]) -> Any:
    text = emb.agent_text(name, description, list(aliases))
    key = hashlib.sha256(f"{embedder.model_id}\n{text}".encode()).hexdigest()
    vec = _vectors.get(key)
    if vec is None:
        vec = emb.embed_agent(embedder, name, description, list(aliases))
        with _lock:
            _vectors[key] = vec
    return vec


def rank_entries(entries: list[Any], query: str, settings: Any, *, short: Any = None) -> list[tuple[Any, float]]:
    """(entry, cosine) best first; [] in lexical mode, for an empty or oversized query, or no entries.

    `short(entry)` names an entry for its text (an MCP server's short name rather than its registry name).
    """
    if not entries or not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        return []
    need = " ".join(query.replace("-", " ").replace("_", " ").split())
    if not worth_embedding(need):
        return []
    embedder = semantic_embedder(settings)
    if embedder is None:
        return []
    import numpy as np

    matrix = np.stack([_entry_vector(embedder, short(e) if short else e.name, e.description, e.aliases)
                       for e in entries])
    cosines = emb.cosine_scores(matrix, embedder.embed([need])[0])
    order = sorted(range(len(entries)), key=lambda i: (-float(cosines[i]), entries[i].name))
    return [(entries[i], float(cosines[i])) for i in order]


def is_description(query: str) -> bool:
    """A gap named with spaces ("postgres database access") describes what is missing; one without
    ("postgrez-db", "ruff") names it, and names are matched by name (exact, alias, difflib) only: a
    misspelt name is a suggestion for a person, never an install found by meaning."""
    return isinstance(query, str) and len(query.split()) > 1


def _best(ranked: list[tuple[Any, float]], query: str) -> Match | None:
    if not ranked:
        return None
    entry, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    if best < CATALOG_MIN_COSINE or best - second < CATALOG_MARGIN:
        return None
    return Match(entry, "semantic", round(best, 4), query)  # type: ignore[arg-type]


def semantic_tool(catalog: Catalog, query: str, settings: Any) -> Match | None:
    """The tool entry `query` describes, or None (a name, no clear winner, lexical mode, no extra)."""
    if not is_description(query):
        return None
    return _best(rank_entries(list(catalog.tools.values()), query, settings), query)


def semantic_mcp(catalog: Catalog, query: str, settings: Any) -> Match | None:
    """The MCP server entry `query` describes, or None (a name, no clear winner, lexical mode, no extra)."""
    if not is_description(query):
        return None
    ranked = rank_entries(list(catalog.mcp_servers.values()), query, settings, short=lambda e: e.short_name)
    return _best(ranked, query)


__all__ = ["CATALOG_MARGIN", "CATALOG_MIN_COSINE", "is_description", "rank_entries", "semantic_mcp", "semantic_tool"]
