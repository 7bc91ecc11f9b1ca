"""`coord worker` as a subprocess: graceful SIGTERM, retries and failures in `coord status`, a poison job,
periodic jobs with two consumers, and the sd_notify protocol against a datagram socket of the test's own.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env, make_settings
from sqlalchemy import func, select
from worker_proc import WorkerProcess, _no_worker_left_behind, read_events, wait_for  # noqa: F401 -- fixture

from coord.client import Coordinator
from coord.clock import utcnow
from coord.db.models import InboxMessage, OutboxJob, PeriodicRun
from coord.logs import configure_logging
from coord.outbox import add_job

pytestmark = pytest.mark.slow


@pytest.fixture
def coord(tmp_path: Path) -> Any:
    configure_logging("warning")
    c = Coordinator(make_settings(tmp_path, dispatch="queue"))
    c.register_agent("sender", "delegates work")
    c.register_agent("receiver", "receives work")
    yield c
    c.close()


def add_test_job(c: Coordinator, job: str, ref: str, *, ring: bool = True, max_attempts: int = 3,
                 **payload: Any) -> str:
    with c.db.session() as s:
        outbox_id = add_job(s, c.db.backend, job, ref, now=utcnow(), payload=payload, max_attempts=max_attempts)
    if ring:
        c.bell.ring([outbox_id])
    return outbox_id


def row(c: Coordinator, outbox_id: str) -> OutboxJob:
    with c.db.reader() as s:
        return s.get(OutboxJob, outbox_id)


def count_done(c: Coordinator, job: str = "dispatch") -> int:
    with c.db.reader() as s:
        return s.scalar(select(func.count()).select_from(OutboxJob)
                        .where(OutboxJob.job == job, OutboxJob.status == "done")) or 0


def delegate_many(c: Coordinator, n: int, prefix: str) -> list[str]:
    return [c.delegate("sender", "receiver", {"title": f"{prefix} {i}"}, id=f"{prefix}-{i}").coordination_id
            for i in range(n)]


def test_sigterm_during_load_finishes_running_jobs_and_exits_0_within_grace(coord: Coordinator, tmp_path: Path):
    log = tmp_path / "worker.log"
    worker = WorkerProcess(coord.settings, log, COORD_SHUTDOWN_GRACE_SECONDS="8")
    worker.wait_ready()
    notes = tmp_path / "slow.log"
    slow = [add_test_job(coord, "test.sleep", f"slow-{i}", seconds=2.0, log=str(notes)) for i in range(2)]
    ids = delegate_many(coord, 150, "load")
    wait_for(lambda: row(coord, slow[0]).attempts and row(coord, slow[1]).attempts, 20, "both slow jobs running")
    rc, took = worker.terminate()
    print(f"\nSIGTERM under load: exit {rc} after {took:.2f}s (grace 8s); "
          f"{count_done(coord)} of {len(ids)} delegations done before the stop")
    assert rc == 0
    assert took < 8.0
    # The running jobs were allowed to finish: no lease left to expire, no second attempt needed.
    assert [row(coord, i).status for i in slow] == ["done", "done"]
    assert len(notes.read_text().splitlines()) == 2
    events = [e["event"] for e in read_events(log)]
    assert events.index("worker.stopping") < events.index("worker.stopped")
    # Nothing lost: a new worker finishes the rest, each delegation notified once.
    again = WorkerProcess(coord.settings, log)
    wait_for(lambda: count_done(coord) == len(ids), 60, "every delegation dispatched")
    assert again.terminate()[0] == 0
    with coord.db.reader() as s:
        refs = list(s.scalars(select(InboxMessage.ref_id).where(InboxMessage.agent_id == "receiver")))
    assert sorted(refs) == sorted(ids)


def test_a_job_still_in_native_code_after_the_grace_period_does_not_crash_the_exit(coord: Coordinator,
                                                                                  tmp_path: Path):
    # Seen in the suite: SIGTERM while a job was loading the ONNX model; after the grace period the
    # interpreter finalized under that thread and C++ aborted the process (exit -6, "terminate called
    # without an active exception"), which systemd records as a crash.
    pytest.importorskip("onnxruntime", reason="needs the semantic extra (ONNX Runtime) for a job in native code")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(coord.settings, log, COORD_SHUTDOWN_GRACE_SECONDS="2")
    worker.wait_ready()
    notes = tmp_path / "load.log"
    job = add_test_job(coord, "test.load_model", "model", seconds=30.0, log=str(notes))
    wait_for(lambda: notes.exists() and "loading" in notes.read_text(), 30, "the job loading the model")
    time.sleep(0.5)
    rc, took = worker.terminate()
    print(f"\nSIGTERM with a job in ONNX Runtime: exit {rc} after {took:.2f}s (grace 2s)")
    assert rc == 0, log.read_text()[-2000:]
    assert took < 10
    events = read_events(log)
    left = [e for e in events if e["event"] == "worker.abandoned_jobs"]
    assert left and left[0]["threads"], "the exit names the threads it left behind"
    # Not lost: still pending with the attempt counted; another worker takes it when its lease runs out.
    assert (row(coord, job).status, row(coord, job).attempts) == ("pending", 1)


def test_failing_job_is_retried_with_backoff_then_failed_and_shown_in_status(coord: Coordinator, tmp_path: Path):
    worker = WorkerProcess(coord.settings, tmp_path / "worker.log")
    worker.wait_ready()
    notes = tmp_path / "attempts.log"
    job_id = add_test_job(coord, "test.raise", "always-fails", max_attempts=3, log=str(notes))
    ids = delegate_many(coord, 20, "beside")
    wait_for(lambda: row(coord, job_id).status == "failed", 30, "the failing job to be marked failed")
    times = [float(line.split()[0]) for line in notes.read_text().splitlines()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"\nattempts at +{[round(t - times[0], 2) for t in times]} s; gaps {[round(g, 2) for g in gaps]}")
    assert len(times) == 3  # the limit, no more
    assert gaps[0] >= 1.9 and gaps[1] >= 3.9 and gaps[1] > gaps[0]  # backoff 2 s, then 4 s
    final = row(coord, job_id)
    assert (final.status, final.attempts) == ("failed", 3)
    assert "ValueError: boom on attempt 3" in final.last_error
    assert count_done(coord) == len(ids)  # other jobs kept flowing

    out = subprocess.run([sys.executable, "-m", "coord.cli", "--json", "status"], capture_output=True, text=True,
                         env=child_env(COORD_STATE_DIR=str(coord.settings.state_dir)), timeout=60, check=True)
    status = json.loads(out.stdout)
    queue = status["queue"]
    assert queue["failed_last_hour"] >= 1
    assert any(e["id"] == job_id and "boom on attempt 3" in e["error"] for e in queue["last_errors"])
    assert any(w["alive"] for w in status["workers"])
    assert worker.terminate()[0] == 0


def test_poison_job_ends_failed_after_the_limit_while_other_jobs_flow(coord: Coordinator, tmp_path: Path):
    # Worker processes: the poison kills the process running it, the daemon replaces it and carries on.
    worker = WorkerProcess(coord.settings, tmp_path / "worker.log", "--worker-type", "process")
    worker.wait_ready()
    poison = add_test_job(coord, "test.poison", "kills-its-worker", max_attempts=3)
    ids = delegate_many(coord, 100, "flow")
    wait_for(lambda: row(coord, poison).status == "failed", 60, "the poison job to be given up")
    final = row(coord, poison)
    print(f"\npoison job: {final.status} after {final.attempts} takes: {final.last_error}")
    assert final.attempts == 4  # three runs that each killed their worker, then the take that gives up
    assert "gave up after 3 attempts" in final.last_error
    wait_for(lambda: count_done(coord) == len(ids), 60, "the other jobs to finish")
    assert worker.alive()  # the daemon itself never went down
    time.sleep(3)
    assert row(coord, poison).attempts == 4  # no endless loop
    assert worker.terminate()[0] == 0


def test_periodic_jobs_run_once_per_period_with_two_consumers(coord: Coordinator, tmp_path: Path):
    a = WorkerProcess(coord.settings, tmp_path / "a.log")
    b = WorkerProcess(coord.settings, tmp_path / "b.log")
    a.wait_ready()
    b.wait_ready()
    time.sleep(6)
    assert a.terminate()[0] == 0 and b.terminate()[0] == 0
    ran = [e for p in (a, b) for e in p.events("periodic.ran")]
    for job in ("reconcile_outbox", "reap_leases"):
        periods = [e["period"] for e in ran if e["job"] == job]
        by_worker = {e["worker_id"] for e in ran if e["job"] == job}
        print(f"\n{job}: {len(periods)} runs in {len(set(periods))} periods by {sorted(by_worker)}")
        assert len(periods) >= 5
        assert len(periods) == len(set(periods)), "a period ran twice"
        with coord.db.reader() as s:
            assert s.get(PeriodicRun, job).runs == len(periods)


def test_sd_notify_ready_watchdog_reload_stopping_in_order(coord: Coordinator, tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    received: list[tuple[float, str]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                received.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    worker = WorkerProcess(coord.settings, tmp_path / "worker.log", NOTIFY_SOCKET=str(path),
                           WATCHDOG_USEC="1000000")  # ping every 0.5 s
    try:
        wait_for(lambda: any("READY=1" in m for _, m in received), 30, "READY=1")
        time.sleep(2.6)
        worker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sum("READY=1" in m for _, m in received) >= 2, 10, "READY=1 after the reload")
        time.sleep(0.6)
        rc, _ = worker.terminate()
    finally:
        time.sleep(0.3)
        stop.set()
        listener.join()
        sock.close()
    assert rc == 0
    kinds = [m.split("\n")[0] for _, m in received]
    print("\nnotify messages: " + ", ".join(k for k in kinds if not k.startswith("STATUS")))
    ready = kinds.index("READY=1")
    watchdog = [t for (t, m) in received if m == "WATCHDOG=1"]
    first_dog = kinds.index("WATCHDOG=1")
    reloading = kinds.index(next(k for k in kinds if k.startswith("RELOADING=1")))
    stopping = kinds.index("STOPPING=1")
    assert ready < first_dog < reloading < stopping
    assert "READY=1" in kinds[reloading + 1:stopping]
    assert "READY=1" not in kinds[stopping:]
    gaps = [b - a for a, b in itertools.pairwise(watchdog)]
    print(f"watchdog pings: {len(watchdog)}, gaps {min(gaps):.2f}..{max(gaps):.2f}s (want 0.5 s)")
    assert len(watchdog) >= 5
    assert all(0.3 <= g <= 0.9 for g in gaps), gaps


def test_the_daemon_runs_the_folder_watcher_for_agent_dirs(coord: Coordinator, tmp_path: Path):
    folder = tmp_path / "agents"
    folder.mkdir()
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "agents" / "python-pro.md"
    (folder / "python-pro.md").write_text(fixture.read_text())
    worker = WorkerProcess(coord.settings, tmp_path / "worker.log", COORD_AGENT_DIRS=str(folder))
    worker.wait_ready()

    def registered() -> bool:
        return any(a.id == "python-pro" for a in coord.list_agents())

    wait_for(registered, 20, "the agent file to be registered by the watcher")
    assert worker.terminate()[0] == 0
