"""Capability gaps under concurrent reporters: frequencies are exact, replays count once, one proposal job.

Real processes (spawn), one Coordinator each, on a real SQLite file and a real PostgreSQL database.
The children ring no bell (SilentBell, as a write-only process would): this test is about the counting
and the outbox rows it writes, not about what the proposal job later does with them.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from coord.client import Coordinator
from coord.db.models import CapabilityGap, GapReport, OutboxJob
from coord.outbox import SilentBell
from coord.settings import Settings, load_settings
from coord.states import GAP_TYPES, JOB_PROPOSE

N_PROCS = 8
N_GAPS = 20
ROUNDS = 100
REPORTER = "reporter-agent"


def _gap(g: int, proc: int) -> tuple[str, str]:
    """Gap g as process `proc` spells it: case and spacing differ, the normalized name does not."""
    name = f"Capability  {g}" if proc % 2 else f" capability {g} "
    return GAP_TYPES[g % len(GAP_TYPES)], name.upper() if proc % 3 == 0 else name


def _reporter(values: dict[str, Any], proc: int) -> int:
    """Child: report every gap ROUNDS times, each report with an id of its own."""
    from coord.logs import configure_logging

    configure_logging("warning")
    c = Coordinator(load_settings(overrides=values, env={}).settings, bell=SilentBell())
    try:
        for r in range(ROUNDS):
            for g in range(N_GAPS):
                capability_type, name = _gap(g, proc)
                c.record_missing_capability(capability_type, name, REPORTER, {"round": r}, id=f"p{proc}-r{r}-g{g}")
    finally:
        c.close()
    return ROUNDS * N_GAPS


def _run(settings: Settings) -> float:
    # Commits that do not wait for their flush: same locking, less waiting. This test is about counting
    # under contention (8 processes on the same 20 rows in step), not durability; a flushed commit takes
    # the row lock's holder ~4 ms on this kind of disk, and every count of a row waits for the one before.
    url = settings.db_url
    if url.startswith("postgresql"):
        url += ("&" if "?" in url else "?") + "options=-csynchronous_commit%3Doff"
    values = {"state_dir": str(settings.state_dir), "database_url": url, "dispatch": "inline",
              "sqlite_synchronous": "NORMAL"}
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with ctx.Pool(N_PROCS) as pool:
        done = pool.starmap(_reporter, [(values, p) for p in range(N_PROCS)])
    assert done == [ROUNDS * N_GAPS] * N_PROCS
    return time.monotonic() - started


def _state(c: Coordinator) -> tuple[dict[tuple[str, str], int], int, list[str], set[str]]:
    with c.db.reader() as s:
        freq = {(g.capability_type, g.name): g.frequency for g in s.scalars(select(CapabilityGap))}
        reports = s.scalar(select(func.count()).select_from(GapReport))
        jobs = list(s.scalars(select(OutboxJob.ref_id).where(OutboxJob.job == JOB_PROPOSE)))
        ids = set(s.scalars(select(CapabilityGap.id)))
    return freq, reports, jobs, ids


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes on a loaded 2-core machine; a hang still fails
def test_concurrent_reports_count_exactly(coordinator: Coordinator, settings: Settings):
    coordinator.register_agent(REPORTER, "Reports what it lacks", expertise=["reporting"])
    elapsed = _run(settings)

    freq, reports, jobs, gap_ids = _state(coordinator)
    expected = {(GAP_TYPES[g % len(GAP_TYPES)], f"capability {g}") for g in range(N_GAPS)}
    assert set(freq) == expected, "spellings of one capability became separate gaps"
    total = N_PROCS * ROUNDS
    assert {k: v for k, v in freq.items() if v != total} == {}, f"every frequency must be exactly {total}"
    assert reports == N_PROCS * ROUNDS * N_GAPS
    assert sorted(jobs) == sorted(gap_ids), "each new gap needs exactly one propose job"
    print(f"\n{reports} gap reports by {N_PROCS} processes on {coordinator.db.dialect}: {elapsed:.1f}s")


def test_replayed_report_ids_count_once(coordinator: Coordinator):
    coordinator.register_agent(REPORTER, "Reports what it lacks", expertise=["reporting"])
    first = coordinator.record_missing_capability("mcp", "PostgreSQL", REPORTER, {"reason": "schema"}, id="rep-1")
    again = coordinator.record_missing_capability("mcp", "PostgreSQL", REPORTER, {"reason": "schema"}, id="rep-1")
    assert (first.status, first.frequency, first.new) == ("recorded", 1, True)
    assert (again.status, again.gap_id, again.frequency) == ("replayed", first.gap_id, 1)
    other = coordinator.record_missing_capability("mcp", "postgresql", REPORTER, id="rep-2")
    assert (other.status, other.frequency) == ("counted", 2)
    coordinator.record_missing_capability("mcp", "postgresql", REPORTER, id="rep-2")
    freq, reports, jobs, gap_ids = _state(coordinator)
    assert freq == {("mcp", "postgresql"): 2}
    assert reports == 2
    assert jobs == list(gap_ids)


def test_first_report_writes_one_propose_job(coordinator: Coordinator):
    coordinator.register_agent(REPORTER, "Reports what it lacks", expertise=["reporting"])
    for n in range(3):
        for name in ("ruff", "Ruff ", "terraform"):
            coordinator.record_missing_capability("tool", name, REPORTER, id=f"rep-{n}-{name.strip()}-{name[0]}")
    freq, _reports, jobs, gap_ids = _state(coordinator)
    assert freq == {("tool", "ruff"): 6, ("tool", "terraform"): 3}
    assert sorted(jobs) == sorted(gap_ids)
