#!/usr/bin/env python3
"""Evaluate expertise matching: top-1 / top-3 of lexical, semantic and hybrid ranking, side by side.

    scripts/eval-matching AGENT_DIR QUERIES.tsv [--failures] [--json] [--plain]

Runs coord's own code paths on a throw-away state directory: the agent files are synced into a fresh
SQLite coordination DB by coord.sync (every folder under AGENT_DIR that holds *.md files is an agent
folder, in path order, so the first file of a repeated name wins), the `embed` outbox jobs the sync
queued are run by the real job handler, and each need is ranked by coord.matching:
- lexical: `rank_agents(matching="lexical")` (tags + FTS5, stopwords dropped from the text query);
- semantic: `rank_semantic` (cosine of the need with each agent vector, nothing else);
- hybrid: `rank_agents(matching="auto")`, what collaboration requests and delegation fall-backs use;
- with --plain, also `plain`: the cosine of the need with each agent's description embedded whole (the
  usual baseline for a sentence-embedding model, outside coord's ranking).

QUERIES.tsv: `need<TAB>acceptable agent names (comma-separated)[<TAB>paraphrase|keyword]` per line
(default kind: paraphrase; `kw`, `paraphrased` and the like are read too); `#` starts a comment line, and
a first line `need<TAB>...` is a header. Names may also be separated by `;`, `|` or spaces, and a name
that is an agent's file name rather than its `name:` (`sql-pro.md`) counts as that agent.
A need counts for top-1 when an acceptable agent ranks first, for top-3 when one is among the first
three.

Exits 2 when the folder or the file is missing or a line of the file cannot be read (the line is named);
without the `semantic` extra only the lexical column is measured (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = ("paraphrase", "keyword", "all")


# The third column's spellings: anything else is refused, so a typo cannot quietly move a need to the other kind.
KIND_NAMES = {"paraphrase": "paraphrase", "paraphrased": "paraphrase", "para": "paraphrase", "p": "paraphrase",
              "natural": "paraphrase", "sentence": "paraphrase", "keyword": "keyword", "keywords": "keyword",
              "kw": "keyword", "k": "keyword", "keyword-style": "keyword", "": "paraphrase"}
_NAME_SPLIT = re.compile(r"[,;|\s]+")  # agent names hold none of these


class BadQueries(ValueError):
    """A line of the queries file cannot be read; the message names the file and line."""


def load_queries(path: Path) -> list[tuple[str, set[str], str]]:
    """(need, acceptable agent names, kind) per data line; BadQueries naming the line for a bad one."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadQueries(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if not out and parts[0].lower() in ("need", "query", "needs", "queries"):
            continue  # a header line
        names = {a.removesuffix(".md") for a in _NAME_SPLIT.split(parts[1]) if a} if len(parts) > 1 else set()
        if not parts[0] or not names:
            raise BadQueries(f"{path}:{n}: expected need<TAB>acceptable agent names[<TAB>kind], got {line[:60]!r}")
        kind = KIND_NAMES.get(parts[2].lower() if len(parts) > 2 else "")
        if kind is None:
            raise BadQueries(f"{path}:{n}: unknown kind {parts[2]!r}: use 'paraphrase' or 'keyword'")
        out.append((parts[0], names, kind))
    return out


def by_agent_name(queries: list[tuple[str, set[str], str]], known: set[str],
                  by_stem: dict[str, str]) -> list[tuple[str, set[str], str]]:
    """Acceptable names that are not agent names but name an agent's file (`sql-pro` for the agent `sql`
    in sql-pro.md) are read as that agent, and said once."""
    renamed = {n: by_stem[n] for _, ok, _ in queries for n in ok if n not in known and n in by_stem}
    if renamed:
        print(f"note: {len(renamed)} acceptable names are file names, read as their agents' names: "
              + ", ".join(f"{a} -> {b}" for a, b in sorted(renamed.items())[:5]), file=sys.stderr)
    return [(need, {renamed.get(n, n) for n in ok}, kind) for need, ok, kind in queries]


def plain_cosine(embedder, agents) -> Callable[[object, str], list[SimpleNamespace]]:
    """A ranker by the cosine of the need with each agent's description embedded whole, nothing else."""
    from coord.matching.embedder import cosine_scores, top_k

    ids = [a.id for a in agents]
    matrix = embedder.embed([a.description for a in agents])

    def rank(_session: object, need: str) -> list[SimpleNamespace]:
        scores = cosine_scores(matrix, embedder.embed([need])[0])
        return [SimpleNamespace(agent_id=agent_id) for agent_id, _ in top_k(scores, ids, 5)]

    return rank


def agent_folders(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*.md") if p.is_file()})


def score(ranked: list[list[str]], queries: list[tuple[str, set[str], str]]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for kind in KINDS:
        hits1 = hits3 = n = 0
        for names, (_, ok, k) in zip(ranked, queries, strict=True):
            if kind != "all" and k != kind:
                continue
            n += 1
            hits1 += bool(names) and names[0] in ok
            hits3 += any(x in ok for x in names[:3])
        out[kind] = (100.0 * hits1 / n if n else 0.0, 100.0 * hits3 / n if n else 0.0, n)
    return out


def print_table(rows: list[tuple[str, dict[str, tuple[float, float, int]]]]) -> None:
    kinds = [k for k in KINDS if rows[0][1][k][2]]
    print(f"{'ranker':10s}" + "".join(f"  {f'{k} (n={rows[0][1][k][2]})':>21s}" for k in kinds))
    print(f"{'':10s}" + "".join(f"  {'top-1':>10s} {'top-3':>10s}" for _ in kinds))
    for label, res in rows:
        print(f"{label:10s}" + "".join(f"  {res[k][0]:9.1f}% {res[k][1]:9.1f}%" for k in kinds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agent_dir", type=Path)
    ap.add_argument("queries", type=Path)
    ap.add_argument("--failures", action="store_true", help="list the needs hybrid misses in its top 3")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--plain", action="store_true",
                    help="add a 'plain' column: the cosine of the need with each agent's description alone, "
                         "the usual baseline (coord's own vectors also embed name and tags, sentence by sentence)")
    args = ap.parse_args(argv)
    if not args.agent_dir.is_dir():
        print(f"agent folder not found: {args.agent_dir}", file=sys.stderr)
        return 2
    if not args.queries.is_file():
        print(f"queries file not found: {args.queries}", file=sys.stderr)
        return 2
    try:
        queries = load_queries(args.queries)
    except BadQueries as exc:
        print(f"cannot read the needs: {exc}", file=sys.stderr)
        return 2

    from coord.logs import configure_logging

    configure_logging("warning", "console")
    from sqlalchemy import select

    from coord import sync
    from coord.db import open_database
    from coord.db.models import OutboxJob
    from coord.jobs import HANDLERS, JobContext
    from coord.matching.embedder import load_embedder
    from coord.matching.hybrid import rank_agents, rank_semantic
    from coord.matching.index import coverage
    from coord.outbox import run_job
    from coord.settings import load_settings
    from coord.states import JOB_EMBED

    with tempfile.TemporaryDirectory(prefix="coord-eval-") as tmp:
        folders = agent_folders(args.agent_dir.resolve())
        settings = load_settings(overrides={"state_dir": tmp, "dispatch": "inline", "log_level": "warning",
                                            "agent_dirs": [str(f) for f in folders]}, env={}).settings
        db = open_database(settings)
        t0 = time.perf_counter()
        report = sync.reconcile(settings, db)
        sync_s = time.perf_counter() - t0
        with db.reader() as s:
            from coord.registry import list_agents

            agents = list_agents(s)
        known = {a.id for a in agents}
        print(f"{len(known)} agents from {report.files} files in {len(folders)} folders "
              f"(sync {sync_s:.1f} s, {report.errors} files not synced); {len(queries)} needs")
        queries = by_agent_name(queries, known, {Path(a.source_path).stem: a.id for a in agents if a.source_path})
        unknown = sorted({n for _, ok, _ in queries for n in ok} - known)
        if unknown:
            print(f"warning: {len(unknown)} acceptable names are not agents here: {', '.join(unknown[:5])}",
                  file=sys.stderr)

        embedder = load_embedder()
        if embedder is not None:
            c0, t0 = time.process_time(), time.perf_counter()
            with db.reader() as s:
                jobs = list(s.scalars(select(OutboxJob.id).where(OutboxJob.job == JOB_EMBED,
                                                                 OutboxJob.status == "pending")))
            while jobs:  # the worker's path: the real handler through the outbox, follow-up jobs included
                job_id = jobs.pop(0)
                outcome, follow_ups = run_job(db, job_id, HANDLERS, JobContext(settings, db))
                if outcome.status != "done":
                    raise SystemExit(f"embed job {job_id} ended {outcome.status}: {outcome.error}")
                jobs += follow_ups
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            with db.reader() as s:
                embedded, active = coverage(s, embedder.model_id)
            print(f"embedded {embedded}/{active} agents ({embedder.model_id}) in {wall:.1f} s wall, {cpu:.1f} s CPU")

        rankers = {"lexical": lambda s, q: rank_agents(s, db.backend, q, limit=5, matching="lexical")}
        if embedder is not None and args.plain:
            rankers["plain"] = plain_cosine(embedder, agents)
        if embedder is not None:
            rankers["semantic"] = lambda s, q: rank_semantic(s, q, limit=5, matching="auto")
            rankers["hybrid"] = lambda s, q: rank_agents(s, db.backend, q, limit=5, matching="auto")
        else:
            print("semantic and hybrid skipped: the 'semantic' extra is not installed (pip install 'coord[semantic]')")
        results: dict[str, list[list[str]]] = {}
        with db.reader() as s:
            for label, rank in rankers.items():
                results[label] = [[c.agent_id for c in rank(s, need)] for need, _, _ in queries]
        db.dispose()

    rows = [(label, score(ranked, queries)) for label, ranked in results.items()]
    if args.json:
        print(json.dumps({label: {k: {"top1": r[0], "top3": r[1], "n": r[2]} for k, r in res.items()}
                          for label, res in rows}, indent=2))
    else:
        print()
        print_table(rows)
    if args.failures and "hybrid" in results:
        print("\nneeds whose acceptable agents are not in the hybrid top 3:")
        for names, (need, ok, kind) in zip(results["hybrid"], queries, strict=True):
            if not any(x in ok for x in names[:3]):
                print(f"  [{kind}] {need}\n      want {sorted(ok)[:3]}{'...' if len(ok) > 3 else ''}\n"
                      f"      got  {names[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
