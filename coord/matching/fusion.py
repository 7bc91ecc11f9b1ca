"""Hybrid ranking: the one place where lexical and semantic scores are combined.

Inputs are candidate lists of `(agent_id, score)`, higher is better, in any order: lexical, semantic
and (optional) body, the BM25 of the need's words in the candidates' instructions, scaled like lexical:
- lexical: any non-negative relevance (BM25 negated, ts_rank, tag bonuses...). Its scale depends on
  the engine, the collection and the query length, so it is divided by the list's best score: the
  best lexical match gets 1.0, the others their fraction of it, a non-positive score 0.
- semantic: cosine similarity of the need's vector with the agent's vector, used as is (clipped to
  [0, 1]). A cosine is already on a fixed scale; stretching it (min-max over the list) would turn a
  list of uniformly poor matches into a confident-looking one, and would depend on the list length.

`method="weighted"` (default): score = w_lexical * lexical_norm + w_semantic * cosine. An agent missing
from a list gets 0 from it; pass the cosine of every lexical candidate too when you can (it is one
row of the matrix product you already computed).

Weights (`weights_for_query`), measured with `scripts/eval-matching` on scripts/eval-queries.tsv (93
paraphrased + 50 keyword needs over the 202 agents of the public wshobson collection), through coord's
own sync, embed job and rankers:
- natural-language needs (more than 3 content words): lexical 0.05, semantic 0.95. A paraphrased need
  shares few words with the right agent, and its incidental words ("site", "team", "people") hit many
  descriptions: words only break near-ties. The best lexical match always gets the full lexical
  weight (scores are divided by the best), while the cosines of the top candidates sit a few hundredths
  apart, so a larger weight lets one incidental word decide the ranking.
- keyword needs (1-3 content words: "Terraform modules", "Ghidra"): lexical 0.5, semantic 0.5. An
  exact term is the strongest evidence there is, and a lone rare word embeds poorly.

Paraphrased top-1 / top-3 by sentence weights (lexical, semantic), all-MiniLM-L6-v2 int8, keyword
weights (0.5, 0.5) throughout (keyword top-1 98 % / top-3 98 % in every row):

    (0.0, 1.0)    60.2 % / 75.3 %        (0.1, 0.9)    61.3 % / 76.3 %
    (0.05, 0.95)  64.5 % / 77.4 %        (0.15, 0.85)  52.7 % / 71.0 %
    (0.075, .925) 63.4 % / 78.5 %        (0.2, 0.8)    49.5 % / 66.7 %
cosine alone 61.3 % / 74.2 % (keyword 76 % / 88 %); lexical alone 31.2 % / 44.1 % (keyword 94 % / 96 %).
The drop past 0.1 is steep, which is the second reason for the small weight: on a collection whose
word statistics differ, the same weight must not land past the edge. A held-out check on a second
public collection (VoltAgent's awesome-claude-code-subagents, 158 agents, 50 paraphrased + 12 keyword
needs written from the agent names alone before anything was measured; not committed) gave the same
figures for 0.05 and 0.1: paraphrased 58 % / 74 % while the parser still refused 10 of its files,
62 % / 78 % now that it reads them (cosine alone 62 % / 80 %); keyword 100 %. Keyword
weights anywhere from (0.3, 0.7) to (0.7, 0.3) give the same figures. Other fusions measured on the
wshobson set, none better: lexical not divided by its best (raw squashed score capped at 1, weights
0.05-0.2) 61 % / 78 % at best; semantic z-scored over the collection 63 % / 77 %; reciprocal rank fusion
below.
`method="rrf"` (reciprocal rank fusion, k=60) is kept for comparison: it discards score magnitudes and
measured worse (k=60: 56 % / 72 %, k=10: 58 % / 77 %, keyword top-1 96 %).

Second round (issue 9), with a held-out set that is committed this time: scripts/eval-queries-voltagent.tsv,
55 paraphrased + 12 keyword needs over VoltAgent's awesome-claude-code-subagents (158 agents, commit
c9e51ec, `categories/`), written before anything was measured on it and never tuned on. Figures below
are hybrid paraphrased top-1 / top-3, wshobson set | VoltAgent set; keyword needs stayed at 98 % | 100 %
in every row. Baseline (this module as it was): 64.5 / 77.4 | 61.8 / 78.2 (cosine alone 61.3 / 74.2 |
61.8 / 72.7; lexical alone 31.2 / 44.1 | 32.7 / 43.6). One need is 1.1 | 1.8 points: most rows are noise.

    agent scored by its segments' cosines instead of   max                   63.4 / 74.2 | 58.2 / 74.5
      the cosine of their mean vector (multi-vector)   0.5 mean + 0.5 max    65.6 / 75.3 | 65.5 / 76.4
                                                       0.75 mean + 0.25 max  64.5 / 76.3 | 61.8 / 76.4
                                                       mean of the best 2    65.6 / 77.4 | 65.5 / 74.5
                                                       mean of the best 3    63.4 / 78.5 | 61.8 / 76.4
    segments added: first body paragraph (in the mean) 58.1 / 75.3 | 61.8 / 76.4
      body bullets (<= 16, max only), 0.5 mean + max   60.2 / 75.3 | 65.5 / 76.4
      body headings, 0.5 mean + max                    65.6 / 76.3 | 61.8 / 76.4
    "Use this agent when" / "Expert" prefixes stripped 61.3 / 77.4 | 63.6 / 80.0
    vectors centred on the collection mean             63.4 / 75.3 | 60.0 / 80.0
    hubness correction (CSLS, 10 nearest agents) 0.25  59.1 / 72.0 | 60.0 / 78.2
    query expanded by its 3 nearest agents (0.3)       60.2 / 71.0 | 69.1 / 76.4
    need split into clauses, clause cosines averaged   62.4 / 76.3 | 63.6 / 78.2
      with the whole need's (0.5 / 0.5)
    BM25 over the markdown body, + 0.1 x (its score /  63.4 / 83.9 | 65.5 / 81.8
      best) on each candidate (not implemented: the
      registry does not store bodies)
Multi-vector scoring was the main hope: an agent matched through one specific sentence rather than the
average of all. It wins some needs and loses as many (max favours agents with one generic sentence;
the mean keeps an agent's several claims together), on both sets, so agents keep one mean vector (and
a request one matrix-vector product). The one change that helped top-3 on both sets is lexical evidence
from the body (+1 to +7 points for 0.03 to 0.2 x, best at 0.1-0.15); top-1 did not move beyond noise. It needs the body
stored and indexed (registry, sync, full-text schema on both engines), left for a separate change. Not
searching a sentence's common words (coord.matching.lexical.informative_words, a latency fix) gave
65.6 / 79.6 | 61.8 / 78.2, the figures of record now.

Third round: the words of the agents' instructions (the body of the file), `body` weight. The body says
what the agent does in detail ("code signing", "auto-updater", "error budget") where the description
stays general. BM25 of the need's words in each candidate's instructions, divided by the best candidate's
(coord.matching.bodyterms), plus, for a keyword need, the agents whose instructions name it best
(coord.matching.hybrid.BODY_POOL: "borrow checker", "Airflow DAGs" are in no description). Checked on a
third set this time, scripts/eval-queries-voltagent-2.tsv (65 paraphrased + 15 keyword needs over the
VoltAgent collection, written from the agent files by a separate author who never saw a ranking):
hybrid paraphrased top-1 / top-3 (keyword top-1 / top-3) by body weight, wshobson | VoltAgent | VoltAgent-2:

    0 (as before)   65.6 / 79.6 (98 / 98)   61.8 / 78.2 (100 / 100)   56.9 / 78.5 (73.3 / 80.0)
    0.05            64.5 / 79.6             63.6 / 78.2               63.1 / 78.5 (80.0 / 86.7)
    0.1             63.4 / 83.9 (98 / 98)   60.0 / 80.0 (100 / 100)   64.6 / 81.5 (86.7 / 100)
    0.15            63.4 / 84.9             60.0 / 80.0               66.2 / 80.0 (80.0 / 80.0)
    0.2             64.5 / 84.9             58.2 / 81.8               -
(0 and 0.1: scripts/eval-matching, 0.1 with the keyword candidates; the other rows: the same rankers
replayed with the bodies outside coord, without those candidates, which changes keyword needs only.)
Top-3 gains on every set (+4.3 | +1.8 | +3.0), top-1 on the set nobody tuned on (+7.7); keyword needs
gain where a term is only in a body (VoltAgent-2: 73 -> 87 top-1, 80 -> 100 top-3). Same weight for
keyword needs: 0.25 and 0.5 changed nothing there and cost a paraphrased need elsewhere.

Fourth round: a fourth set, scripts/eval-queries-0xfurai.tsv (60 paraphrased + 20 keyword needs over the
137 agents of 0xfurai/claude-code-subagents, commit 3f0399d: short generic descriptions, specifics in the
bodies), written from the agent files by a separate author who never saw a ranking. The body weight for
sentences, measured with scripts/eval-matching on all four sets (paraphrased top-1 / top-3; wshobson |
VoltAgent | VoltAgent-2 | 0xfurai):

    0.1   63.4 / 83.9   60.0 / 80.0   64.6 / 81.5   51.7 / 75.0
    0.15  63.4 / 84.9   60.0 / 80.0   66.2 / 80.0   56.7 / 75.0
    0.2   64.5 / 84.9   60.0 / 81.8   67.7 / 83.1   58.3 / 75.0    <- SENTENCE_WEIGHTS.body
    0.25  63.4 / 82.8   60.0 / 78.2   70.8 / 83.1   61.7 / 76.7
    0.3   62.4 / 81.7   61.8 / 78.2   70.8 / 83.1   61.7 / 76.7
0.2 is the one weight that loses nothing on any set against 0.1 (and is the best top-3 on three of four);
past it top-1 keeps rising where bodies are rich and top-3 falls where they are not. Keyword needs stay at
98 | 100 | 86.7 | 95 top-1 in every row; one of them, "Playwright end-to-end tests" (four content words,
so ranked as a sentence), leaves VoltAgent-2's top 3 from 0.15 on (keyword top-3 100 -> 93.3). Tried and
not kept this round: BM25 scaled by the share of the need's words a body holds (Lucene's old coord factor;
for keyword needs only or for all: no gain, a keyword need lost), and counting a need's distinct words
only (so "end-to-end" counts once; that need then ranks worse with keyword weights).
A fifth set, scripts/eval-queries-rshah515.tsv (70 paraphrased + 20 keyword needs over the 165 agents of
rshah515/claude-code-subagents, written the same way), was measured only once these weights were fixed:
hybrid 57.1 / 75.7 paraphrased, 90 / 95 keyword (lexical 15.7 / 30.0, description cosine 45.7 / 62.9).
Keyword body weights 0.25 and 0.5, checked on all five sets afterwards, gained nothing there.

Fifth round: the meaning of the instructions, `body_semantic` weight. Each agent gets a second vector,
the mean of its instructions' sentences and list items (coord.matching.embedder.instruction_segments),
and a sentence need adds the weighted cosine with it to each candidate's score: the body's words already
count (`body`), its meaning did not, and a paraphrased need rarely repeats the body's words ("customer
emails end up in the junk folder" against "inbox placement, bounce handling"). Paraphrased top-1 / top-3
by weight (wshobson | VoltAgent | VoltAgent-2 | 0xfurai | rshah515), scripts/eval-matching, the vector
made of a body's first 48 pieces of up to 60 words:

    0 (as before)   64.5 / 84.9   60.0 / 81.8   67.7 / 83.1   58.3 / 75.0   57.1 / 75.7
    0.2             64.5 / 86.0   63.6 / 81.8   67.7 / 83.1   61.7 / 78.3   61.4 / 75.7
    0.3             65.6 / 86.0   63.6 / 80.0   69.2 / 81.5   63.3 / 78.3   61.4 / 75.7
    0.4             66.7 / 86.0   63.6 / 80.0   69.2 / 81.5   65.0 / 78.3   60.0 / 78.6
0.2 is the weight that loses nothing on any set; past it top-1 keeps rising and top-3 falls on VoltAgent.
Fewer, shorter pieces cost less to embed and rank the same, at 0.2: the first 16 pieces of up to 32
words (what coord embeds, a third of the cost) 65.6 / 87.1 | 63.6 / 81.8 | 67.7 / 83.1 | 61.7 / 76.7 |
60.0 / 75.7, the same with 60 words; the first 24 pieces 64.5 / 86.0 | 63.6 / 81.8 | 67.7 / 83.1 |
61.7 / 78.3 | 60.0 / 75.7; the first 8 fewer (63.6 / 78.2 on VoltAgent, 57.1 / 75.7 on rshah515).
Against the fourth round: top-1 +1.1 to +3.6 on four sets, top-3 +1.7 to +2.2 on two, nothing lost.
Keyword needs do not change at any weight (98 | 100 | 86.7 | 95 | 90 top-1), so KEYWORD_WEIGHTS leaves
it out (and a request skips its product).
Other shapes of the same signal, measured with 48 pieces (of 3 words or more unless said), none better
(weight 0.1-0.3): the cosine of the best piece alone 65.6 / 86.0 | 61.8 / 81.8 | 69.2 / 83.1 | 60.0 /
75.0 | 60.0 / 75.7 (and every piece's vector in memory: ~0.6 GB at 10,000 agents); the mean of the best
three pieces 65.6 / 87.1 | 60.0 / 81.8 | 69.2 / 83.1 | 60.0 / 80.0 | 60.0 / 75.7 (the same memory); the
body's first 200 words embedded as one text 64.5 / 86.0 | 60.0 / 80.0 | 69.2 / 78.5 | 60.0 / 76.7 |
58.6 / 74.3; pieces of 3 words or more instead of 5 (at 0.3), or the first 16, 24 or 96 pieces of them:
each gains on one set what it loses on another.

Ties are broken by agent id, so the order is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal, NamedTuple

Method = Literal["weighted", "rrf"]


class Weights(NamedTuple):
    lexical: float
    semantic: float
    body: float = 0.0  # words of the candidates' instructions (coord.matching.bodyterms)
    body_semantic: float = 0.0  # cosine of the need with the instructions' vector (embedder.instruction_segments)


SENTENCE_WEIGHTS = Weights(lexical=0.05, semantic=0.95, body=0.2, body_semantic=0.2)
KEYWORD_WEIGHTS = Weights(lexical=0.5, semantic=0.5, body=0.1)
DEFAULT_WEIGHTS = SENTENCE_WEIGHTS
KEYWORD_MAX_TERMS = 3
RRF_K = 60

# Words that carry no expertise; only used to count a need's content words.
_STOPWORD_TEXT = """
a an the and or of to for in on at by with from as is are be been being it its this that these those
our we us you your i me my they them their he she his her do does did have has had not no can could
should would will shall may might must just so than then too very also into out over under again more
most some such only own same about up down off once here there when where why how all any both each
few other nor what which who whom whose get got make need needs want wants someone anyone somebody
nobody please keep keeps help
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"\w[\w+#.]*", re.UNICODE)


def content_terms(query: str) -> list[str]:
    """The query's words that can carry expertise (lowercased, stopwords removed)."""
    words = (w.lower().strip("_").rstrip(".") for w in _WORD.findall(query or ""))
    return [w for w in words if w and w not in STOPWORDS]


def is_keyword_need(query: str) -> bool:
    """1-3 content words ("Terraform modules"), as opposed to a sentence."""
    return 0 < len(content_terms(query)) <= KEYWORD_MAX_TERMS


def weights_for_query(query: str) -> Weights:
    """KEYWORD_WEIGHTS for a short keyword need, SENTENCE_WEIGHTS for a sentence (see module doc)."""
    return KEYWORD_WEIGHTS if is_keyword_need(query) else SENTENCE_WEIGHTS


def _best_per_id(items: Iterable[tuple[str, float]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for agent_id, score in items:
        s = float(score)
        if s != s:  # NaN
            continue
        if agent_id not in best or s > best[agent_id]:
            best[agent_id] = s
    return best


def _check_weights(weights: Weights | tuple[float, ...]) -> Weights:
    w = Weights(*(float(x) for x in weights))
    if min(w) < 0 or (w.lexical + w.semantic) <= 0:
        raise ValueError(f"weights must be non-negative and not both zero: {weights!r}")
    return w


def fuse(
    lexical: list[tuple[str, float]],
    semantic: list[tuple[str, float]],
    *,
    method: Method = "weighted",
    weights: Weights | tuple[float, ...] = DEFAULT_WEIGHTS,
    body: Iterable[tuple[str, float]] = (),
    body_semantic: Iterable[tuple[str, float]] = (),
) -> list[tuple[str, float]]:
    """One ranked list `(agent_id, fused score)` from a lexical and a semantic candidate list.

    Either list may be empty (no embedder, or no word matched): the other one's order is returned.
    An id repeated inside one list counts once, with its best score. `weights` is
    `(lexical, semantic[, body[, body_semantic]])`; use `weights_for_query(need)` for the measured
    defaults. `body`: BM25 of the need's words in candidates' instructions, scaled like the lexical list;
    `body_semantic`: cosines of the need with candidates' instruction vectors, used like `semantic`
    (both weighted only).
    """
    w = _check_weights(weights)
    lex = _best_per_id(lexical)
    sem = _best_per_id(semantic)
    fused: dict[str, float] = {}
    if method == "weighted":
        for weight, scores in ((w.lexical, lex), (w.body, _best_per_id(body))):
            top = max(scores.values(), default=0.0)
            for agent_id, s in scores.items():
                fused[agent_id] = fused.get(agent_id, 0.0) + weight * (max(s, 0.0) / top if top > 0 else 0.0)
        for weight, cosines in ((w.semantic, sem), (w.body_semantic, _best_per_id(body_semantic))):
            for agent_id, s in cosines.items():
                fused[agent_id] = fused.get(agent_id, 0.0) + weight * min(max(s, 0.0), 1.0)
    elif method == "rrf":
        for weight, scores in ((w.lexical, lex), (w.semantic, sem)):
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (agent_id, _) in enumerate(ranked, start=1):
                fused[agent_id] = fused.get(agent_id, 0.0) + weight / (RRF_K + rank)
    else:
        raise ValueError(f"unknown fusion method {method!r}; use 'weighted' or 'rrf'")
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
