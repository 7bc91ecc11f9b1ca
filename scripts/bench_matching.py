"""Expertise matching: request latency at 150 / 1,000 / 10,000 agents, embedding cost, memory, extra size.

What is measured, all through coord's own code:
1. Sync + embed 1,000 agents: agent files (the public collection cycled under unique names) synced by
   coord.sync (the registry hook queues one `embed` job), then that job run by the real handler.
   Wall and CPU time of each step; the sync never waits for the model.
2. Match latency: `Coordinator.find_experts(need)` (hybrid: lexical + query embedding + cached matrix +
   fusion) for every need of scripts/eval-queries.tsv, twice, on SQLite registries of N agents. The
   1,000 real vectors are reused for the larger registries (agent i gets the vector of agent i mod 1,000),
   so 10,000 agents cost seconds to set up instead of minutes of embedding. Wall and CPU per request;
   the first request (which loads the matrix into the cache) is reported apart.
3. Memory: the resident size of `coord worker` before and after it loads the model (it embeds one new
   agent), and of a client process holding the model and the 10,000-vector matrix.
4. Installed size of the `semantic` extra: the packages it pulls in beyond coord's own dependencies.

Usage: scripts/bench matching [--collection DIR] [--sizes 150,1000,10000] [--embed 1000] [--rounds 2]
                              [--skip-worker]
This machine is shared: CPU time is the figure to compare between runs, wall time shows the load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_COLLECTION = ROOT.parent / "shared" / "data" / "agent-collections" / "wshobson-agents"
QUERIES = ROOT / "scripts" / "eval-queries.tsv"
_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---", re.S)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settings_for(state: Path, **extra):
    from coord.settings import load_settings

    values = {"state_dir": str(state), "dispatch": "inline", "log_level": "warning", **extra}
    return load_settings(overrides=values, env={}).settings


# --- 1. sync + embed ----------------------------------------------------------------------------------------
def collection_files(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.rglob("*.md")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if _FRONTMATTER.match(text) and re.search(r"^name:", text, re.M):
            texts.append(text)
    return texts


def write_agents(folder: Path, templates: list[str], n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = templates[i % len(templates)]
        name = re.search(r"^name:\s*(\S+)", text, re.M).group(1).strip("'\"")
        unique = f"{name}-{i}"[:60].rstrip("-")
        (folder / f"{unique}.md").write_text(re.sub(r"^name:.*$", f"name: {unique}", text, count=1, flags=re.M),
                                             encoding="utf-8")


def bench_embed(state: Path, templates: list[str], n: int) -> tuple[dict, object]:
    from sqlalchemy import func, select

    from coord import sync
    from coord.client import Coordinator
    from coord.db.models import AgentEmbedding, OutboxJob
    from coord.jobs import HANDLERS, JobContext
    from coord.outbox import run_job
    from coord.states import JOB_EMBED

    folder = state / "agents"
    write_agents(folder, templates, n)
    settings = settings_for(state, agent_dirs=[str(folder)])
    c = Coordinator(settings)
    out: dict = {}
    t, cpu = time.perf_counter(), time.process_time()
    report = sync.reconcile(settings, c.db, workers=1)
    out["sync_wall_s"], out["sync_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu
    out["agents"] = sum(v for k, v in report.events.items() if k == "registered")
    with c.db.reader() as s:
        jobs = list(s.scalars(select(OutboxJob.id).where(OutboxJob.job == JOB_EMBED, OutboxJob.status == "pending")))
    out["embed_jobs_queued"] = len(jobs)
    t, cpu = time.perf_counter(), time.process_time()
    out["embed_jobs_run"] = 0
    while jobs:  # a job stops at its time budget and hands the rest to a follow-up, as in the worker
        outcome, follow_ups = run_job(c.db, jobs.pop(0), HANDLERS, JobContext(settings, c.db))
        assert outcome.status == "done", outcome
        out["embed_jobs_run"] += 1
        jobs += follow_ups
    out["embed_wall_s"], out["embed_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu
    with c.db.reader() as s:
        out["embedded"] = s.scalar(select(func.count()).select_from(AgentEmbedding))
    return out, c


# --- 2. latency -------------------------------------------------------------------------------------------
def build_registry(state: Path, base, n: int):
    """A registry of n agents whose instructions, vectors and word bags are copied from the embedded `base`
    registry."""
    import numpy as np
    from sqlalchemy import select

    from coord.client import Coordinator
    from coord.clock import utcnow
    from coord.db.models import Agent, AgentEmbedding, AgentExpertise, OutboxJob
    from coord.matching import embedder as emb
    from coord.matching import index
    from coord.registry import AgentSpec, Upsert, upsert_agents

    with base.db.reader() as s:
        agents = s.execute(select(Agent.id, Agent.description, Agent.instructions).where(Agent.status == "active")
                           .order_by(Agent.id)).all()
        vecs = {r[0]: (r[1], r[2], r[3]) for r in s.execute(
            select(AgentEmbedding.agent_id, AgentEmbedding.vector, AgentEmbedding.terms, AgentEmbedding.body_vector))}
        model_id = s.scalar(select(AgentEmbedding.model_id).limit(1))
    c = Coordinator(settings_for(state))
    rng = np.random.default_rng(n)
    for start in range(0, n, 500):
        batch = [(f"a{i:05d}-{agents[i % len(agents)][0]}"[:60].rstrip("-"), *agents[i % len(agents)][1:])
                 for i in range(start, min(n, start + 500))]
        with c.db.session() as s:
            upsert_agents(s, c.db.backend, [Upsert(AgentSpec(name, desc, instructions=body))
                                            for name, desc, body in batch], now=utcnow())
    with c.db.session() as s:
        s.execute(OutboxJob.__table__.delete())  # the vectors come from the base registry instead
        rows = []
        for i, (agent_id,) in enumerate(s.execute(select(Agent.id).order_by(Agent.id))):
            base_id, desc, body = agents[i % len(agents)]
            v = emb.from_bytes(vecs[base_id][0], emb.DIM) + rng.normal(0, 0.01, emb.DIM).astype(np.float32)
            tags = list(s.scalars(select(AgentExpertise.tag).where(AgentExpertise.agent_id == agent_id)))
            rows.append({"agent_id": agent_id, "model_id": model_id, "dim": emb.DIM, "updated_at": utcnow(),
                         "text_hash": index.text_hash(agent_id, desc, tags, body),
                         "vector": emb.to_bytes(v / np.linalg.norm(v)), "terms": vecs[base_id][1],
                         "body_vector": vecs[base_id][2]})
        s.execute(AgentEmbedding.__table__.insert(), rows)
    return c


def bench_latency(c, needs: list[str], rounds: int) -> dict:
    from coord.matching import index
    from coord.matching.embedder import load_embedder

    embedder = load_embedder()
    index.VECTORS.clear()
    t = time.perf_counter()
    c.find_experts(needs[0])
    first_ms = (time.perf_counter() - t) * 1000
    wall, cpu, embed, embed_cpu = [], [], [], []
    for _ in range(rounds):
        for need in needs:
            t, c0 = time.perf_counter(), time.thread_time()
            found = c.find_experts(need)
            wall.append((time.perf_counter() - t) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            assert found is not None
            t, c0 = time.perf_counter(), time.thread_time()
            embedder.embed([need])
            embed.append((time.perf_counter() - t) * 1000)
            embed_cpu.append((time.thread_time() - c0) * 1000)
    return {"p50_ms": pct(wall, 50), "p99_ms": pct(wall, 99), "cpu_p50_ms": pct(cpu, 50),
            "cpu_p99_ms": pct(cpu, 99), "embed_p50_ms": pct(embed, 50), "embed_p99_ms": pct(embed, 99),
            "embed_cpu_p50_ms": pct(embed_cpu, 50), "embed_cpu_p99_ms": pct(embed_cpu, 99),
            "first_request_ms": first_ms, "requests": len(wall), "mean_ms": statistics.fmean(wall)}


# --- 3. memory ----------------------------------------------------------------------------------------------
def bench_worker_rss(state: Path) -> dict:
    """RSS of `coord worker` idle, then after it embedded one agent (the model loaded)."""
    from sqlalchemy import select

    from coord.client import Coordinator
    from coord.db.models import AgentEmbedding

    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    env.update(PYTHONPATH=str(ROOT), COORD_STATE_DIR=str(state), COORD_LOG_LEVEL="warning",
               COORD_RECONCILE_INTERVAL_SECONDS="1")
    log = open(state / "worker.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen([sys.executable, "-m", "coord.cli", "worker"], env=env, stdout=log, stderr=log)
    try:
        c = Coordinator(settings_for(state, dispatch="queue"))
        deadline = time.monotonic() + 120
        time.sleep(3)
        idle = rss_mb(proc.pid)
        c.register_agent("rss-probe", "Measures the resident memory of the worker with the model loaded.")
        while time.monotonic() < deadline:
            with c.db.reader() as s:
                if s.scalar(select(AgentEmbedding.agent_id).where(AgentEmbedding.agent_id == "rss-probe")):
                    break
            time.sleep(0.2)
        else:
            raise SystemExit("the worker did not embed the probe agent in 120 s; see " + str(state / "worker.log"))
        time.sleep(0.5)
        loaded = rss_mb(proc.pid)
        c.close()
        return {"worker_idle_rss_mb": idle, "worker_model_rss_mb": loaded}
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def client_rss(db_state: Path, need: str) -> float:
    """RSS of a fresh process after one hybrid request on the given registry (model + matrix loaded)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from scripts.bench_matching import settings_for, rss_mb\n"
        "from pathlib import Path\n"
        "from coord.client import Coordinator\n"
        "c = Coordinator(settings_for(Path(sys.argv[2])))\n"
        "c.find_experts(sys.argv[3])\n"
        "print(rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(db_state), need], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


# --- 4. installed size ----------------------------------------------------------------------------------------
def extra_size() -> dict:
    """Bytes installed by the packages `coord[semantic]` needs beyond what coord itself needs."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def closure(reqs: list[str], extras: set[str] = frozenset()) -> set[str]:
        seen: set[str] = set()
        todo = list(reqs)
        while todo:
            req = Requirement(todo.pop())
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            name = req.name.lower().replace("_", "-")
            if name in seen:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            todo.extend(r for r in (dist.requires or []) if "extra ==" not in r)
        return seen

    coord_reqs = metadata.distribution("coord").requires or []
    base = closure([r for r in coord_reqs if "extra ==" not in r])
    semantic = closure([r.split(";")[0] for r in coord_reqs if 'extra == "semantic"' in r])
    sizes = {}
    for name in sorted(semantic - base):
        dist = metadata.distribution(name)
        sizes[f"{name}=={dist.version}"] = sum((f.size or 0) for f in (dist.files or []))
    return {"packages": sizes, "total_mb": sum(sizes.values()) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collection", type=Path, default=DEFAULT_COLLECTION)
    ap.add_argument("--sizes", default="150,1000,10000")
    ap.add_argument("--embed", type=int, default=1000, help="agents synced and embedded (default 1000)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-worker", action="store_true", help="do not start `coord worker` for its RSS")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from coord.logs import configure_logging

    configure_logging("warning", "console")
    from coord.matching.embedder import load_embedder

    t = time.perf_counter()
    if load_embedder() is None:
        print("the 'semantic' extra is not installed: nothing to measure (pip install 'coord[semantic]')")
        return 2
    if not args.collection.is_dir():
        print(f"agent collection not found: {args.collection} (--collection DIR)", file=sys.stderr)
        return 2
    results_load = time.perf_counter() - t
    templates = collection_files(args.collection)
    needs = [line.split("\t")[0] for line in QUERIES.read_text().splitlines() if line and not line.startswith("#")]
    results: dict = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "model_load_s": results_load}
    with tempfile.TemporaryDirectory(prefix="coord-bench-matching-") as tmp:
        base_state = Path(tmp) / "base"
        results["embed"], base = bench_embed(base_state, templates, args.embed)
        e = results["embed"]
        print(f"model load {results['model_load_s']:.2f} s")
        print(f"sync {e['agents']} agents: {e['sync_wall_s']:.1f} s wall, {e['sync_cpu_s']:.1f} s CPU "
              f"({e['embed_jobs_queued']} embed job queued)")
        print(f"embed {e['embedded']} agents: {e['embed_wall_s']:.1f} s wall, {e['embed_cpu_s']:.1f} s CPU "
              f"({1000 * e['embed_cpu_s'] / max(e['embedded'], 1):.1f} ms CPU per agent; "
              f"{e['embed_jobs_run']} jobs, each within its lease budget)")
        results["latency"] = {}
        biggest = None
        for n in [int(x) for x in args.sizes.split(",")]:
            state = Path(tmp) / f"n{n}"
            t = time.perf_counter()
            c = build_registry(state, base, n)
            setup = time.perf_counter() - t
            r = results["latency"][n] = bench_latency(c, needs, args.rounds)
            c.close()
            biggest = state
            print(f"match at {n:>6,} agents: p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms wall;"
                  f" CPU p50 {r['cpu_p50_ms']:.2f} p99 {r['cpu_p99_ms']:.2f} ms"
                  f" (query embedding alone: wall p50 {r['embed_p50_ms']:.2f} p99 {r['embed_p99_ms']:.2f},"
                  f" CPU p50 {r['embed_cpu_p50_ms']:.2f} p99 {r['embed_cpu_p99_ms']:.2f} ms;"
                  f" first request {r['first_request_ms']:.0f} ms; {r['requests']} requests; setup {setup:.0f} s)")
        base.close()
        if biggest is not None:
            results["client_rss_mb"] = client_rss(biggest, needs[0])
            print(f"client process RSS after one hybrid request at the largest size: "
                  f"{results['client_rss_mb']:.0f} MB")
        if not args.skip_worker:
            results.update(bench_worker_rss(Path(tmp) / "worker"))
            print(f"coord worker RSS: {results['worker_idle_rss_mb']:.0f} MB idle, "
                  f"{results['worker_model_rss_mb']:.0f} MB with the model loaded")
    results["extra"] = extra_size()
    print(f"installed size of the semantic extra: {results['extra']['total_mb']:.0f} MB "
          + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(results["extra"]["packages"].items(),
                                                               key=lambda kv: -kv[1])))
    results["load_avg_end"] = os.getloadavg()
    print(f"load average {results['load_avg_start'][0]:.1f} -> {results['load_avg_end'][0]:.1f} on "
          f"{results['cpus']} CPUs")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
