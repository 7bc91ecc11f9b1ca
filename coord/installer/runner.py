"""Run one argv, sandboxed and bounded (invariant 4): the only place coord starts an install process.

What every run gets, whatever the caller asks:
- no shell: argv goes to exec as a list, so nothing in a package name or argument is ever parsed;
- its own session and process group, killed whole on timeout (SIGTERM, a grace, then SIGKILL), and
  killed whole after a normal exit too, so an install step never leaves a daemon behind;
- a scrubbed environment built from an allowlist (`scrubbed_env`), HOME pointing into coord's prefix;
- resource limits (`Limits`) set in the child before exec;
- output merged and kept as a bounded tail, so a chatty build cannot fill memory;
- with bubblewrap: a read-only view of the system, writable binds only for the given paths, private
  /tmp, and no network namespace access unless `network=True`.

Without bubblewrap ("none") a grandchild that calls setsid() itself leaves our process group and
escapes the group kill; bubblewrap's PID namespace closes that gap, which is why "auto" prefers it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from coord.errors import InvalidInput, Unavailable

SandboxMode = Literal["auto", "bwrap", "none"]
SANDBOX_MODES = ("auto", "bwrap", "none")

TAIL_BYTES = 8 * 1024
KILL_GRACE_SECONDS = 2.0
POLL_SECONDS = 0.05
READ_CHUNK = 64 * 1024

# Used when the caller's environment has no PATH (systemd gives services a minimal one).
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Copied from coord's own environment when set: locale, time zone and the proxies an install must use.
INHERITED_VARS = (
    "LANG", "LC_ALL", "TZ",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
)
# Accepted only from env_extra, i.e. chosen by the caller, never inherited: coord's own PIP_* or
# npm_config_* settings must not silently redirect an install to another index.
EXTRA_PREFIXES = ("PIP_", "npm_config_", "NPM_CONFIG_")
EXTRA_NAMES = frozenset({"GIT_TERMINAL_PROMPT", "GIT_CONFIG_NOSYSTEM", "PYTHONDONTWRITEBYTECODE"})


@dataclass(frozen=True)
class Limits:
    """Per-process resource limits applied in the child before exec (inherited by its children).

    cpu_seconds: CPU time of each process (not wall time; `timeout` bounds wall time).
    file_size_bytes: largest single file a process may write (a big wheel or tarball fits).
    open_files: descriptors per process; npm opens many files at once, so not the usual 1024.
    Address-space limits are left out on purpose: V8 and the JVM reserve large virtual ranges up front
    and fail under RLIMIT_AS long before they use real memory.
    """

    cpu_seconds: int = 900
    file_size_bytes: int = 2 * 1024**3
    open_files: int = 4096

    def apply(self) -> None:
        for which, value in (
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_FSIZE, self.file_size_bytes),
            (resource.RLIMIT_NOFILE, self.open_files),
        ):
            _soft, hard = resource.getrlimit(which)
            # An unprivileged process cannot raise its hard limit: stay under the one it has.
            capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (capped, capped))


DEFAULT_LIMITS = Limits()


@dataclass
class RunResult:
    """What one run did: the audit record of an install attempt (invariant 7)."""

    argv: list[str]
    exit_code: int
    duration: float
    output_tail: str
    timed_out: bool
    sandbox_used: Literal["bwrap", "none"]
    truncated: bool = False
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------- sandbox


@functools.cache
def _probe() -> tuple[str, str]:
    """("bwrap" | "none", reason); cached because the answer does not change while we run."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return "none", "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    true = shutil.which("true") or "/bin/true"
    argv = [bwrap, *_bwrap_flags(cwd=Path("/"), writable=[], readable=[], network=False, env={}), "--", true]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "none", f"bwrap could not start: {exc}"
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        return "none", f"bwrap is installed but cannot create a sandbox here: {err or proc.returncode}"
    return "bwrap", f"bwrap works ({bwrap})"


def probe_sandbox() -> str:
    """"bwrap" when bubblewrap actually runs a command here, else "none"."""
    return _probe()[0]


def probe_reason() -> str:
    return _probe()[1]


def _bwrap_flags(
    *, cwd: Path, writable: Sequence[Path], readable: Sequence[Path], network: bool, env: Mapping[str, str],
    clearenv: bool = True,
) -> list[str]:
    # Order matters: later mounts land on top of earlier ones, so a writable path under /tmp is bound
    # after the private /tmp hides the host's, and writable binds come after read-only ones.
    flags = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in readable:
        flags += ["--ro-bind", str(path), str(path)]
    for path in writable:
        flags += ["--bind", str(path), str(path)]
    flags.append("--unshare-all")
    if network:
        flags.append("--share-net")
    # --die-with-parent ties the sandbox to the *thread* that started it; run() blocks that thread
    # until the end, so this only fires when coord itself dies.
    flags += ["--die-with-parent", "--new-session", *(["--clearenv"] if clearenv else [])]
    for key, value in env.items():
        flags += ["--setenv", key, value]
    flags += ["--chdir", str(cwd)]
    return flags


def resolve_sandbox(sandbox: str) -> Literal["bwrap", "none"]:
    if sandbox not in SANDBOX_MODES:
        raise InvalidInput(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {sandbox!r}")
    if sandbox == "none":
        return "none"
    found, reason = _probe()
    if sandbox == "bwrap" and found != "bwrap":
        raise Unavailable(
            f"sandbox='bwrap' was asked for but {reason}; install bubblewrap or set the sandbox "
            "setting to 'auto' (falls back to no sandbox) or 'none'"
        )
    return "bwrap" if found == "bwrap" else "none"


# ------------------------------------------------------------------------------------ environment


def scrubbed_env(home: Path, env_extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a child sees: an allowlist, never a copy of ours minus a denylist."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": str(home)}
    for key in INHERITED_VARS:
        if key in os.environ:
            env[key] = os.environ[key]
    env.setdefault("LANG", "C.UTF-8")
    for key, value in (env_extra or {}).items():
        if not (key in EXTRA_NAMES or key.startswith(EXTRA_PREFIXES) or key in ("PATH", *INHERITED_VARS)):
            raise InvalidInput(
                f"environment variable {key!r} is not allowed for install commands; allowed: "
                f"{', '.join(sorted(EXTRA_NAMES))}, names starting with {', '.join(EXTRA_PREFIXES)}, "
                f"PATH and {', '.join(INHERITED_VARS)}"
            )
        if not isinstance(value, str) or "\0" in value or "\0" in key:
            raise InvalidInput(f"environment variable {key!r} must be a string without NUL bytes")
        env[key] = value
    return env


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes) or not argv:
        raise InvalidInput("argv must be a non-empty list of strings (coord never runs a shell string)")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidInput(f"argv items must be strings without NUL bytes, got {arg!r}")
    return list(argv)


# ------------------------------------------------------------------------------------------ output


class _TailReader(threading.Thread):
    """Drains the child's merged output, keeping only the last `limit` bytes."""

    def __init__(self, stream: Any, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.limit = limit
        self.buf = bytearray()
        self.total = 0

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.stream.read1(READ_CHUNK):
                self.total += len(chunk)
                self.buf += chunk
                if len(self.buf) > self.limit:
                    del self.buf[: len(self.buf) - self.limit]


# --------------------------------------------------------------------------------------------- run


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(pid: int) -> bool:
    """True when the leader has exited; WNOWAIT leaves it a zombie, so its pid (and our process group
    id) cannot be reused by an unrelated process before we kill the rest of the group."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _wait_until(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if _exited(pid):
            return True
        time.sleep(POLL_SECONDS)
    return _exited(pid)


def run(
    argv: list[str],
    *,
    cwd: Path,
    writable: list[Path],
    timeout: float,
    network: bool,
    sandbox: str = "auto",
    env_extra: dict[str, str] | None = None,
    readable: list[Path] | None = None,
    home: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    tail_bytes: int = TAIL_BYTES,
    kill_grace: float = KILL_GRACE_SECONDS,
    label: str = "",
) -> RunResult:
    """Run `argv` (no shell) and return what happened; never raises for the command's own failure.

    writable: the only paths the command may write (under bwrap; created if missing).
    readable: extra paths to expose read-only that the private /tmp would otherwise hide (local
    wheel folders, tarballs). home: HOME for the child, default `cwd`.
    Raises InvalidInput for a malformed argv or env, Unavailable for sandbox="bwrap" without bwrap.
    """
    argv = _check_argv(argv)
    if timeout <= 0:
        raise InvalidInput(f"timeout must be positive, got {timeout}")
    used = resolve_sandbox(sandbox)
    cwd = Path(cwd).resolve()
    writable = [Path(p).resolve() for p in writable]
    readable = [Path(p).resolve() for p in readable or []]
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
    env = scrubbed_env(Path(home).resolve() if home else cwd, env_extra)

    # Resolve the program with the child's PATH up front: a missing tool is reported as exit 127
    # (the shell's convention) with a sentence, not as a traceback.
    program = shutil.which(argv[0], path=env["PATH"]) if os.sep not in argv[0] else argv[0]
    if not program or not os.access(program, os.X_OK):
        return RunResult(argv, 127, 0.0, f"coord: command not found: {argv[0]}", False, used, label=label)
    full = [program, *argv[1:]]
    if used == "bwrap":
        bwrap = shutil.which("bwrap") or "bwrap"
        full = [bwrap, *_bwrap_flags(cwd=cwd, writable=writable, readable=readable, network=network,
                                     env=env), "--", *full]

    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            full, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limits.apply, close_fds=True,
        )
    except OSError as exc:
        return RunResult(argv, 126, time.monotonic() - started, f"coord: cannot start {argv[0]}: {exc}",
                         False, used, label=label)
    reader = _TailReader(proc.stdout, tail_bytes)
    reader.start()
    timed_out = False
    try:
        if not _wait_until(proc.pid, started + timeout):
            timed_out = True
            _killpg(proc.pid, signal.SIGTERM)
            _wait_until(proc.pid, time.monotonic() + kill_grace)
    finally:
        # Always, even after a clean exit: the group may still hold a grandchild (a forked server, a
        # stuck helper) that would keep our output pipe open and outlive the install.
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=2)
        # A reader still blocked means a process that left our group (setsid) holds the pipe; closing
        # the stream under that read would block on its lock, so leave the daemon thread be.
        if proc.stdout and not reader.is_alive():
            proc.stdout.close()
    duration = time.monotonic() - started
    tail = bytes(reader.buf).decode("utf-8", errors="replace")
    if reader.is_alive():
        tail += "\ncoord: a process outside the command's process group still holds its output"
    if timed_out:
        tail += f"\ncoord: timed out after {timeout:g}s; process group killed"
    return RunResult(
        argv=argv,
        exit_code=proc.returncode,
        duration=round(duration, 3),
        output_tail=tail,
        timed_out=timed_out,
        sandbox_used=used,
        truncated=reader.total > tail_bytes,
        label=label,
    )


def bwrap_argv(
    argv: list[str], *, cwd: Path, writable: list[Path], network: bool,
    readable: list[Path] | None = None, env: Mapping[str, str] | None = None, clearenv: bool = True,
) -> list[str]:
    """The full bwrap command line `run` would use (for audit displays and tests). clearenv=False: the
    sandbox keeps the environment its starter gives it, for values that must not show in argv (secrets)."""
    bwrap = shutil.which("bwrap") or "bwrap"
    return [bwrap, *_bwrap_flags(cwd=cwd, writable=writable, readable=readable or [], network=network,
                                 env=env or {}, clearenv=clearenv), "--", *_check_argv(argv)]
