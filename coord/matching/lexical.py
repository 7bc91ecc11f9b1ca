"""Lexical ranking of agents for a need: exact expertise tags first, then full text, then availability.

The contract (same on SQLite FTS5 and PostgreSQL full-text): a higher score is a better match; an
exact tag beats any number of words in a description; a busy agent ranks below an idle equal one;
removed agents never appear. User text is split into words and never used as a pattern.
"""

from __future__ import annotations

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


def lexical_scores(
    session: Session, backend: Backend, need: str, *, exclude: tuple[str, ...] = (), tags: bool = True
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Raw lexical evidence per agent (not yet lowered by load): (scores, why), for at most about
    TAG_POOL + FTS_POOL agents. A common tag ("api", "security") can be held by thousands of agents in a
    large registry: only the TAG_POOL agents with the most tag weight are kept, ties by id.
    `tags=False`: agents are found by the full-text search alone (hybrid ranking of a sentence, see
    coord.matching.hybrid); the tags of those it found still count."""
    words = query_words(need)
    phrase = normalize_tag(need)
    wanted = {w for w in words} | ({phrase} if phrase else set())
    if not wanted:
        return {}, {}
    text = {a: raw for a, raw in backend.search(session, lexical_words(need), FTS_POOL) if a not in exclude}
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
