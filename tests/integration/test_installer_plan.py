"""Install plans: hostile names are refused before anything runs; the source allowlist names its rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from coord.errors import InvalidInput, PolicyDenied
from coord.installer import InstallOptions, install, parse_plan, source_allowed
from coord.installer.plan import InstallPlan, canonical_source

ALLOW_ALL = ("pypi:*", "npm:*", "github:*")


def _plan(**over) -> dict:
    return {"kind": "tool", "name": "hello", "installer": "pip", "package": "hello-tool", "version": "1.0.0",
            **over}


class _Spy:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        raise AssertionError("the runner must not be called")


@pytest.mark.parametrize(("installer", "package", "reason"), [
    ("pip", "evil;touch SENTINEL", "shell metacharacters"),
    ("pip", "x$(touch SENTINEL)", "shell metacharacters"),
    ("npm", "`touch SENTINEL`", "shell metacharacters"),
    ("pip", "../../etc/passwd", "'..'"),
    ("pip", "a/b", "path separator"),
    ("npm", "@scope/a/b", "path separator"),
    ("pip", "--index-url=https://evil.example", "starts with '-'"),
    ("npm", "-g", "starts with '-'"),
    ("pip", "two words", "whitespace"),
    ("pip", "line\nbreak", "whitespace"),
])
def test_hostile_package_names_are_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installer: str, package: str, reason: str
) -> None:
    monkeypatch.chdir(tmp_path)  # a shell would create SENTINEL here
    spy = _Spy()
    with pytest.raises(InvalidInput, match=reason):
        install(_plan(installer=installer, package=package), tmp_path / "tools",
                InstallOptions(allowed_sources=ALLOW_ALL), runner=spy)
    assert spy.calls == []
    assert not (tmp_path / "SENTINEL").exists()
    assert not (tmp_path / "tools").exists()  # not even the tools folder was made


@pytest.mark.parametrize(("over", "reason"), [
    ({"version": "latest"}, "floats"),
    ({"version": "^1.2.0", "installer": "npm"}, "not an exact semver"),
    ({"version": ">=1.0"}, "shell metacharacters"),
    ({"version": "1.0 || 2.0"}, "shell metacharacters"),
    ({"name": "Bad Name"}, "whitespace"),
    ({"name": "../x"}, "'..'"),
    ({"installer": "git", "source": "github:o/r"}, "commit"),
    ({"installer": "git", "source": "github:o/../r", "commit": "a" * 40}, "github:owner/repo"),
    ({"source": "pypi:other-package"}, "does not match"),
    ({"commit": "a" * 40}, "only applies to git"),
    ({"offline": True}, "find_links"),
    ({"bins": ["hello"], "verify": ["rm", "-rf"]}, "not one of the bins"),
    ({"bins": ["x;y"]}, "shell metacharacters"),
    ({"index_url": "ftp://x"}, "index_url"),
    ({"kind": "plugin"}, "kind"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_plans_are_typed_errors(over: dict, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_plan(_plan(**over))


def test_valid_plans_and_derived_sources() -> None:
    assert parse_plan(_plan(package="Hello_Tool")).source == "pypi:hello-tool"
    assert parse_plan(_plan(version="==1.0.0")).version == "1.0.0"
    npm = parse_plan(_plan(installer="npm", package="@modelcontextprotocol/server-x", version="1.2.3-rc.1"))
    assert npm.source == "npm:@modelcontextprotocol/server-x"
    git = parse_plan(_plan(installer="git", source="github:Anthropics/Tool", commit="0" * 40))
    assert git.source == "github:anthropics/tool" and git.github_repo == "anthropics/tool"
    assert isinstance(parse_plan(npm), InstallPlan)


@pytest.mark.parametrize(("source", "patterns", "allowed", "rule"), [
    ("pypi:ruff", ["pypi:*"], True, "pypi:*"),
    ("pypi:Foo_Bar", ["pypi:foo-bar"], True, "pypi:foo-bar"),  # PEP 503 normalized before matching
    ("npm:@modelcontextprotocol/x", ["npm:@modelcontextprotocol/*"], True, "npm:@modelcontextprotocol/*"),
    ("npm:@evil/server-x", ["npm:@modelcontextprotocol/*"], False, None),
    ("github:Anthropics/x", ["github:anthropics/*"], True, "github:anthropics/*"),
    ("github:anthropics-fake/x", ["github:anthropics/*"], False, None),
    ("github:anthropics-fake/x", ["github:anthropics*"], True, "github:anthropics*"),  # why: write the '/'
    ("pypi:ruff", [], False, None),
])
def test_source_allowed_table(source: str, patterns: list[str], allowed: bool, rule: str | None) -> None:
    ok, why = source_allowed(source, patterns)
    assert ok is allowed
    if allowed:
        assert why == rule
    else:
        assert canonical_source(source) in why
        for p in patterns:
            assert repr(p) in why


def test_denied_source_runs_nothing_and_names_the_rules(tmp_path: Path) -> None:
    spy = _Spy()
    patterns = ("npm:@modelcontextprotocol/*", "github:anthropics/*")
    with pytest.raises(PolicyDenied) as err:
        install(_plan(), tmp_path / "tools", InstallOptions(allowed_sources=patterns), runner=spy)
    assert spy.calls == []
    assert "pypi:hello-tool" in err.value.message
    assert "'npm:@modelcontextprotocol/*'" in err.value.message
    assert "'github:anthropics/*'" in err.value.message
    assert err.value.details["patterns"] == list(patterns)
    assert not (tmp_path / "tools").exists()
