"""The seed's usage examples, played against a fresh coord on the embedded SQLite default.

Run through `scripts/demo`. Every step prints what happened; the state dir is removed at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from coord import Coordinator, load_settings
from coord.agentfiles import read_agent_file
from coord.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]
console = Console(highlight=False)


def step(title: str) -> None:
    console.print(f"\n[bold cyan]== {title}[/]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the state dir and print its path")
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="coord-demo-"))
    configure_logging("warning", "console")
    settings = load_settings(overrides={"state_dir": str(state_dir), "dispatch": "inline"}, env={}).settings
    try:
        with Coordinator(settings) as coord:
            play(coord)
    finally:
        if args.keep:
            console.print(f"\nstate kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def play(coord: Coordinator) -> None:
    step("register the example agents from examples/agents/")
    for path in sorted((ROOT / "examples" / "agents").glob("*.md")):
        agent = read_agent_file(path)
        info = coord.register_agent(
            agent.name, agent.description, expertise=agent.expertise, tools=agent.tools,
            mcp_servers=agent.mcp_servers, model=agent.model,
        )
        console.print(f"  {info.id:16} expertise: {', '.join(info.expertise[:5])}")

    step("backend-expert delegates UI work to frontend-expert (seed: delegateTask)")
    r = coord.delegate("backend-expert", "frontend-expert", {
        "title": "Create API integration UI",
        "description": "Build React components for new endpoints",
        "apiSpec": "api-spec.yaml",
        "priority": "high",
    })
    console.print(f"  {r.status}: task {r.coordination_id}")
    for item in coord.inbox("frontend-expert"):
        console.print(f"  frontend-expert inbox: {item.kind} from {item.body.get('from_agent')}")

    step("frontend-expert claims the task under a lease, then completes it")
    claim = coord.claim_next("frontend-expert", lease_seconds=60)
    assert claim is not None
    console.print(f"  claimed {claim.task_id} (token {claim.token}, lease until {claim.lease_expires_at:%H:%M:%S}Z)")
    coord.complete(claim.task_id, claim.token, {"components": ["EndpointList", "EndpointForm"]})
    console.print(f"  task is now {coord.get_task(claim.task_id).status}; "
                  f"backend-expert inbox: {[i.kind for i in coord.inbox('backend-expert')]}")

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

    step("recorded capability gaps")
    for g in coord.gaps():
        console.print(f"  {g.capability_type:9} {g.name:20} frequency {g.frequency}  {g.status}")


if __name__ == "__main__":
    sys.exit(main())
