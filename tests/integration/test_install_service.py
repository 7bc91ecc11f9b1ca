"""The installer service with a real database: approved proposals become installs (real pip and npm,
offline), every step is recorded, refusals run nothing, timeouts retry then fail, rollback undoes it all,
and steps cut short by a dead worker are marked interrupted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import make_settings
from sqlalchemy import select

from coord.approvals import ApprovalDesk
from coord.client import Coordinator
from coord.clock import utcnow
from coord.db import open_database
from coord.db.models import Approval, AuditEvent, Install, InstallAttempt, OutboxJob, Proposal
from coord.ids import new_id
from coord.installer.history import InstallDesk
from coord.installer.service import mark_interrupted
from coord.jobs import HANDLERS, JobContext
from coord.outbox import add_job, run_job
from coord.states import JOB_EXECUTE, JOB_INSTALL

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "installer"
SOURCES = ["pypi:coord-fixture-*", "npm:@coord-fixtures/*"]
needs_npm = pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")

def _quiet_env(tmp: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp), "PIP_CONFIG_FILE": os.devnull,
            "npm_config_cache": str(tmp / "npm-cache"), "npm_config_offline": "true",
            "npm_config_update_notifier": "false"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local folder holding the fixture wheel and the `npm pack` tarball: what install_find_links names."""
    work = tmp_path_factory.mktemp("artifacts")
    out = work / "dist"
    src = shutil.copytree(FIXTURES / "pyhello", work / "pyhello")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(src)], check=True, env=_quiet_env(work), timeout=120)
    if shutil.which("npm"):
        npm_src = shutil.copytree(FIXTURES / "npm-hello", work / "npm-hello")
        subprocess.run(["npm", "pack", "--offline", "--no-audit", "--no-fund", "--pack-destination", str(out)],
                       cwd=npm_src, check=True, env=_quiet_env(work), timeout=120, capture_output=True)
    return out


@pytest.fixture(scope="module")
def catalog() -> Path:
    return FIXTURES / "catalog"


def _settings(tmp: Path, catalog: Path, db_url: str | None = None, **over):
    values = {"catalog_paths": [str(catalog)], "allowed_install_sources": SOURCES, "install_timeout": 120,
              "max_install_attempts": 3, "log_level": "warning", **over}
    return make_settings(tmp, db_url, **values)


def _approve_gap(c: Coordinator, kind: str, name: str) -> str:
    """An agent reports a gap; the propose job (inline) asks for approval; a person approves. Returns the
    approval id; with dispatch inline the approval also runs the execute and install jobs."""
    c.register_agent("dev-agent", "Writes code.", expertise=["python"])
    c.record_missing_capability(kind, name, "dev-agent")
    desk = ApprovalDesk(c.settings, c.db, c.bell)
    (pending,) = [a for a in desk.list() if a.action == f"install_{kind}"]
    desk.approve(pending.id, by="alice", reason="needed for the build")
    return pending.id


def _install(c: Coordinator) -> Install:
    with c.db.reader() as s:
        return s.scalars(select(Install)).one()


def _steps(c: Coordinator, install_id: str) -> list[InstallAttempt]:
    with c.db.reader() as s:
        return list(s.scalars(select(InstallAttempt).where(InstallAttempt.install_id == install_id)
                              .order_by(InstallAttempt.id)))


def _audit(c: Coordinator, subject_id: str) -> list[str]:
    with c.db.reader() as s:
        return list(s.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == subject_id)
                              .order_by(AuditEvent.id)))


# --------------------------------------------------------------------------------- real pip and npm


def test_approved_tool_install_runs_recorded_and_verified(tmp_path: Path, catalog: Path, artifacts: Path) -> None:
    settings = _settings(tmp_path, catalog, install_find_links=[str(artifacts)], install_offline=True)
    with Coordinator(settings) as c:
        _approve_gap(c, "tool", "hello-coord")
        install = _install(c)
        assert install.status == "installed", (install.error, [a.output_tail for a in _steps(c, install.id)])
        assert install.approved_by == "alice" and install.attempts == 1
        # Where the wheel came from is the operator's setting, never the proposal's.
        assert install.plan["find_links"] == [str(artifacts)] and install.plan["offline"] is True
        assert "find_links" not in install.details["approved_plan"]
        assert install.details["rule"] == "pypi:coord-fixture-*"

        steps = _steps(c, install.id)
        assert [(a.attempt, a.step, a.status, a.exit_code) for a in steps] == [
            (1, "venv", "ok", 0), (1, "install", "ok", 0), (1, "verify", "ok", 0)]
        pip = steps[1]
        assert pip.argv[:3] == [str(Path(install.prefix) / "bin" / "python"), "-m", "pip"]
        assert "--no-index" in pip.argv and f"--find-links={artifacts}" in pip.argv
        assert all(a.duration and a.duration > 0 and a.sandbox in ("bwrap", "none") for a in steps)
        assert all(a.worker == f"{socket.gethostname()}:{os.getpid()}" and a.finished_at for a in steps)
        assert "hello from coord fixture 1.0.0 --version" in steps[2].output_tail

        link = settings.tools_path / "bin" / "hello-coord"
        ran = subprocess.run([str(link), "works"], capture_output=True, text=True, check=True, env={})
        assert ran.stdout.strip() == "hello from coord fixture 1.0.0 works"
        with c.db.reader() as s:
            assert s.get(Proposal, install.proposal_id).status == "executed"
        assert _audit(c, install.id) == ["install.requested", "install.queued", "install.installed"]


@needs_npm
def test_mcp_install_writes_a_pinned_entry_with_secret_references_and_rolls_back(
        tmp_path: Path, catalog: Path, artifacts: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    config = project / ".mcp.json"
    original = b'{\n  "mcpServers": {\n    "other": {"command": "other-server"}\n  },\n  "keep": [1, 2]\n}\n'
    config.write_bytes(original)
    settings = _settings(tmp_path, catalog, install_find_links=[str(artifacts)], install_offline=True,
                         mcp_config_files=[str(config)])
    with Coordinator(settings) as c:
        _approve_gap(c, "mcp", "hello-mcp")
        install = _install(c)
        assert install.status == "installed", (install.error, [a.output_tail for a in _steps(c, install.id)])
        assert install.name == "hello-mcp" and install.plan["tarball"].endswith("coord-fixtures-hello-1.0.0.tgz")
        doc = json.loads(config.read_text())
        assert doc["keep"] == [1, 2] and doc["mcpServers"]["other"] == {"command": "other-server"}
        entry = doc["mcpServers"]["hello-mcp"]
        prefix = Path(install.prefix)
        assert prefix.name == "hello-mcp-1.0.0"  # the exact version, in the path the client runs
        assert entry == {"command": str(prefix / "node_modules" / ".bin" / "hello-npm"), "args": [],
                         "env": {"HELLO_API_KEY": "${HELLO_API_KEY}"}}
        ran = subprocess.run([entry["command"], "hi"], capture_output=True, text=True, check=True)
        assert "hello from coord npm fixture 1.0.0 hi" in ran.stdout
        assert install.details["required_secrets"] == ["HELLO_API_KEY"]
        # hello-npm prints a line and exits: no MCP server to list tools from, so no pin, and the reason kept.
        assert install.tools_hash is None and install.details["tools_pin"]["status"] == "not_recorded"
        assert "could not list the tools of MCP server" in install.details["tools_pin"]["reason"]
        assert _audit(c, install.id)[-1] == "mcp.tools_not_pinned"
        assert InstallDesk(settings, c.db).show(install.id)["required_secrets"] == ["HELLO_API_KEY"]
        # The backup of the user's file went to coord's state dir, not into the project.
        # (only the config and our hidden sidecar lock stand in the project)
        assert sorted(p.name for p in project.iterdir()) == ["..mcp.json.lock", ".mcp.json"]
        (change,) = [ch for ch in install.changes if ch["type"] == "config"]
        assert change["action"] == "added" and Path(change["backup"]).is_relative_to(settings.state_dir / "backups")

        result = InstallDesk(settings, c.db).rollback(install.id, by="bob")
        assert result["status"] == "rolled_back" and not result["problems"], result
        assert config.read_bytes() == original
        assert not prefix.exists() and not (settings.tools_path / "bin" / "hello-npm").is_symlink()
        assert _install(c).status == "rolled_back"
        assert InstallDesk(settings, c.db).rollback(install.id, by="bob")["changed"] is False
        with c.db.reader() as s:
            event = s.scalars(select(AuditEvent).where(AuditEvent.action == "install.rolled_back")).one()
            assert event.actor == "bob" and event.subject_id == install.id


class _Tarpit:
    """A registry that accepts connections and never answers: npm waits until coord's timeout kills it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def tarpit() -> Iterator[_Tarpit]:
    pit = _Tarpit()
    yield pit
    pit.close()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@needs_npm
def test_hanging_install_times_out_is_retried_and_finally_fails(tmp_path: Path, catalog: Path,
                                                                 tarpit: _Tarpit) -> None:
    settings = _settings(tmp_path, catalog, install_timeout=1.5, install_npm_registry=f"http://127.0.0.1:{tarpit.port}/")
    with Coordinator(settings) as c:
        _approve_gap(c, "tool", "hello-npm")  # attempt 1 runs inline with the approval
        install = _install(c)
        assert install.status == "retrying" and "timed out" in install.error
        with c.db.reader() as s:
            job = s.scalars(select(OutboxJob).where(OutboxJob.job == JOB_INSTALL)).one()
        assert job.max_attempts == 3 and job.status == "pending" and job.attempts == 1
        ctx = JobContext(settings, c.db)
        for later, expected in ((10, "retry"), (20, "done")):  # past each backoff
            outcome, _ = run_job(c.db, job.id, HANDLERS, ctx, now=lambda m=later: utcnow() + timedelta(minutes=m))
            assert outcome.status == expected, outcome

        install = _install(c)
        assert install.status == "failed" and install.attempts == 3
        assert "timed out" in install.error and "no attempts left" in install.error
        steps = _steps(c, install.id)
        assert [(a.attempt, a.step, a.status) for a in steps] == [(n, "install", "timed_out") for n in (1, 2, 3)]
        assert all(f"--registry=http://127.0.0.1:{tarpit.port}/" in a.argv for a in steps)
        assert not (settings.tools_path / "prefixes" / "hello-npm-1.0.0").exists()
        assert _processes_mentioning(str(settings.tools_path)) == []  # the whole process group was killed
        with c.db.reader() as s:
            assert s.get(Proposal, install.proposal_id).status == "failed"
        assert _audit(c, install.id)[-3:] == ["install.attempt_failed", "install.attempt_failed", "install.failed"]


# ------------------------------------------------------------- refusals and interruptions (both engines)


def _approved(db, kind: str, details: dict) -> str:
    """An approved install proposal and its `execute` job, as the resolution engine leaves them."""
    now = utcnow()
    proposal_id = new_id()
    with db.session() as s:
        s.add(Proposal(id=proposal_id, kind=kind, details=details, status="approved",
                       dedupe_key=f"{kind}:{proposal_id}", created_at=now, updated_at=now))
        s.flush()
        s.add(Approval(id=new_id(), proposal_id=proposal_id, action=kind, requested_by="coordination-system",
                       status="approved", decided_by="alice", decided_at=now, expires_at=now + timedelta(hours=1)))
        return add_job(s, db.backend, JOB_EXECUTE, proposal_id, now=now)


PIP_PLAN = {"kind": "tool", "name": "hello-coord", "installer": "pip", "package": "coord-fixture-hello",
            "version": "1.0.0", "source": "pypi:coord-fixture-hello", "bins": ["hello-coord"],
            "verify": ["hello-coord", "--version"]}


REFUSALS = [  # (what the approved proposal says, install status, the reason it names)
    ({"tool": "hello-coord", "plan": PIP_PLAN}, "denied", "matches none of the allowed install sources ('npm:*')"),
    ({"tool": "hello;rm -rf ~", "plan": PIP_PLAN}, "failed", "contains shell metacharacters ';~'; refused"),
    ({"tool": "hello-coord", "plan": {**PIP_PLAN, "package": "../../etc/passwd"}}, "failed", "contains '..'"),
    ({"tool": "hello-coord", "plan": {**PIP_PLAN, "package": "a/b"}}, "failed", "contains a path separator"),
    ({"tool": "hello-coord", "plan": {**PIP_PLAN, "version": "0.9.0"}}, "failed", "changed since it was approved"),
    ({"tool": "no-such-tool"}, "failed", "not in the catalog"),
]


def test_refused_installs_run_nothing(tmp_path: Path, db_url: str, catalog: Path) -> None:
    settings = _settings(tmp_path, catalog, db_url)
    db = open_database(settings)
    try:
        for details, status, reason in REFUSALS:
            allowed = ["npm:*"] if status == "denied" else SOURCES
            ctx = JobContext(settings.model_copy(update={"allowed_install_sources": allowed}), db)
            outcome, follow_ups = run_job(db, _approved(db, "install_tool", details), HANDLERS, ctx)
            assert outcome.status == "done" and follow_ups == [], outcome
            with db.reader() as s:
                install = s.scalars(select(Install).order_by(Install.created_at.desc(), Install.id.desc())).first()
                assert install.status == status and reason in install.error, install.error
                assert install.approved_by == "alice"
                assert s.get(Proposal, install.proposal_id).status == ("denied" if status == "denied" else "failed")
                event = s.scalars(select(AuditEvent).where(AuditEvent.subject_id == install.id,
                                                           AuditEvent.action == f"install.{status}")).one()
                assert reason in event.details["reason"]
        with db.reader() as s:
            assert s.scalars(select(InstallAttempt)).all() == []  # no step ever started
            assert s.scalars(select(OutboxJob).where(OutboxJob.job == JOB_INSTALL)).all() == []
        assert not (settings.tools_path / "prefixes").exists()
    finally:
        db.dispose()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_attempts_left_running_by_a_dead_worker_are_marked_interrupted(tmp_path: Path, db_url: str,
                                                                        catalog: Path) -> None:
    settings = _settings(tmp_path, catalog, db_url)
    db = open_database(settings)
    now = utcnow()
    host = socket.gethostname()
    try:
        installs, jobs = {}, {}
        with db.session() as s:
            cases = (("retried", f"{host}:{_dead_pid()}", 1), ("exhausted", f"{host}:{_dead_pid()}", 3),
                     ("alive", f"{host}:{os.getppid()}", 1), ("elsewhere", "another-host:1", 1))
            for key, worker, used in cases:
                install = Install(id=new_id(), kind="tool", name=f"t-{key}", plan={}, status="running", attempts=used,
                                  details={"worker": worker})
                s.add(install)
                s.flush()
                s.add(InstallAttempt(install_id=install.id, attempt=used, step="install", argv=["pip", "install"],
                                     status="running", worker=worker))
                job = add_job(s, db.backend, JOB_INSTALL, install.id, now=now - timedelta(minutes=5), max_attempts=3)
                s.execute(OutboxJob.__table__.update().where(OutboxJob.id == job).values(
                    attempts=used, next_attempt_at=now + timedelta(minutes=30)))  # the dead worker's lease
                installs[key], jobs[key] = install.id, job

        with db.session() as s:
            ring = mark_interrupted(s, now)
        assert ring == [jobs["retried"]]

        with db.reader() as s:
            step = {a.install_id: a for a in s.scalars(select(InstallAttempt))}
            status = {k: s.get(Install, i).status for k, i in installs.items()}
            assert status == {"retried": "interrupted", "exhausted": "failed", "alive": "running",
                              "elsewhere": "running"}
            for key in ("retried", "exhausted"):
                assert step[installs[key]].status == "interrupted" and "interrupted" in step[installs[key]].output_tail
            for key in ("alive", "elsewhere"):  # a live process, another host: not ours to touch
                assert step[installs[key]].status == "running"
            assert "retrying" in s.get(Install, installs["retried"]).error
            assert "no attempts are left" in s.get(Install, installs["exhausted"]).error
            retried, exhausted = s.get(OutboxJob, jobs["retried"]), s.get(OutboxJob, jobs["exhausted"])
            assert retried.status == "pending" and retried.next_attempt_at <= now  # due now, not after the lease
            assert exhausted.status == "failed"
            assert s.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == installs["retried"])).all() == [
                "install.interrupted"]
    finally:
        db.dispose()
