"""Lexical ranking of agents for a need: exact expertise tags first, then full text, then availability.

The contract (same on SQLite FTS5 and PostgreSQL full-text): a higher score is a better match; an
exact tag beats any number of words in a description; a busy agent ranks below an idle equal one;
removed agents never appear. User text is split into words and never used as a pattern.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from coord.agentfiles import normalize_tag
from coord.db.backend import Backend, query_words
from coord.db.models import Agent, AgentExpertise, Task
from coord.matching.fusion import STOPWORDS
from coord.results import Candidate

# Weights, in one place. PHRASE_TAG: the whole need equals a tag ("react-native"); WORD_TAG: one word
# of the need equals a tag; text scores are squashed into [0, 1) so tags always dominate.
PHRASE_TAG = 3.0
WORD_TAG = 1.0
TEXT_WEIGHT = 1.0
LOAD_PENALTY = 0.1  # per claimed task: score / (1 + 0.1 * open tasks)
FTS_POOL = 50
TAG_POOL = 200  # agents kept from the tag match (see lexical_scores)
FINISH_POOL = 50  # best scores looked up for status and load (see finish)


def lexical_words(need: str) -> list[str]:
    """The words of `need` the full-text search looks for: its content words (coord.matching.fusion's
    stopwords dropped: "our", "make", "help" hit every description and drown the words that matter), or
    all its words when it has nothing else ("IT", "who can help"), so no need is silently emptied."""
    words = query_words(need)
    return [w for w in words if w not in STOPWORDS] or words


# A sentence's words found in more than this share of the indexed agents are not searched for (hybrid
# ranking only, where a sentence's lexical weight is small; see coord.matching.fusion). They cost the most,
# since every agent holding them is scored and sorted (~1 us of CPU per agent and word), and carry the
# least: past 50 % FTS5's BM25 gives a word an idf of ~0 (log((N - n + 0.5) / (n + 0.5)) <= 0 is clamped
# to 1e-6); at 10 % it is 2.2 against 4.6 for a word one agent in a hundred holds. On a registry built from
# the public collection, "use" is in 93 % of descriptions ("Use PROACTIVELY ..."), "system" in 30 %, "code"
# in 20 %. At 10,000 agents "use" was 7.2 of the 8.5 ms of CPU of the search for "make our site usable for
# blind people ... can't use a mouse", "code" and "system" 4.5 of the 5.6 ms of the one for "write the
# low-level code for a tiny sensor board ... no operating system". Hybrid top-1 / top-3 by share, paraphrased needs,
# wshobson set / VoltAgent held-out set: none 64.5/77.4 and 61.8/78.2; 0.5 and 0.25 the same; 0.2
# 65.6/78.5 and 61.8/78.2; 0.1 65.6/79.6 and 61.8/78.2; 0.05 64.5/79.6 and 63.6/78.2 (keyword needs are
# not filtered; their figures never moved).
COMMON_SHARE = 0.1
COMMON_MIN_AGENTS = 50  # below this, counts say little and the search is cheap anyway
COMMON_TTL_S = 60.0  # how long a word's count is trusted (counts drift slowly as agents come and go)
_COMMON_MAX = 20_000  # words remembered per process
_counts: dict[tuple[str, str], tuple[int, float]] = {}
_counts_lock = threading.Lock()


def informative_words(session: Session, backend: Backend, words: list[str], total: int) -> list[str]:
    """`words` without those that more than COMMON_SHARE of `total` indexed agents hold, unless that would
    leave nothing (then all of them: a need is never emptied). Counts are asked once per word and kept
    COMMON_TTL_S seconds per database, so a request usually sends no query at all."""
    if total < COMMON_MIN_AGENTS or len(set(words)) < 2:
        return words
    db = session.get_bind().engine.url.render_as_string(hide_password=True)
    now = time.monotonic()
    known: dict[str, int] = {}
    for w in set(words):
        hit = _counts.get((db, w))
        if hit is not None and now - hit[1] < COMMON_TTL_S:
            known[w] = hit[0]
    missing = [w for w in dict.fromkeys(words) if w not in known]
    if missing:
        fresh = backend.document_counts(session, missing)
        with _counts_lock:
            if len(_counts) > _COMMON_MAX:
                _counts.clear()
            _counts.update({(db, w): (n, now) for w, n in fresh.items()})
        known.update(fresh)
    kept = [w for w in words if known.get(w, 0) <= COMMON_SHARE * total]
    return kept or words


def lexical_scores(
    session: Session, backend: Backend, need: str, *, exclude: tuple[str, ...] = (), tags: bool = True,
    words: list[str] | None = None,
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Raw lexical evidence per agent (not yet lowered by load): (scores, why), for at most about
    TAG_POOL + FTS_POOL agents. A common tag ("api", "security") can be held by thousands of agents in a
    large registry: only the TAG_POOL agents with the most tag weight are kept, ties by id.
    `tags=False`: agents are found by the full-text search alone (hybrid ranking, see
    coord.matching.hybrid); the tags of those it found still count. `words`: what the full-text search
    looks for, when not `lexical_words(need)` (hybrid ranking passes `informative_words` of them)."""
    need_words = query_words(need)
    phrase = normalize_tag(need)
    wanted = {w for w in need_words} | ({phrase} if phrase else set())
    if not wanted:
        return {}, {}
    search = lexical_words(need) if words is None else words
    text = {a: raw for a, raw in backend.search(session, search, FTS_POOL) if a not in exclude}
    best: list[str] = []
    if tags:
        weight = case((AgentExpertise.tag == (phrase or ""), PHRASE_TAG), else_=WORD_TAG)
        tagged = select(AgentExpertise.agent_id).join(Agent, Agent.id == AgentExpertise.agent_id).where(
            AgentExpertise.tag.in_(wanted), Agent.status == "active")
        if exclude:
            tagged = tagged.where(AgentExpertise.agent_id.not_in(list(exclude)))
        best = list(session.scalars(tagged.group_by(AgentExpertise.agent_id)
                                    .order_by(func.sum(weight).desc(), AgentExpertise.agent_id).limit(TAG_POOL)))
    scores: dict[str, float] = {}
    why: dict[str, list[str]] = {}
    ids = list(dict.fromkeys([*best, *text]))
    if ids:  # the exact tag evidence of every kept agent, the text matches' included
        for agent_id, tag in session.execute(
            select(AgentExpertise.agent_id, AgentExpertise.tag)
            .where(AgentExpertise.agent_id.in_(ids), AgentExpertise.tag.in_(wanted))
            .order_by(AgentExpertise.agent_id, AgentExpertise.tag)
        ):
            scores[agent_id] = scores.get(agent_id, 0.0) + (PHRASE_TAG if tag == phrase else WORD_TAG)
            why.setdefault(agent_id, []).append(f"tag:{tag}")
    for agent_id, raw in text.items():
        scores[agent_id] = scores.get(agent_id, 0.0) + TEXT_WEIGHT * raw / (1.0 + raw)
        why.setdefault(agent_id, []).append("text")
    return scores, why


def finish(session: Session, scores: dict[str, float], why: dict[str, list[str]], limit: int) -> list[Candidate]:
    """Candidates from scores: active agents only, busy ones lowered, best first (ties by id).

    Only the FINISH_POOL best scores are looked up: the load penalty and a removal can only lower an
    agent, so one further down could only reach the top `limit` if most of the pool were busy or gone.
    """
    if not scores:
        return []
    scores = dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:max(FINISH_POOL, 4 * limit)])
    # Status, description and open tasks in one statement: this runs on every request.
    claimed = (select(func.count()).select_from(Task)
               .where(Task.to_agent == Agent.id, Task.status == "claimed").scalar_subquery())
    rows = session.execute(select(Agent.id, Agent.description, claimed)
                           .where(Agent.id.in_(scores), Agent.status == "active")).all()
    active = {a: d for a, d, _ in rows}
    load = {a: int(n) for a, _, n in rows}
    ranked = sorted(
        (
            Candidate(
                agent_id=a,
                score=round(s / (1.0 + LOAD_PENALTY * load.get(a, 0)), 6),
                why=why.get(a, []),
                description=active[a][:200],
            )
            for a, s in scores.items()
            if a in active
        ),
        key=lambda c: (-c.score, c.agent_id),
    )
    return ranked[:limit]


def rank_lexical(
    session: Session, backend: Backend, need: str, *, limit: int = 5, exclude: tuple[str, ...] = ()
) -> list[Candidate]:
    scores, why = lexical_scores(session, backend, need, exclude=exclude)
    return finish(session, scores, why, limit)
