#!/usr/bin/env python3
"""Prototype evaluation of expertise matching: lexical (FTS5 BM25), semantic (cosine), hybrid (fusion).

    python scripts/eval_matching_proto.py AGENT_DIR QUERIES.tsv [--failures] [--compare] [--perf]

AGENT_DIR: a folder of Claude Code agent files (markdown with YAML frontmatter `name`, `description`),
searched recursively. QUERIES.tsv: `need<TAB>acceptable names (comma-separated)[<TAB>kind]`, kind being
`paraphrase` or `keyword` (default paraphrase); lines starting with `#` are comments.

Prints top-1 / top-3 (an acceptable agent ranked first / among the first three) for the three rankers
side by side, per kind of need. Standalone: an in-memory SQLite FTS5 index stands in for the database
(same tokenizer and column weights as coord.db), coord.matching.embedder and coord.matching.fusion do
the rest. `--perf` adds latency / throughput / memory figures at 150, 1,000 and 10,000 agents.
Exits 2 with a message when the folder or the file is missing; semantic and hybrid columns are
skipped (with the reason) when the `semantic` extra is not installed.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import numpy as np
except ImportError:  # without the 'semantic' extra only the lexical column is measured
    np = None  # type: ignore[assignment]

from coord.matching import embedder as emb
from coord.matching.fusion import content_terms, fuse, weights_for_query

POOL = 50  # candidates taken from each ranker before fusion
_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)
_WORD = re.compile(r"\w+", re.UNICODE)


# ----------------------------------------------------------------------------- input


def _yaml_load(text: str) -> object:
    try:
        from ruamel.yaml import YAML

        return YAML(typ="safe", pure=True).load(text)
    except ImportError:
        import yaml  # PyYAML

        return yaml.safe_load(text)


def load_agents(folder: Path) -> list[tuple[str, str, list[str]]]:
    """(name, description, derived tags) per agent file; first file wins for a repeated name."""
    agents: dict[str, tuple[str, str, list[str]]] = {}
    for path in sorted(folder.rglob("*.md")):
        m = _FRONTMATTER.match(path.read_text(encoding="utf-8", errors="replace"))
        if not m:
            continue
        try:
            fm = _yaml_load(m.group(1))
        except Exception as e:
            print(f"skipping {path.name}: frontmatter does not parse ({type(e).__name__})", file=sys.stderr)
            continue
        if not isinstance(fm, dict) or not fm.get("name"):
            continue
        name = str(fm["name"]).strip()
        desc = " ".join(str(fm.get("description") or "").split())
        tags = [t for t in name.split("-") if t]  # derived tags: the name split on hyphens
        agents.setdefault(name, (name, desc, tags))
    return list(agents.values())


def load_queries(path: Path) -> list[tuple[str, set[str], str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise SystemExit(f"{path}: line without a tab: {line[:60]!r}")
        kind = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "paraphrase"
        out.append((parts[0].strip(), {a.strip() for a in parts[1].split(",") if a.strip()}, kind))
    return out


# ----------------------------------------------------------------------------- rankers


class Lexical:
    """FTS5 BM25 over name (hyphens as spaces), description and tags; the need is an OR of quoted words."""

    def __init__(self, agents: list[tuple[str, str, list[str]]]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute(
            "CREATE VIRTUAL TABLE a USING fts5(agent_id UNINDEXED, name, description, tags,"
            " tokenize='porter unicode61')"
        )
        self.db.executemany(
            "INSERT INTO a(agent_id, name, description, tags) VALUES (?, ?, ?, ?)",
            [(n, n.replace("-", " "), d, " ".join(t)) for n, d, t in agents],
        )

    def rank(self, need: str, *, drop_stopwords: bool, limit: int = POOL) -> list[tuple[str, float]]:
        if drop_stopwords:
            words = [w for w in content_terms(need) for w in _WORD.findall(w)]
        else:
            words = [w.lower() for w in _WORD.findall(need)]
        words = list(dict.fromkeys(words))[:32]
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self.db.execute(
            "SELECT agent_id, -bm25(a, 0.0, 4.0, 1.0, 3.0) AS s FROM a WHERE a MATCH ? ORDER BY s DESC LIMIT ?",
            (match, limit),
        ).fetchall()
        return [(r[0], float(r[1])) for r in rows if r[1] > 0]


class Semantic:
    def __init__(self, embedder: emb.Embedder, agents: list[tuple[str, str, list[str]]], *, whole: bool = False):
        self.embedder = embedder
        self.names = [a[0] for a in agents]
        if whole:  # the plain alternative: the description embedded as one text
            self.matrix = embedder.embed([d for _, d, _ in agents])
        else:
            self.matrix = emb.embed_agents(embedder, agents)

    def scores(self, need: str) -> np.ndarray:
        return emb.cosine_scores(self.matrix, self.embedder.embed([need])[0])

    def rank(self, scores: np.ndarray, limit: int = POOL) -> list[tuple[str, float]]:
        return emb.top_k(scores, self.names, limit)


def hybrid(lex: list[tuple[str, float]], sem: Semantic, scores: np.ndarray, need: str, method: str = "weighted"):
    pool = sem.rank(scores)
    have = {n for n, _ in pool}
    index = {n: i for i, n in enumerate(sem.names)}
    pool += [(n, float(scores[index[n]])) for n, _ in lex if n not in have and n in index]
    return fuse(lex, pool, method=method, weights=weights_for_query(need))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- scoring


def topk(results: list[list[tuple[str, float]]], queries) -> dict[str, tuple[float, float, int]]:
    out = {}
    for kind in ("paraphrase", "keyword", "all"):
        hits1 = hits3 = n = 0
        for (_, ok, k), ranked in zip(queries, results, strict=True):
            if kind != "all" and k != kind:
                continue
            n += 1
            names = [r[0] for r in ranked[:3]]
            hits1 += bool(names) and names[0] in ok
            hits3 += any(x in ok for x in names)
        out[kind] = (100.0 * hits1 / n if n else 0.0, 100.0 * hits3 / n if n else 0.0, n)
    return out


def print_table(rows: list[tuple[str, dict]]) -> None:
    kinds = [k for k in ("paraphrase", "keyword", "all") if rows and rows[0][1][k][2]]
    head = f"{'ranker':38s}" + "".join(f"  {k + f' (n={rows[0][1][k][2]})':>22s}" for k in kinds)
    print(head)
    print(f"{'':38s}" + "".join(f"  {'top-1':>10s} {'top-3':>10s}" for _ in kinds))
    for label, res in rows:
        print(f"{label:38s}" + "".join(f"  {res[k][0]:9.1f}% {res[k][1]:9.1f}%" for k in kinds))


# ----------------------------------------------------------------------------- perf


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def perf(agents, queries, embedder: emb.Embedder) -> None:
    print("\n== performance (one process, this machine)")
    texts = [q for q, _, _ in queries]
    # embedding throughput: 1,000 agents (the collection cycled, names made unique)
    many = [(f"{n}-{i}", d, t) for i in range(1000 // len(agents) + 1) for n, d, t in agents][:1000]
    c0, t0 = time.process_time(), time.perf_counter()
    vecs = emb.embed_agents(embedder, many)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    segs = sum(len(emb.agent_segments(n, d, t)) for n, d, t in many)
    print(
        f"embed 1,000 agents ({segs} segments): {dt:.1f} s wall, {cpu:.1f} s CPU"
        f" ({1000 / dt:.0f} agents/s); RSS {_rss_mb():.0f} MB"
    )
    lat_q = []
    for q in texts:
        t0 = time.perf_counter()
        embedder.embed([q])
        lat_q.append((time.perf_counter() - t0) * 1000)
    print(f"embed one need: p50 {_pct(lat_q, 50):.1f} ms, p99 {_pct(lat_q, 99):.1f} ms")
    rng = np.random.default_rng(0)
    for n in (150, 1000, 10000):
        base = vecs[rng.integers(0, len(vecs), n)] + rng.normal(0, 0.02, (n, vecs.shape[1])).astype(np.float32)
        blobs = [emb.to_bytes(v / np.linalg.norm(v)) for v in base]
        t0 = time.perf_counter()
        matrix = emb.stack_from_bytes(blobs, embedder.dim)
        load_ms = (time.perf_counter() - t0) * 1000
        names = [f"agent-{i}" for i in range(n)]
        corpus = [(names[i], agents[i % len(agents)][1], agents[i % len(agents)][2]) for i in range(n)]
        lex = Lexical(corpus)
        total, cpu, parts = [], [], {"embed": [], "matmul+top50": [], "fts5": [], "fuse": []}
        for q in texts * 2:
            c0 = time.process_time()
            t0 = time.perf_counter()
            qv = embedder.embed([q])[0]
            t1 = time.perf_counter()
            sem = emb.top_k(emb.cosine_scores(matrix, qv), names, POOL)
            t2 = time.perf_counter()
            lx = lex.rank(q, drop_stopwords=True)
            t3 = time.perf_counter()
            fuse(lx, sem, weights=weights_for_query(q))
            t4 = time.perf_counter()
            for k, a, b in (("embed", t0, t1), ("matmul+top50", t1, t2), ("fts5", t2, t3), ("fuse", t3, t4)):
                parts[k].append((b - a) * 1000)
            total.append((t4 - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        detail = ", ".join(f"{k} p50 {statistics.median(v):.2f}" for k, v in parts.items())
        print(
            f"match at {n:>6,} agents: p50 {_pct(total, 50):6.2f} ms  p99 {_pct(total, 99):6.2f} ms"
            f" (CPU p50 {_pct(cpu, 50):.2f} p99 {_pct(cpu, 99):.2f})"
            f"  [{detail}; vectors from bytes {load_ms:.1f} ms, {matrix.nbytes / 1e6:.1f} MB]"
        )
    print(f"RSS with the model loaded and 10,000 vectors: {_rss_mb():.0f} MB")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agent_dir", type=Path)
    ap.add_argument("queries", type=Path)
    ap.add_argument("--failures", action="store_true", help="list the needs hybrid misses in its top 3")
    ap.add_argument("--compare", action="store_true", help="also show the alternatives that were measured")
    ap.add_argument("--perf", action="store_true", help="latency, throughput and memory figures")
    args = ap.parse_args(argv)
    if not args.agent_dir.is_dir():
        print(f"agent folder not found: {args.agent_dir} (skipping the evaluation)", file=sys.stderr)
        return 2
    if not args.queries.is_file():
        print(f"queries file not found: {args.queries}", file=sys.stderr)
        return 2
    agents = load_agents(args.agent_dir)
    queries = load_queries(args.queries)
    known = {a[0] for a in agents}
    unknown = sorted({n for _, ok, _ in queries for n in ok} - known)
    if unknown:
        print(f"warning: {len(unknown)} acceptable names are not in the folder: {unknown[:5]}", file=sys.stderr)
    print(f"{len(agents)} agents, {len(queries)} needs")

    lexical = Lexical(agents)
    lex_all = [lexical.rank(q, drop_stopwords=False) for q, _, _ in queries]
    lex = [lexical.rank(q, drop_stopwords=True) for q, _, _ in queries]
    rows = [
        ("lexical FTS5 BM25 (all words)", topk(lex_all, queries)),
        ("lexical FTS5 BM25 (stopwords dropped)", topk(lex, queries)),
    ]

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    embedder = emb.load_embedder()
    load_s = time.perf_counter() - t0
    if embedder is None:
        print_table(rows)
        print("semantic and hybrid skipped: no embedder (install the 'semantic' extra)")
        return 0
    print(f"embedder {embedder.model_id}: loaded in {load_s:.2f} s, RSS {rss0:.0f} -> {_rss_mb():.0f} MB")
    t0 = time.perf_counter()
    sem = Semantic(embedder, agents)
    print(f"embedded {len(agents)} agents in {time.perf_counter() - t0:.1f} s")
    scores = [sem.scores(q) for q, _, _ in queries]
    sem_ranked = [sem.rank(s) for s in scores]
    hyb = [hybrid(lx, sem, s, q) for lx, s, (q, _, _) in zip(lex, scores, queries, strict=True)]
    rows += [("semantic cosine", topk(sem_ranked, queries)), ("hybrid (fusion.py defaults)", topk(hyb, queries))]
    if args.compare:
        hyb_all = [hybrid(lx, sem, s, q) for lx, s, (q, _, _) in zip(lex_all, scores, queries, strict=True)]
        rrf = [hybrid(lx, sem, s, q, "rrf") for lx, s, (q, _, _) in zip(lex, scores, queries, strict=True)]
        whole = Semantic(embedder, agents, whole=True)
        wscores = [whole.scores(q) for q, _, _ in queries]
        hyb_whole = [hybrid(lx, whole, s, q) for lx, s, (q, _, _) in zip(lex, wscores, queries, strict=True)]
        rows += [
            ("hybrid, lexical with all words", topk(hyb_all, queries)),
            ("hybrid, rrf", topk(rrf, queries)),
            ("semantic, description embedded whole", topk([whole.rank(s) for s in wscores], queries)),
            ("hybrid, description embedded whole", topk(hyb_whole, queries)),
        ]
    print()
    print_table(rows)
    if args.failures:
        print("\nneeds whose acceptable agents are not in the hybrid top 3:")
        for (q, ok, kind), ranked in zip(queries, hyb, strict=True):
            top = [r[0] for r in ranked[:3]]
            if not any(x in ok for x in top):
                print(f"  [{kind}] {q}\n      want {sorted(ok)[:3]}{'...' if len(ok) > 3 else ''}\n      got  {top}")
    if args.perf:
        perf(agents, queries, embedder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
