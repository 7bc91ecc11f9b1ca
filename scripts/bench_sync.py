"""Agent-folder sync: initial reconcile of N agent files, re-reconcile, and write-to-registry latency p50/p99.

Goals (issue 4): initial reconcile of 5,000 files under 5 s; p99 latency from a file write to its registry
row under 1 s, debounce included. Files are generated like public subagent collections (long one-line
descriptions, some with <example> blocks, `tools` as a string, a list or absent, extra fields, long bodies);
no data folder is needed.
Usage: scripts/bench sync [--files N] [--samples N] [--database-url URL] [--workers N]
   or: python scripts/bench_sync.py ...
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from coord.db import open_database
from coord.db.models import Agent
from coord.logs import configure_logging
from coord.settings import load_settings

DOMAINS = ["backend", "frontend", "database", "kubernetes", "security", "data", "ml", "mobile", "cloud", "devops",
           "payments", "search", "observability", "testing", "docs", "api", "graphql", "terraform", "rust", "go"]
ROLES = ["architect", "reviewer", "pro", "engineer", "auditor", "optimizer", "troubleshooter", "specialist",
         "developer", "analyst", "migrator", "designer"]
TECH = ["PostgreSQL", "MySQL", "Redis", "Kafka", "Kubernetes", "Helm", "Terraform", "AWS", "GCP", "Azure", "React",
        "Next.js", "Vue", "Django", "FastAPI", "Flask", "Node.js", "TypeScript", "Rust", "Go", "gRPC", "GraphQL",
        "OpenTelemetry", "Prometheus", "Grafana", "Airflow", "Spark", "PyTorch", "CI/CD", "OAuth2", "Stripe",
        "Elasticsearch", "SQLite", "Docker", "Istio", "Celery", "pytest", "Playwright", "C++", "C#"]
VERBS = ["Designs", "Reviews", "Optimizes", "Builds", "Audits", "Migrates", "Debugs", "Scales", "Hardens",
         "Documents", "Automates", "Profiles"]
NOUNS = ["schemas", "APIs", "pipelines", "deployments", "queries", "services", "dashboards", "test suites",
         "infrastructure", "access controls", "event streams", "caching layers", "data models", "releases"]
TOOLS = ["Read", "Write", "Edit", "Bash", "Grep", "Glob", "WebFetch", "WebSearch", "Task"]


def _sentence(rng: random.Random) -> str:
    techs = ", ".join(rng.sample(TECH, 3))
    return f"{rng.choice(VERBS)} {rng.choice(NOUNS)} with {techs} and {rng.choice(NOUNS)} for {rng.choice(NOUNS)}."


def agent_text(i: int, rng: random.Random, *, version: int = 0) -> tuple[str, str]:
    """(name, file text) of a realistic generated agent."""
    name = f"{rng.choice(DOMAINS)}-{rng.choice(ROLES)}-{i}"
    description = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
    description += " Use PROACTIVELY for " + rng.choice(NOUNS) + " work."
    if rng.random() < 0.25:  # the collections' escaped example blocks
        description += ("\\n\\n<example>\\nContext: the user needs help with " + rng.choice(NOUNS) +
                        "\\nuser: \"Can you look at this?\"\\nassistant: \"I'll use the " + name +
                        " agent.\"\\n</example>")
    if version:
        description += f" Revision {version}."
    quoted = '"' + description.replace('"', '\\"') + '"'  # example blocks need YAML's double quotes
    lines = ["---", f"name: {name}", f"description: {quoted if '<example>' in description else description}"]
    roll = rng.random()
    if roll < 0.55:
        lines.append("tools: " + ", ".join(rng.sample(TOOLS, rng.randint(2, 5))))
    elif roll < 0.7:
        lines.append("tools:")
        lines.extend(f"  - {t}" for t in rng.sample(TOOLS, 3))
    lines.append(f"model: {rng.choice(['sonnet', 'opus', 'haiku', 'inherit'])}")
    if rng.random() < 0.3:
        lines.append(f"color: {rng.choice(['blue', 'green', 'red', 'purple'])}")
    if rng.random() < 0.2:
        lines.append(f"category: {rng.choice(DOMAINS)}  # added by another tool")
    if rng.random() < 0.1:
        lines.append(f"expertise: [{', '.join(rng.sample(TECH, 3)).lower().replace('/', '-')}]")
    lines.append("---")
    body = [f"You are a {name.rsplit('-', 1)[0].replace('-', ' ')} with deep experience.", ""]
    for section in ("Purpose", "Capabilities", "Approach", "Output"):
        body.append(f"## {section}")
        body.extend(f"- {_sentence(rng)}" for _ in range(rng.randint(8, 20)))
        body.append("")
    return name, "\n".join(lines) + "\n\n" + "\n".join(body)


def generate(folder: Path, n: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    past = time.time() - 3600  # files that existed before the daemon started
    for i in range(n):
        name, text = agent_text(i, rng)
        path = folder / f"{name}.md"
        path.write_text(text, encoding="utf-8")
        os.utime(path, (past, past))
        names.append(name)
    return names


def _count(db) -> int:
    with db.reader() as s:
        return int(s.scalar(select(func.count()).select_from(Agent).where(Agent.status == "active")) or 0)


def bench_reconcile(settings, db, n: int, workers: int | None) -> dict[str, float]:
    from coord import sync

    out: dict[str, float] = {}
    t, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    report = sync.reconcile(settings, db, workers=workers)
    out["initial"] = time.perf_counter() - t
    out["cpu"] = time.process_time() - cpu
    out["children_cpu"] = _children_cpu() - children
    assert _count(db) == n and report.errors == 0, (report.to_dict(), _count(db))
    t = time.perf_counter()
    report = sync.reconcile(settings, db, workers=workers)
    out["unchanged"] = time.perf_counter() - t
    assert report.read == 0, report.to_dict()
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_latency(settings, db, folder: Path, samples: int, interval: float) -> list[float]:
    """Seconds from a file's write (new or modified) to its registry row carrying the new content hash."""
    from coord.fsutil import sha256_bytes
    from worker.watcher import FolderWatcher

    watcher = FolderWatcher(settings, db)
    watcher.start()
    watcher.ready.wait(120)
    rng = random.Random(99)
    existing = sorted(p for p in folder.glob("*.md"))
    outstanding: dict[str, tuple[str, float]] = {}  # name -> (hash, written at)
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() or outstanding:
            with lock:
                want = dict(outstanding)
            if want:
                with db.reader() as s:
                    rows = s.execute(select(Agent.id, Agent.content_hash).where(Agent.id.in_(list(want))))
                    seen = time.perf_counter()
                    for name, content_hash in rows:
                        if content_hash == want[name][0]:
                            latencies.append(seen - want[name][1])
                            with lock:
                                outstanding.pop(name, None)
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for i in range(samples):
        if i % 2 and existing:  # modify an existing agent
            path = existing[rng.randrange(len(existing))]
            text = re.sub(r"\n(revision: \d+\n)?---\n", f"\nrevision: {i}\n---\n", path.read_text(encoding="utf-8"),
                          count=1)
            name = path.stem
        else:
            name, text = agent_text(100_000 + i, rng)
            path = folder / f"{name}.md"
        data = text.encode("utf-8")
        path.write_bytes(data)
        with lock:
            outstanding[name] = (sha256_bytes(data), time.perf_counter())
        time.sleep(interval)
    deadline = time.time() + 30
    while outstanding and time.time() < deadline:
        time.sleep(0.05)
    done.set()
    poller.join(5)
    watcher.stop()
    if outstanding:
        print(f"  {len(outstanding)} writes never reached the registry", file=sys.stderr)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200, help="writes timed for the latency figure")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between timed writes")
    parser.add_argument("--database-url", help="e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test "
                        "(a scratch database is created beside it); default: a SQLite file")
    parser.add_argument("--workers", type=int, help="parser processes (default: CPUs, at most 4)")
    args = parser.parse_args()
    configure_logging("warning")
    from ruamel.yaml.main import CParser

    print(f"YAML: {'libyaml (ruamel.yaml.clib)' if CParser else 'pure Python (install ruamel.yaml.clib: ~4x faster)'}")
    with tempfile.TemporaryDirectory(prefix="coord-bench-sync-") as tmp:
        root = Path(tmp)
        folder = root / "project" / ".claude" / "agents"
        scratch = None
        overrides = {"state_dir": str(root / "state"), "agent_dirs": [str(folder)], "log_level": "warning"}
        if args.database_url:
            scratch = _scratch_pg(args.database_url)
            overrides["database_url"] = scratch[1]
        settings = load_settings(overrides=overrides, env={}).settings
        db = open_database(settings)
        try:
            t = time.perf_counter()
            generate(folder, args.files)
            size = sum(p.stat().st_size for p in folder.glob("*.md"))
            print(f"engine {db.dialect}; {args.files} files, {size / 1e6:.1f} MB, generated in "
                  f"{time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            r = bench_reconcile(settings, db, args.files, args.workers)
            print(f"initial reconcile: {r['initial']:.2f} s wall ({args.files / r['initial']:.0f} files/s; goal < 5 s "
                  f"for 5000); CPU {r['cpu']:.2f} s here + {r['children_cpu']:.2f} s in parser processes")
            print(f"reconcile, nothing changed: {r['unchanged'] * 1000:.0f} ms")
            lat = bench_latency(settings, db, folder, args.samples, args.interval)
            if lat:
                q = statistics.quantiles(lat, n=100, method="inclusive")
                print(f"write -> registry latency over {len(lat)} writes (debounce "
                      f"{settings.watch_debounce_seconds:g} s): p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms,"
                      f" max {max(lat) * 1000:.0f} ms (goal p99 < 1000 ms)")
        finally:
            db.dispose()
            if scratch:
                scratch[0]()
    return 0


def _scratch_pg(url: str):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"coord_bench_sync_{os.getpid()}"
    # pool_pre_ping: the admin connection idles through the whole benchmark and may be closed meanwhile.
    admin = create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return drop, make_url(url).set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    raise SystemExit(main())
