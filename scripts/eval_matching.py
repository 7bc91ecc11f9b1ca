#!/usr/bin/env python3
"""Evaluate expertise matching: top-1 / top-3 of lexical, semantic and hybrid ranking, side by side.

    scripts/eval-matching AGENT_DIR QUERIES.tsv [--failures] [--json]

Runs coord's own code paths on a throw-away state directory: the agent files are synced into a fresh
SQLite coordination DB by coord.sync (every folder under AGENT_DIR that holds *.md files is an agent
folder, in path order, so the first file of a repeated name wins), the `embed` outbox jobs the sync
queued are run by the real job handler, and each need is ranked by coord.matching:
- lexical: `rank_agents(matching="lexical")` (tags + FTS5, stopwords dropped from the text query);
- semantic: `rank_semantic` (cosine of the need with each agent vector, nothing else);
- hybrid: `rank_agents(matching="auto")`, what collaboration requests and delegation fall-backs use.

QUERIES.tsv: `need<TAB>acceptable agent names (comma-separated)[<TAB>paraphrase|keyword]` per line
(default kind: paraphrase); `#` starts a comment line, and a first line `need<TAB>...` is a header.
A need counts for top-1 when an acceptable agent ranks first, for top-3 when one is among the first
three.

Exits 2 when the folder or the file is missing; without the `semantic` extra only the lexical column
is measured (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = ("paraphrase", "keyword", "all")


def load_queries(path: Path) -> list[tuple[str, set[str], str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise SystemExit(f"{path}:{n}: expected need<TAB>agent names[<TAB>kind], got {line[:60]!r}")
        if n == 1 and parts[0].strip().lower() in ("need", "query", "needs", "queries"):
            continue  # a header line
        kind = "keyword" if len(parts) > 2 and parts[2].strip().lower().startswith("key") else "paraphrase"
        out.append((parts[0].strip(), {a.strip() for a in parts[1].split(",") if a.strip()}, kind))
    return out


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
    args = ap.parse_args(argv)
    if not args.agent_dir.is_dir():
        print(f"agent folder not found: {args.agent_dir}", file=sys.stderr)
        return 2
    if not args.queries.is_file():
        print(f"queries file not found: {args.queries}", file=sys.stderr)
        return 2
    queries = load_queries(args.queries)

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

            known = {a.id for a in list_agents(s)}
        print(f"{len(known)} agents from {report.files} files in {len(folders)} folders "
              f"(sync {sync_s:.1f} s, {report.errors} files not synced); {len(queries)} needs")
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
