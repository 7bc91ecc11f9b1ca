"""Shared pieces of the installers: options, the prefix layout, one step, and finding what a package
installed as executables.

Each installer module (pip, npm, git) is a generator of `Step`s: it yields one argv at a time, the
driver (`coord.installer.install`) runs it and sends back the RunResult, and the generator may look at
the files the previous step produced before choosing the next (git decides how to build only after the
checkout). Its return value maps each executable it found to its path inside the prefix.
"""

from __future__ import annotations

import configparser
import json
import sys
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coord.installer.plan import BIN_NAME, InstallPlan, normalize_pypi
from coord.installer.runner import DEFAULT_LIMITS, Limits, RunResult


class StepError(Exception):
    """An installer cannot go on (nothing to build, a declared bin missing); the install fails with
    this message, without a retry: running it again would meet the same files."""


@dataclass(frozen=True)
class InstallOptions:
    """The settings an install needs; the wiring fills them from coord's settings.

    allowed_sources: fnmatch patterns (see plan.source_allowed); empty allows nothing.
    timeout: wall-clock seconds for each step; verify_timeout for the verify command.
    python / npm / git: the programs used to build prefixes (python only ever creates a venv).
    github_base_url: where `github:owner/repo` is cloned from; a mirror or a file:// folder offline.
    env_extra: PIP_* / npm_config_* variables for every step (a proxy index, an offline cache).
    """

    allowed_sources: tuple[str, ...] = ()
    timeout: float = 600.0
    verify_timeout: float = 60.0
    sandbox: str = "auto"
    python: str = sys.executable
    npm: str = "npm"
    git: str = "git"
    github_base_url: str = "https://github.com"
    env_extra: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class Layout:
    """Where a plan's files go: everything under tools_dir, one prefix per name and version."""

    tools_dir: Path
    plan: InstallPlan

    @property
    def prefix(self) -> Path:
        return self.tools_dir / "prefixes" / self.plan.prefix_name

    @property
    def bin_dir(self) -> Path:
        return self.tools_dir / "bin"

    @property
    def home(self) -> Path:
        # Caches and dotfiles a package manager writes land inside the prefix, removed with it.
        return self.prefix / ".home"

    @property
    def marker(self) -> Path:
        return self.prefix / ".coord-install.json"


@dataclass(frozen=True)
class Step:
    label: str
    argv: list[str]
    cwd: Path
    network: bool
    writable: tuple[Path, ...]
    readable: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


Steps = Generator[Step, RunResult, dict[str, Path]]


def local_paths(locations: tuple[str, ...] | list[str]) -> tuple[Path, ...]:
    """The local folders/files among find-links entries, which the sandbox must be able to read."""
    out = []
    for loc in locations:
        if loc.startswith("file://"):
            out.append(Path(loc[len("file://"):]))
        elif "://" not in loc:
            out.append(Path(loc))
    return tuple(out)


def pip_index_args(plan: InstallPlan) -> list[str]:
    # `--opt=value` keeps a value from ever being taken as a separate option.
    args = ["--no-index"] if plan.offline else []
    if plan.index_url:
        args.append(f"--index-url={plan.index_url}")
    args += [f"--find-links={link}" for link in plan.find_links]
    return args


def pip_base(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--no-cache-dir"]


def console_scripts(venv: Path, project: str) -> dict[str, Path]:
    """Console scripts the installed distribution `project` declares, mapped to venv/bin/<name>."""
    want = normalize_pypi(project)
    for dist in venv.glob("lib/python*/site-packages/*.dist-info"):
        if normalize_pypi(dist.name.removesuffix(".dist-info").rsplit("-", 1)[0]) != want:
            continue
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # script names are case-sensitive
        entry_points = dist / "entry_points.txt"
        if entry_points.exists():
            parser.read(entry_points, encoding="utf-8")
        names = parser.options("console_scripts") if parser.has_section("console_scripts") else []
        return {n: venv / "bin" / n for n in names if BIN_NAME.match(n)}
    return {}


def package_json_bins(package_dir: Path, package: str) -> dict[str, Path]:
    """The `bin` field of package_dir/package.json, as name -> file inside package_dir."""
    try:
        meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    raw = meta.get("bin") if isinstance(meta, dict) else None
    if isinstance(raw, str):
        raw = {package.rsplit("/", 1)[-1]: raw}
    if not isinstance(raw, dict):
        return {}
    root = package_dir.resolve()
    out = {}
    for name, rel in raw.items():
        target = (package_dir / str(rel)).resolve()
        # A bin path is the package author's input: it must stay inside the package.
        if isinstance(name, str) and BIN_NAME.match(name) and target.is_relative_to(root):
            out[name] = target
    return out
