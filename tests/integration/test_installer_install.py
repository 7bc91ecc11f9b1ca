"""Real installs, offline: pip into a per-tool venv from a local wheel folder, npm from a local tarball,
git from a local mirror; links in tools/bin; verify; rollback leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from coord.errors import Conflict
from coord.installer import InstallOptions, add_server, install, rollback, rollback_config, run
from coord.installer.runner import RunResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "installer"
SOURCES = ("pypi:coord-fixture-*", "npm:@coord-fixtures/*", "github:coord-fixtures/*")
needs_npm = pytest.mark.skipif(not shutil.which("npm"), reason="npm is not installed")
needs_git = pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")


def _clean_env(tmp: Path) -> dict[str, str]:
    # The machine's pip/npm configuration (extra indexes, find-links) must not leak into the fixtures.
    return {"PATH": os.environ["PATH"], "HOME": str(tmp), "PIP_CONFIG_FILE": os.devnull,
            "PYTHONDONTWRITEBYTECODE": "1", "npm_config_cache": str(tmp / "npm-cache"),
            "npm_config_offline": "true", "npm_config_update_notifier": "false"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the fixture's wheel, built by the real pip from the fixture project."""
    work = tmp_path_factory.mktemp("wheelbuild")
    src = shutil.copytree(FIXTURES / "pyhello", work / "pyhello")  # build outside the repo tree
    out = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(src)], check=True, env=_clean_env(work), timeout=120)
    assert [p.name for p in out.iterdir()] == ["coord_fixture_hello-1.0.0-py3-none-any.whl"]
    return out


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("npmpack")
    src = shutil.copytree(FIXTURES / "npm-hello", work / "npm-hello")
    out = work / "dist"
    out.mkdir()
    subprocess.run(["npm", "pack", "--offline", "--no-audit", "--no-fund", "--pack-destination", str(out)],
                   cwd=src, check=True, env=_clean_env(work), timeout=120, capture_output=True)
    (tgz,) = out.glob("*.tgz")
    return tgz


def _options(**over) -> InstallOptions:
    base = InstallOptions(allowed_sources=SOURCES, timeout=120, env_extra={"PIP_CONFIG_FILE": os.devnull,
                                                                           "npm_config_offline": "true"})
    return replace(base, **over)


def _pip_plan(wheelhouse: Path, **over) -> dict:
    return {"kind": "tool", "name": "hello-coord", "installer": "pip", "package": "coord-fixture-hello",
            "version": "1.0.0", "bins": ["hello-coord"], "verify": ["hello-coord", "--version"],
            "find_links": [str(wheelhouse)], "offline": True, **over}


def _npm_plan(tgz: Path, **over) -> dict:
    return {"kind": "mcp", "name": "hello-npm", "installer": "npm", "package": "@coord-fixtures/hello",
            "version": "1.0.0", "tarball": str(tgz), "offline": True, "verify": ["hello-npm", "ping"], **over}


def test_pip_install_into_its_own_venv_and_verify(tmp_path: Path, wheelhouse: Path) -> None:
    tools = tmp_path / "tools"
    out = install(_pip_plan(wheelhouse), tools, _options())
    assert out.status == "installed", [a.output_tail for a in out.attempts]
    assert [a.label for a in out.attempts] == ["venv", "install"]
    install_argv = out.attempts[1].argv
    assert "--only-binary=:all:" in install_argv and "--no-index" in install_argv
    assert install_argv[0] == str(out.prefix / "bin" / "python")  # the tool's venv, never ours
    assert (out.prefix / "pyvenv.cfg").exists() and out.prefix.parent == tools / "prefixes"
    link = tools / "bin" / "hello-coord"
    assert out.bins == {"hello-coord": link} and link.is_symlink()
    assert out.verify and out.verify.ok
    assert "hello from coord fixture 1.0.0 --version" in out.verify.output_tail
    ran = subprocess.run([str(link), "hi"], capture_output=True, text=True, check=True, env={})
    assert ran.stdout.strip() == "hello from coord fixture 1.0.0 hi"
    record = out.to_dict()
    assert record["attempts"][1]["exit_code"] == 0 and record["plan"]["source"] == "pypi:coord-fixture-hello"

    again = install(_pip_plan(wheelhouse), tools, _options())  # a retried job: nothing rebuilt
    assert again.status == "installed" and again.already_installed and again.attempts == []


@needs_npm
def test_npm_install_from_tarball_without_scripts(tmp_path: Path, tarball: Path) -> None:
    tools = tmp_path / "tools"
    out = install(_npm_plan(tarball), tools, _options())
    assert out.status == "installed", [a.output_tail for a in out.attempts]
    argv = out.attempts[0].argv
    assert "--ignore-scripts" in argv and "-g" not in argv and f"--prefix={out.prefix}" in argv
    assert set(out.bins) == {"hello-npm"}  # discovered from package.json
    assert out.verify and "hello from coord npm fixture 1.0.0 ping" in out.verify.output_tail
    ran = subprocess.run([str(tools / "bin" / "hello-npm")], capture_output=True, text=True, check=True)
    assert "hello from coord npm fixture" in ran.stdout
    assert not list(out.prefix.rglob("postinstall-ran"))  # the package's postinstall never ran


def _mirror(tmp: Path) -> tuple[Path, str]:
    """A local 'github' holding coord-fixtures/pyhello with two commits; returns (base, first commit)."""
    base = tmp / "mirror"
    repo = shutil.copytree(FIXTURES / "pyhello", base / "coord-fixtures" / "pyhello")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    env = {**_clean_env(tmp), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run([*git, "init", "--quiet"], cwd=repo, check=True, env=env)
    subprocess.run([*git, "add", "."], cwd=repo, check=True, env=env)
    subprocess.run([*git, "commit", "--quiet", "-m", "one"], cwd=repo, check=True, env=env)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, env=env, capture_output=True,
                           text=True).stdout.strip()
    module = repo / "coord_fixture_hello" / "__init__.py"
    module.write_text(module.read_text().replace('"1.0.0"', '"9.9.9-unpinned"'))
    subprocess.run([*git, "commit", "--quiet", "-am", "two"], cwd=repo, check=True, env=env)
    return base, first


@needs_git
def test_git_install_checks_out_the_pinned_commit_and_builds_what_it_declares(tmp_path: Path) -> None:
    base, first = _mirror(tmp_path)
    plan = {"kind": "tool", "name": "hello-git", "installer": "git", "package": "coord-fixture-hello",
            "version": "1.0.0", "source": "github:coord-fixtures/pyhello", "commit": first, "offline": True,
            "verify": ["hello-coord"]}
    out = install(plan, tmp_path / "tools", _options(github_base_url=f"file://{base}"))
    assert out.status == "installed", [(a.label, a.output_tail) for a in out.attempts]
    assert [a.label for a in out.attempts] == ["clone", "checkout", "venv", "build"]
    assert out.verify and "hello from coord fixture 1.0.0" in out.verify.output_tail  # not the later commit


@needs_git
def test_git_repo_without_build_files_is_refused(tmp_path: Path) -> None:
    base, _first = _mirror(tmp_path)
    repo = base / "coord-fixtures" / "pyhello"
    env = {**_clean_env(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e.invalid", "rm", "-q", "pyproject.toml"],
                   cwd=repo, check=True, env=env)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e.invalid", "commit", "-qm", "no build"],
                   cwd=repo, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          env=env).stdout.strip()
    plan = {"kind": "tool", "name": "bare", "installer": "git", "package": "bare", "version": "0",
            "source": "github:coord-fixtures/pyhello", "commit": head}
    out = install(plan, tmp_path / "tools", _options(github_base_url=f"file://{base}"))
    assert out.status == "failed" and "only builds what a repository declares" in (out.error or "")
    assert not out.retryable and not out.prefix.exists()


@needs_npm  # npm because it is quick; uninstall does not depend on the installer
def test_rollback_leaves_no_prefix_and_the_config_byte_identical(tmp_path: Path, tarball: Path) -> None:
    tools, config = tmp_path / "tools", tmp_path / "project" / ".mcp.json"
    config.parent.mkdir()
    original = (b'{\n    "mcpServers": {\n        "other": {"command": "other-server", "args": []}\n    },\n'
                b'    "unrelated": {"keep": [1, 2.50, "\\u00e9"]}\n}')
    config.write_bytes(original)
    out = install(_npm_plan(tarball), tools, _options())
    assert out.status == "installed"
    change = add_server(config, "hello", {"command": str(out.bins["hello-npm"]), "args": ["--stdio"],
                                          "env": {"API_KEY": "${API_KEY}"}}, secret_vars=["API_KEY"])
    assert change.action == "added" and b'"hello"' in config.read_bytes()

    rollback_config(change)
    rollback(out)
    assert config.read_bytes() == original
    assert not out.prefix.exists()
    assert not (tools / "bin" / "hello-npm").is_symlink()


@needs_npm
def test_failed_verify_rolls_back_and_a_timeout_is_retryable(tmp_path: Path, tarball: Path) -> None:
    def failing_verify(argv, **kw) -> RunResult:
        result = run(argv, **kw)
        if kw.get("label") == "verify":
            result.exit_code = 1
        return result

    tools = tmp_path / "tools"
    out = install(_npm_plan(tarball), tools, _options(), runner=failing_verify)
    assert out.status == "failed" and "verify" in (out.error or "") and out.verify is not None
    assert not out.prefix.exists() and not (tools / "bin" / "hello-npm").is_symlink()

    # verify must run what this install provides, never something else found on PATH
    out = install(_npm_plan(tarball, verify=["ls"]), tools, _options())
    assert out.status == "failed" and "does not provide" in (out.error or "") and out.verify is None
    assert not out.prefix.exists()

    def hanging(argv, **kw) -> RunResult:
        return RunResult(argv, -9, 1.0, "...", True, "none", label=kw.get("label", ""))

    out = install(_npm_plan(tarball), tools, _options(), runner=hanging)
    assert out.status == "timed_out" and out.retryable and not out.prefix.exists()


def test_bin_clash_with_something_else_runs_nothing(tmp_path: Path, wheelhouse: Path) -> None:
    tools = tmp_path / "tools"
    (tools / "bin").mkdir(parents=True)
    (tools / "bin" / "hello-coord").write_text("#!/bin/sh\n")  # not ours

    def never(*a, **k):
        raise AssertionError("nothing may run")

    with pytest.raises(Conflict, match="not a coord link"):
        install(_pip_plan(wheelhouse), tools, _options(), runner=never)
