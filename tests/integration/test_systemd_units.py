"""The unit files under systemd/, checked with systemd-analyze (systemd need not be PID 1).

`systemd-analyze verify` exits 0 even on values it cannot parse ("Failed to parse sec value,
ignoring"), so these tests require its OUTPUT to be empty, not just its exit status.

ExecStart= names where `pip install` puts the console script (/usr/local/bin/coord for the system unit,
~/.local/bin/coord for the user unit). verify checks that the command exists, and a test machine
need not have coord installed there, so:
- system unit: verify a temporary copy whose ExecStart= points at a stub executable and require
  silence; verify the shipped file too and require that its only complaint, if any, is that very
  missing executable;
- user unit: verify the shipped file unchanged, with HOME (hence %h) and XDG_RUNTIME_DIR pointing at
  a temporary directory that holds a stub ~/.local/bin/coord.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from coord.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_UNIT = ROOT / "systemd" / "coord-worker.service"
USER_UNIT = ROOT / "systemd" / "user" / "coord-worker.service"
ENV_EXAMPLE = ROOT / "systemd" / "coord-worker.env.example"
MAX_SYSTEM_EXPOSURE = 2.5
# The user unit cannot use User=, capabilities, ProtectProc= & co.; guard against regressions only.
MAX_USER_EXPOSURE = 5.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (unit files may repeat a key)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()].append(value.strip())
    return sections


def last(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    return unit[section][key][-1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def stub_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def output_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def exposure(proc: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert match, f"no exposure line in:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    stub_executable(home / ".local" / "bin" / "coord")
    return {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}


# --- systemd-analyze verify -------------------------------------------------------------------------


@needs_analyze
def test_system_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = SYSTEM_UNIT.read_text()
    stub = stub_executable(tmp_path / "bin" / "coord")
    copy_text, n = re.subn(r"(?m)^ExecStart=/usr/local/bin/coord ", f"ExecStart={stub} ", text)
    assert n == 1, "the system unit should have exactly one ExecStart=/usr/local/bin/coord line"
    copy = tmp_path / SYSTEM_UNIT.name  # verify needs the real unit name
    copy.write_text(copy_text)
    proc = analyze("verify", str(copy))
    assert output_lines(proc) == [], proc.stdout + proc.stderr
    assert proc.returncode == 0


@needs_analyze
def test_shipped_system_unit_only_misses_the_installed_script() -> None:
    proc = analyze("verify", str(SYSTEM_UNIT))
    allowed = re.compile(r"Command /usr/local/bin/coord is not executable")
    others = [line for line in output_lines(proc) if not allowed.search(line)]
    assert others == [], proc.stdout + proc.stderr


@needs_analyze
def test_user_unit_verifies_cleanly(tmp_path: Path) -> None:
    proc = analyze("--user", "verify", str(USER_UNIT), env=user_env(tmp_path))
    assert output_lines(proc) == [], proc.stdout + proc.stderr
    assert proc.returncode == 0


@needs_analyze
def test_verify_output_check_catches_a_bad_value(tmp_path: Path) -> None:
    """The premise of the tests above: a bad value gives exit 0 but a complaint on the output."""
    stub = stub_executable(tmp_path / "bin" / "coord")
    text = SYSTEM_UNIT.read_text().replace("/usr/local/bin/coord", str(stub))
    copy = tmp_path / SYSTEM_UNIT.name
    copy.write_text(text.replace("WatchdogSec=30", "WatchdogSec=thirty"))
    proc = analyze("verify", str(copy))
    assert any("thirty" in line for line in output_lines(proc)), proc.stdout + proc.stderr


# --- systemd-analyze security -----------------------------------------------------------------------


@needs_analyze
def test_system_unit_exposure() -> None:
    proc = analyze("security", "--offline=true", str(SYSTEM_UNIT))
    score = exposure(proc)
    print(f"system unit exposure: {score}")
    assert score <= MAX_SYSTEM_EXPOSURE, proc.stdout


@needs_analyze
def test_user_unit_exposure(tmp_path: Path) -> None:
    proc = analyze("--user", "security", "--offline=true", str(USER_UNIT), env=user_env(tmp_path))
    score = exposure(proc)
    print(f"user unit exposure: {score}")
    assert score <= MAX_USER_EXPOSURE, proc.stdout


# --- what verify does not check ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_notify_contract(path: Path) -> None:
    unit = parse_unit(path)
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert seconds(last(unit, "Service", "WatchdogSec")) == 30
    assert last(unit, "Service", "KillSignal") == "SIGTERM"
    assert last(unit, "Service", "Restart") == "on-failure"
    assert "$MAINPID" in last(unit, "Service", "ExecReload")
    # SIGKILL must not cut the daemon's own grace period short.
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert seconds(last(unit, "Service", "TimeoutStopSec")) > grace
    # Installs run node (npm): its JIT needs W+X memory, inherited MDWE would abort it.
    assert last(unit, "Service", "MemoryDenyWriteExecute") == "no"
    # bubblewrap needs user and mount namespaces and mount syscalls.
    namespaces = last(unit, "Service", "RestrictNamespaces").split()
    assert {"user", "mnt"} <= set(namespaces)
    assert "cgroup" not in namespaces
    assert any("@mount" in v.split() for v in unit["Service"]["SystemCallFilter"])


def test_system_unit_identity_and_state() -> None:
    unit = parse_unit(SYSTEM_UNIT)
    svc = unit["Service"]
    assert last(unit, "Service", "User") == "coord"
    assert last(unit, "Service", "StateDirectory") == "coord"
    assert "COORD_STATE_DIR=%S/coord" in svc["Environment"]
    assert "-/etc/coord/coord.env" in svc["EnvironmentFile"]
    assert last(unit, "Service", "CapabilityBoundingSet") == ""
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


def test_user_unit_avoids_system_only_options() -> None:
    unit = parse_unit(USER_UNIT)
    svc = unit["Service"]
    # These fail (status 218) or are unsupported in a per-user manager.
    for key in (
        "User",
        "Group",
        "DynamicUser",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "ProtectProc",
        "ProcSubset",
        "ProtectControlGroups",
        "RemoveIPC",
    ):
        assert key not in svc, key
    # File-system sandboxing in a user manager only works inside a user namespace.
    assert last(unit, "Service", "PrivateUsers") == "yes"
    assert last(unit, "Install", "WantedBy") == "default.target"
    assert last(unit, "Service", "ExecStart").startswith("%h/")
    assert "network-online.target" not in " ".join(v for values in unit["Unit"].values() for v in values)


def test_env_example_names_only_known_settings() -> None:
    known = {"COORD_" + name.upper() for name in Settings.model_fields} | {"COORD_CONFIG"}
    names = re.findall(r"(?m)^#?(COORD_[A-Z_]+)=", ENV_EXAMPLE.read_text())
    assert names
    assert set(names) <= known, set(names) - known
