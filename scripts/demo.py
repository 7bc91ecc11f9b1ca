"""The seed's usage examples, played against a fresh coord on the embedded SQLite default.

Run through `scripts/demo`. A real `coord worker` runs beside it on the same throw-away state dir (the
default `dispatch = "queue"`: the client commits and rings, the worker notifies the target) and is
stopped with SIGTERM at the end. Every step prints what happened; the state dir is removed at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from coord import Coordinator, load_settings
from coord.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]
console = Console(highlight=False, width=110)


def step(title: str) -> None:
    console.print(f"\n[bold cyan]== {title}[/]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the state dir and print its path")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="coord-demo-"))
    os.environ["COORD_DEMO_STATE"] = str(state_dir)
    configure_logging("warning", "console")
    agents_dir = state_dir / "agents"  # the folder the worker watches, like a project's .claude/agents/
    shutil.copytree(ROOT / "examples" / "agents", agents_dir)
    settings = load_settings(
        overrides={"state_dir": str(state_dir), "dispatch": "queue", "agent_dirs": [str(agents_dir)]}, env={}
    ).settings
    worker = start_worker(state_dir, agents_dir)  # starts while this process opens the database: both take a while
    try:
        with Coordinator(settings) as coord:
            wait_ready(coord, worker, state_dir)
            play(coord)
            wait_idle(coord)
        step("stop the worker (SIGTERM: running jobs finish, then it exits)")
        worker.send_signal(signal.SIGTERM)
        console.print(f"  worker exited with status {worker.wait(40)}")
    finally:
        if worker.poll() is None:
            worker.kill()
        if args.keep:
            console.print(f"\nstate kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def start_worker(state_dir: Path, agents_dir: Path) -> subprocess.Popen:
    """`coord worker` on the demo's state dir."""
    step("start the worker daemon (`coord worker`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    env.update(COORD_STATE_DIR=str(state_dir), COORD_LOG_LEVEL="warning", COORD_RECONCILE_INTERVAL_SECONDS="1",
               COORD_AGENT_DIRS=str(agents_dir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    with open(state_dir / "worker.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "coord.cli", "worker"], env=env, stdout=log, stderr=log)


def wait_ready(coord: Coordinator, proc: subprocess.Popen, state_dir: Path) -> None:
    """Until the worker has written its first heartbeat."""
    from coord.db.models import WorkerHeartbeat

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with coord.db.reader() as s:
            if s.query(WorkerHeartbeat).count():
                console.print(f"  worker pid {proc.pid} running")
                return
        time.sleep(0.05)
    raise SystemExit(f"the worker did not start; see {state_dir / 'worker.log'}")


def wait_inbox(coord: Coordinator, agent: str, timeout: float = 10.0) -> list:
    """The worker fills the inbox a few milliseconds after the delegation commits."""
    deadline = time.monotonic() + timeout
    while not (items := coord.inbox(agent)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return items


def wait_idle(coord: Coordinator, timeout: float = 10.0) -> None:
    """Until the worker has run every outbox job (follow-ups included)."""
    from coord.db.models import OutboxJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with coord.db.reader() as s:
            if not s.query(OutboxJob).filter(OutboxJob.status == "pending").count():
                return
        time.sleep(0.05)


def play(coord: Coordinator) -> None:
    step("the worker's folder watcher registers the agent files (copied from examples/agents/)")
    deadline = time.monotonic() + 30
    while len(coord.list_agents()) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    for info in coord.list_agents():
        console.print(f"  {info.id:16} expertise: {', '.join(info.expertise[:5])}")

    step("backend-expert delegates UI work to frontend-expert (seed: delegateTask)")
    r = coord.delegate("backend-expert", "frontend-expert", {
        "title": "Create API integration UI",
        "description": "Build React components for new endpoints",
        "apiSpec": "api-spec.yaml",
        "priority": "high",
    })
    console.print(f"  {r.status}: task {r.coordination_id}")
    started = time.perf_counter()
    items = wait_inbox(coord, "frontend-expert")
    console.print(f"  the worker notified the target {1000 * (time.perf_counter() - started):.0f} ms later")
    for item in items:
        console.print(f"  frontend-expert inbox: {item.kind} from {item.body.get('from_agent')}")

    step("frontend-expert claims the task under a lease, then completes it")
    claim = coord.claim_next("frontend-expert", lease_seconds=60)
    assert claim is not None
    console.print(f"  claimed {claim.task_id} (token {claim.token}, lease until {claim.lease_expires_at:%H:%M:%S}Z)")
    coord.complete(claim.task_id, claim.token, {"components": ["EndpointList", "EndpointForm"]})
    console.print(f"  task is now {coord.get_task(claim.task_id).status}; "
                  f"backend-expert inbox: {[i.kind for i in wait_inbox(coord, 'backend-expert')]}")

    step("mobile-expert asks for blockchain expertise (seed: requestCollaboration)")
    c = coord.request_collaboration("mobile-expert", "blockchain", {
        "task": "Implement crypto wallet in mobile app",
        "requirements": ["Web3 integration", "Secure key storage"],
    })
    console.print(f"  {c.status}; suggestion: {c.suggestion}; gap recorded: {c.gap_id}")

    step("mobile-expert asks for accessibility help: a collaborator is found")
    c = coord.request_collaboration("mobile-expert", "accessibility", {"task": "screen reader support"})
    console.print(f"  {c.status}: " + ", ".join(f"{x.agent_id} ({x.score:.2f})" for x in c.candidates))

    step("database-expert lacks the postgresql MCP server (seed: /alltools check)")
    for gap in coord.report_available_tools("database-expert", tools=["Read", "Bash"], mcp_servers=[]):
        console.print(f"  missing {gap.capability_type} {gap.name!r}: {gap.status} (frequency {gap.frequency})")
    gap = coord.record_missing_capability("mcp", "postgresql", "backend-expert",
                                          {"reason": "Need database access for schema design"})
    console.print(f"  backend-expert reports it too: frequency now {gap.frequency}")

    step("delegating to an agent that does not exist")
    r = coord.delegate("backend-expert", "blockchain-expert", {"title": "Audit the wallet smart contract"})
    alts = ", ".join(f"{a.agent_id} ({a.score:.2f})" for a in r.fallback) or "none"
    console.print(f"  {r.status}; gap {r.gap_id}; alternatives: {alts}")

    wait_idle(coord)  # the worker's proposal jobs for the new gaps
    step("recorded capability gaps")
    wait_idle(coord)
    for g in coord.gaps():
        console.print(f"  {g.capability_type:9} {g.name:20} frequency {g.frequency}  {g.status}")

    step("proposals the worker made for them (confidence computed from how each match was made)")
    for p in coord.get_proposals():
        target = next((str(p.details[k]) for k in ("server", "tool", "name", "target") if p.details.get(k)), "")
        console.print(f"  {p.kind:14} {target[:40]:40} {p.status:17} confidence {p.confidence:.2f}")

    step("a person approves the new blockchain agent (`coord approvals approve`); agents cannot approve")
    approvals = json.loads(cli("--json", "approvals", "ls"))
    wanted = [a for a in approvals if a["action"] == "create_agent"][:1]
    for a in wanted:
        cli("approvals", "approve", a["id"], "--by", "demo-person", "--reason", "looks right")
        console.print(f"  approved {a['id']} ({a['reason'][:70]})")
    deadline = time.monotonic() + 20
    found: list = []
    while wanted and not found and time.monotonic() < deadline:
        time.sleep(0.2)
        found = coord.find_experts("blockchain", limit=1)
    for c in found:
        console.print(f"  the agent file was written and synced: '{c.agent_id}' now matches 'blockchain'")


def cli(*args: str) -> str:
    """Run the `coord` CLI as a person would, on the demo's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    env.update(COORD_STATE_DIR=os.environ["COORD_DEMO_STATE"], PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "coord.cli", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"coord {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


if __name__ == "__main__":
    sys.exit(main())
