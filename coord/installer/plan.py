"""The structured install plan (invariant 4) and the source allowlist check.

Every string that ends up in an install argv passes through here first and is refused, with a typed
InvalidInput, before anything runs: shell metacharacters, whitespace, path separators, `..`, a leading
`-` (option injection), floating versions such as `latest` or `^1.2`.

Fields that say *where artifacts come from* (find_links, index_url, tarball, offline) are operator
settings for offline and mirrored installs: the wiring should fill them from settings, never from an
agent's proposal, because they bypass the `source` the allowlist judged.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coord.errors import InvalidInput, PolicyDenied

SHELL_META = set(";&|$`<>(){}[]*?!~#'\"\\")
TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PYPI_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._-]{0,213}/)?[a-z0-9][a-z0-9._-]{0,213}$")
GITHUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
# No epochs ("1!2.0"): `!` is refused with the other shell metacharacters, as defence in depth.
PEP440_EXACT = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?"
                          r"(\+[a-z0-9]+(\.[a-z0-9]+)*)?$", re.IGNORECASE)
SEMVER_EXACT = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
BIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
INDEX_URL = re.compile(r"^(https?|file)://[^\s]+$")


def refuse_unsafe(what: str, value: Any, *, allow_scope: bool = False) -> str:
    """Reject a value that could be read as shell, a path or an option; the message names the reason."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string")
    bad = sorted({c for c in value if c in SHELL_META})
    if bad:
        raise InvalidInput(f"{what} {value!r} contains shell metacharacters {''.join(bad)!r}; refused")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} {value!r} contains whitespace or control characters; refused")
    if ".." in value:
        raise InvalidInput(f"{what} {value!r} contains '..'; refused")
    if value.startswith("-"):
        raise InvalidInput(f"{what} {value!r} starts with '-' and would be read as an option; refused")
    slashes = value.count("/")
    scoped = allow_scope and value.startswith("@") and slashes == 1
    if "\\" in value or (slashes and not scoped):
        raise InvalidInput(f"{what} {value!r} contains a path separator; refused")
    return value


def normalize_pypi(name: str) -> str:
    """PEP 503 normalized name: pip treats `Foo_Bar`, `foo-bar` and `foo.bar` as one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


class InstallPlan(BaseModel):
    """What to install, from where, and how to check it; built from a catalog entry or a proposal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tool", "mcp"]
    name: str = Field(description="coord's name for the tool; names its prefix <name>-<version>")
    installer: Literal["pip", "npm", "git"]
    package: str
    version: str = Field(description="exact version; for git a label for the prefix, the commit pins")
    source: str = Field("", description="pypi:<name> | npm:<name> | github:owner/repo; derived if empty")
    commit: str | None = None
    allow_sdist: bool = False
    bins: tuple[str, ...] = ()
    verify: tuple[str, ...] | None = None
    find_links: tuple[str, ...] = ()
    index_url: str | None = None
    tarball: str | None = None
    offline: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        refuse_unsafe("tool name", v)
        if not TOOL_NAME.match(v):
            raise InvalidInput(f"tool name {v!r} must be lowercase letters, digits, '.', '_' or '-' (max 64)")
        return v

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for b in v:
            refuse_unsafe("bin name", b)
            if not BIN_NAME.match(b):
                raise InvalidInput(f"bin name {b!r} must be letters, digits, '.', '_' or '-'")
        return v

    @field_validator("verify")
    @classmethod
    def _verify(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise InvalidInput("verify must name a command (the first item is one of the plan's bins)")
        refuse_unsafe("verify command", v[0])
        if any("\0" in a for a in v):
            raise InvalidInput("verify arguments must not contain NUL bytes")
        return v

    @field_validator("index_url")
    @classmethod
    def _index(cls, v: str | None) -> str | None:
        if v is not None and not INDEX_URL.match(v):
            raise InvalidInput(f"index_url {v!r} must be an http(s):// or file:// URL without spaces")
        return v

    @field_validator("find_links")
    @classmethod
    def _links(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for link in v:
            if not link or link.startswith("-") or any(c in link for c in "\0\n"):
                raise InvalidInput(f"find_links entry {link!r} must be a folder path or URL")
        return v

    @field_validator("tarball")
    @classmethod
    def _tarball(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or not v.endswith((".tgz", ".tar.gz")) or "\0" in v):
            raise InvalidInput(f"tarball {v!r} must be an absolute path to a .tgz file")
        return v

    @model_validator(mode="before")
    @classmethod
    def _early(cls, data: Any) -> Any:
        # Package and version checks run before field parsing so that a hostile name is refused with
        # its own reason even when other fields are also wrong.
        if isinstance(data, Mapping):
            installer = data.get("installer")
            refuse_unsafe("package name", data.get("package"), allow_scope=installer == "npm")
            version = data.get("version")
            if installer == "pip" and isinstance(version, str) and version.startswith("=="):
                # The catalog writes pinned pip versions as `==1.2.3`; the plan keeps the bare version.
                data = {**data, "version": version[2:]}
            refuse_unsafe("version", data.get("version"))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> InstallPlan:
        pkg, ver = self.package, self.version
        if ver.lower() in ("latest", "next", "*", "x"):
            raise InvalidInput(f"version {ver!r} floats; pin an exact version")
        if self.installer == "pip":
            if not PYPI_NAME.match(pkg):
                raise InvalidInput(f"{pkg!r} is not a valid PyPI project name")
            if not PEP440_EXACT.match(ver):
                raise InvalidInput(f"version {ver!r} is not an exact PEP 440 version such as 1.2.3")
        elif self.installer == "npm":
            if not NPM_NAME.match(pkg):
                raise InvalidInput(f"{pkg!r} is not a valid npm package name (lowercase, optional @scope/)")
            if not SEMVER_EXACT.match(ver):
                raise InvalidInput(f"version {ver!r} is not an exact semver version such as 1.2.3")
        else:
            if not PYPI_NAME.match(pkg):
                raise InvalidInput(f"{pkg!r} is not a valid project name")
            if not (self.commit and COMMIT.match(self.commit)):
                raise InvalidInput("a git plan needs `commit`: the full 40-character lowercase hex commit id")
        if self.installer != "git" and self.commit is not None:
            raise InvalidInput("`commit` only applies to git plans")
        if self.installer != "npm" and self.tarball is not None:
            raise InvalidInput("`tarball` only applies to npm plans")
        if self.installer == "npm" and (self.find_links or self.allow_sdist):
            raise InvalidInput("find_links and allow_sdist only apply to pip and git plans")
        if self.offline and self.installer == "pip" and not self.find_links:
            raise InvalidInput("an offline pip plan needs find_links (local folders holding the wheels)")
        if self.offline and self.installer == "npm" and not self.tarball:
            raise InvalidInput("an offline npm plan needs a tarball")
        if self.verify and self.bins and self.verify[0] not in self.bins:
            raise InvalidInput(f"verify runs {self.verify[0]!r}, which is not one of the bins "
                               f"{list(self.bins)}")
        expected = expected_source(self.installer, pkg, self.source)
        if self.source and canonical_source(self.source) != expected:
            raise InvalidInput(f"source {self.source!r} does not match {self.installer} package {pkg!r} "
                               f"(expected {expected!r})")
        # Stored canonical, so history rows and the allowlist see one spelling of each source.
        object.__setattr__(self, "source", expected)
        return self

    @property
    def prefix_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def github_repo(self) -> str | None:
        return self.source.split(":", 1)[1] if self.installer == "git" else None


def expected_source(installer: str, package: str, given: str) -> str:
    if installer == "pip":
        return f"pypi:{normalize_pypi(package)}"
    if installer == "npm":
        return f"npm:{package}"
    repo = given.split(":", 1)[1] if given.startswith("github:") else ""
    if not GITHUB_REPO.match(repo) or ".." in repo:
        raise InvalidInput(f"a git plan needs source 'github:owner/repo', got {given!r}")
    return canonical_source(given)


def canonical_source(source: str) -> str:
    """The form patterns are matched against: PyPI names PEP 503-normalized, GitHub and npm lowercased
    (both are case-insensitive), so `pypi:Foo_Bar` cannot slip past a rule written for `pypi:foo-bar`."""
    kind, _, rest = source.partition(":")
    if kind == "pypi":
        return f"pypi:{normalize_pypi(rest)}"
    return f"{kind.lower()}:{rest.lower()}"


def source_allowed(source: str, patterns: Iterable[str]) -> tuple[bool, str]:
    """(True, matching pattern) or (False, reason naming every pattern checked).

    Semantics: each pattern is an fnmatch pattern matched case-insensitively against the whole
    canonical source string (see canonical_source). `*` matches any run of characters *including* `/`,
    `?` one character, `[...]` a set. So `github:anthropics/*` allows every repository of that owner,
    `npm:@modelcontextprotocol/*` every package of that scope, `pypi:*` all of PyPI. Write the separator
    into the pattern: `github:anthropics*` would also allow `github:anthropics-fake/x`. No patterns
    means nothing is allowed.
    """
    checked = list(patterns)
    canon = canonical_source(source)
    for pattern in checked:
        if fnmatch.fnmatchcase(canon, pattern.lower()):
            return True, pattern
    shown = ", ".join(repr(p) for p in checked) or "none configured"
    return False, f"source {canon!r} matches none of the allowed install sources ({shown})"


def check_source(plan: InstallPlan, patterns: Iterable[str]) -> str:
    """The matching pattern, or PolicyDenied naming the patterns the plan was checked against."""
    checked = list(patterns)
    ok, why = source_allowed(plan.source, checked)
    if not ok:
        raise PolicyDenied(why, source=plan.source, patterns=checked)
    return why


def parse_plan(data: InstallPlan | Mapping[str, Any]) -> InstallPlan:
    """An InstallPlan from a mapping; every problem comes out as InvalidInput, never ValidationError."""
    if isinstance(data, InstallPlan):
        return data
    try:
        return InstallPlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'plan'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid install plan: {problems}") from None
