"""The sandboxed runner: timeouts kill whole process groups, the environment is scrubbed, output is
bounded, and under bubblewrap writes and network stay inside what the caller allowed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from coord.errors import InvalidInput, Unavailable
from coord.installer import runner
from coord.installer.runner import probe_reason, probe_sandbox, run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "installer"
PY = sys.executable
HAVE_BWRAP = probe_sandbox() == "bwrap"
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason=f"bubblewrap sandbox unavailable: {probe_reason()}")


def _alive(pid: int) -> bool:
    """Running (zombies count as dead: in a container PID 1 may never reap them)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


def _pids_with(token: str) -> list[int]:
    """Live processes whose command line mentions `token` (works across PID namespaces)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _py(code: str, tmp: Path, **kw) -> runner.RunResult:
    kw.setdefault("writable", [tmp])
    kw.setdefault("timeout", 20)
    kw.setdefault("network", False)
    kw.setdefault("sandbox", "none")
    return run([PY, "-c", code], cwd=tmp, **kw)


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_timeout_kills_the_whole_group_and_leaves_no_process(tmp_path: Path, sandbox: str) -> None:
    pidfile = tmp_path / "pids"
    started = time.monotonic()
    result = run([PY, str(FIXTURES / "hang_with_grandchild.py"), str(pidfile)], cwd=tmp_path,
                 writable=[tmp_path], readable=[FIXTURES], timeout=1.5, network=False, sandbox=sandbox,
                 kill_grace=0.5)
    elapsed = time.monotonic() - started
    assert result.timed_out and not result.ok
    assert result.sandbox_used == sandbox
    assert "hanging" in result.output_tail and "timed out after 1.5s" in result.output_tail
    assert elapsed < 1.5 + 0.5 + 3, elapsed  # SIGTERM ignored -> SIGKILL after the grace, promptly
    assert pidfile.exists(), result.output_tail
    if sandbox == "none":  # inside bwrap the pids are in another namespace; the /proc scan covers it
        child, grandchild = map(int, pidfile.read_text().split())
        assert not _alive(child) and not _alive(grandchild)
    assert _pids_with(str(pidfile)) == []


def test_group_is_cleaned_up_after_a_normal_exit(tmp_path: Path) -> None:
    # The leader exits 0 but leaves a grandchild behind holding the output pipe.
    token = str(tmp_path / "leftover")
    code = ("import os,sys,time\nif os.fork()==0:\n    time.sleep(600)\n    os._exit(0)\nprint('done')\n")
    started = time.monotonic()
    result = run([PY, "-c", code, token], cwd=tmp_path, writable=[tmp_path], timeout=20, network=False,
                 sandbox="none")
    assert result.exit_code == 0 and not result.timed_out
    assert "done" in result.output_tail
    assert time.monotonic() - started < 10
    assert _pids_with(token) == []


def test_environment_is_an_allowlist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORD_SECRET_TOKEN", "s3cret")
    monkeypatch.setenv("PIP_INDEX_URL", "https://evil.example/simple")
    monkeypatch.setenv("https_proxy", "http://proxy.local:3128")
    result = _py("import os,json; print(json.dumps(dict(os.environ)))", tmp_path,
                 env_extra={"PIP_NO_INDEX": "1"}, home=tmp_path / "home")
    env = __import__("json").loads(result.output_tail.strip().splitlines()[-1])
    assert "COORD_SECRET_TOKEN" not in env
    assert "PIP_INDEX_URL" not in env  # PIP_* only when the caller passes it explicitly
    assert env["PIP_NO_INDEX"] == "1"
    assert env["https_proxy"] == "http://proxy.local:3128"
    assert env["HOME"] == str((tmp_path / "home").resolve())
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "https_proxy", "PIP_NO_INDEX", "LC_CTYPE"}


def test_env_extra_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="LD_PRELOAD"):
        _py("pass", tmp_path, env_extra={"LD_PRELOAD": "/x.so"})


def test_output_is_kept_as_a_bounded_tail(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(200000): sys.stdout.write(f'line {i}\\n')\nsys.stderr.write('END')"
    result = _py(code, tmp_path)
    assert result.exit_code == 0 and result.truncated
    assert len(result.output_tail.encode()) <= runner.TAIL_BYTES
    assert result.output_tail.endswith("END")  # stderr merged, last bytes kept


def test_no_shell_and_missing_program(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    result = run(["echo", f"x; touch {sentinel}"], cwd=tmp_path, writable=[tmp_path], timeout=10,
                 network=False, sandbox="none")
    assert result.exit_code == 0 and f"x; touch {sentinel}" in result.output_tail
    assert not sentinel.exists()
    missing = run(["coord-no-such-program"], cwd=tmp_path, writable=[], timeout=5, network=False,
                  sandbox="none")
    assert missing.exit_code == 127 and "not found" in missing.output_tail
    with pytest.raises(InvalidInput):
        run("echo hi", cwd=tmp_path, writable=[], timeout=5, network=False, sandbox="none")  # type: ignore[arg-type]


def test_resource_limits_apply(tmp_path: Path) -> None:
    limits = runner.Limits(cpu_seconds=5, file_size_bytes=1024, open_files=64)
    code = ("import resource as r; print(r.getrlimit(r.RLIMIT_CPU)[0], r.getrlimit(r.RLIMIT_FSIZE)[0], "
            "r.getrlimit(r.RLIMIT_NOFILE)[0], flush=True)\nwith open('big', 'wb') as f: f.write(b'x' * 4096)")
    result = _py(code, tmp_path, limits=limits)
    assert result.output_tail.split()[:3] == ["5", "1024", "64"]
    assert result.exit_code != 0  # writing past RLIMIT_FSIZE fails (SIGXFSZ / EFBIG)


def test_bwrap_requested_but_unavailable_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "_probe", lambda: ("none", "bwrap is not installed"))
    with pytest.raises(Unavailable, match="bwrap is not installed"):
        _py("pass", tmp_path, sandbox="bwrap")
    assert _py("print('ok')", tmp_path, sandbox="auto").sandbox_used == "none"
    with pytest.raises(InvalidInput):
        _py("pass", tmp_path, sandbox="docker")


class _Listener:
    """A TCP listener on 127.0.0.1 that accepts and closes, for the network test."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


CONNECT = ("import socket,sys\ntry:\n"
           "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
           "    print('connected')\nexcept OSError as e:\n    print('refused', e)\n")


@needs_bwrap
def test_bwrap_confines_writes_and_network(tmp_path: Path) -> None:
    inside, outside = tmp_path / "prefix", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "readme").write_text("visible")
    code = ("import sys\nopen(sys.argv[1] + '/made', 'w').write('ok')\n"
            "print(open(sys.argv[2] + '/readme').read())\n"
            "try:\n    open(sys.argv[2] + '/escape', 'w').write('x')\n    print('WROTE-OUTSIDE')\n"
            "except OSError as e:\n    print('blocked', e.errno)\n")
    result = run([PY, "-c", code, str(inside), str(outside)], cwd=inside, writable=[inside],
                 readable=[outside], timeout=20, network=False, sandbox="bwrap")
    assert result.sandbox_used == "bwrap" and result.exit_code == 0, result.output_tail
    assert (inside / "made").read_text() == "ok"
    assert "visible" in result.output_tail and "blocked" in result.output_tail
    assert not (outside / "escape").exists()

    listener = _Listener()
    try:
        outside_run = run([PY, "-c", CONNECT, str(listener.port)], cwd=inside, writable=[inside], timeout=20,
                          network=False, sandbox="none")
        assert "connected" in outside_run.output_tail
        no_net = run([PY, "-c", CONNECT, str(listener.port)], cwd=inside, writable=[inside], timeout=20,
                     network=False, sandbox="bwrap")
        assert "refused" in no_net.output_tail, no_net.output_tail
        shared = run([PY, "-c", CONNECT, str(listener.port)], cwd=inside, writable=[inside], timeout=20,
                     network=True, sandbox="bwrap")
        assert "connected" in shared.output_tail, shared.output_tail
    finally:
        listener.sock.close()


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_bwrap_confines_an_unprivileged_user(request: pytest.FixtureRequest) -> None:
    # The same bwrap command line coord uses, run as `nobody`: user namespaces must work for them too.
    # pytest's tmp_path sits under a root-only folder, so this test makes its own world-readable one.
    base = Path(tempfile.mkdtemp(prefix="coord-bwrap-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    inside, outside = base / "prefix", base / "outside"
    inside.mkdir()
    outside.mkdir()
    for p in (base, inside, outside):
        p.chmod(0o777)
    touch = shutil.which("touch") or "/usr/bin/touch"
    env = runner.scrubbed_env(inside)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    ok = subprocess.run([*as_nobody, *runner.bwrap_argv([touch, str(inside / "made")], cwd=inside,
                                                        writable=[inside], network=False, env=env)],
                        capture_output=True, text=True, timeout=20, check=False)
    if ok.returncode != 0 and "namespace" in ok.stderr.lower():
        pytest.skip(f"unprivileged user namespaces are disabled here: {ok.stderr.strip()}")
    assert ok.returncode == 0, ok.stderr
    assert (inside / "made").exists()
    blocked = subprocess.run([*as_nobody, *runner.bwrap_argv([touch, str(outside / "escape")], cwd=inside,
                                                             writable=[inside], readable=[outside],
                                                             network=False, env=env)],
                             capture_output=True, text=True, timeout=20, check=False)
    assert blocked.returncode != 0 and not (outside / "escape").exists()
