"""Tool catalog entries: one command-line tool, how coord installs it and how it checks the install.

Only the description of an install lives here; the installer builds argv lists from `install_spec`
and runs them in a sandbox. A `manual` tool is described for a person and never run.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coord.catalog_rules import (
    NPM_NAME,
    PYPI_NAME,
    FieldError,
    check_safe_name,
    exact_version,
    npm_range,
    pep440_spec,
)

__all__ = ["ToolEntry"]

_GITHUB_SOURCE = re.compile(r"^github:([A-Za-z0-9-]{1,39})/([A-Za-z0-9._-]{1,100})$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _pypi_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalization


class ToolEntry(BaseModel):
    """One installable command-line tool. `manual` tools are only described: coord never runs their steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    installer: Literal["pip", "npm", "manual"]
    package: str | None = None
    version: str | None = None
    source: str | None = None
    commit: str | None = None
    allow_sdist: bool = False
    bins: tuple[str, ...] = Field(min_length=1)
    verify: tuple[str, ...] = Field(min_length=1)
    description: str = Field(min_length=1, max_length=500)
    manual_steps: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_safe_name(value, lowercase=True)

    @field_validator("aliases", "bins")
    @classmethod
    def _names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_safe_name(v) for v in values)

    @field_validator("verify")
    @classmethod
    def _verify(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        if any("\x00" in a or "\n" in a for a in argv):
            raise ValueError("verify arguments must not contain NUL or newline characters")
        return argv

    @field_validator("commit")
    @classmethod
    def _commit(cls, value: str | None) -> str | None:
        if value is not None and not _COMMIT.match(value):
            raise ValueError("commit must be a full 40-character lowercase hex git commit id")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, raw: Any) -> Any:
        """An omitted source means the installer's own registry: `pypi:<package>` or `npm:<package>`."""
        if isinstance(raw, dict) and raw.get("source") is None and isinstance(raw.get("package"), str):
            registry = {"pip": "pypi", "npm": "npm"}.get(raw.get("installer"))  # type: ignore[arg-type]
            if registry:
                return {**raw, "source": f"{registry}:{raw['package']}"}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ToolEntry:
        if self.verify[0] not in self.bins:
            raise FieldError("verify", f"verify must run one of this tool's bins {list(self.bins)}, "
                              f"not {self.verify[0]!r}")
        if self.installer == "manual":
            return self._check_manual()
        if self.manual_steps is not None:
            raise FieldError("manual_steps", "manual_steps is only for installer = 'manual'")
        if not self.package:
            raise FieldError("package", f"installer {self.installer!r} needs a package name")
        name_rule = PYPI_NAME if self.installer == "pip" else NPM_NAME
        if not name_rule.match(self.package):
            raise FieldError("package", f"{self.package!r} is not a valid {self.installer} package name")
        self._check_source()
        if self.commit is None:
            if self.version is None:
                raise FieldError("version", "give an exact version or a constraint (never 'latest')")
            check = pep440_spec if self.installer == "pip" else npm_range
            try:
                check(self.version)
            except ValueError as exc:
                raise FieldError("version", str(exc)) from None
        return self

    def _check_manual(self) -> ToolEntry:
        if not self.manual_steps or not self.manual_steps.strip():
            raise FieldError("manual_steps", "a manual tool needs manual_steps telling a person what to do")
        for name in ("source", "commit", "version"):
            if getattr(self, name) is not None:
                raise FieldError(name, f"{name} is meaningless for a manual tool: coord never installs it")
        if self.allow_sdist:
            raise FieldError("allow_sdist", "allow_sdist is only for pip tools")
        return self

    def _check_source(self) -> None:
        registry = "pypi" if self.installer == "pip" else "npm"
        source = self.source or ""
        if source.startswith("github:"):
            if not _GITHUB_SOURCE.match(source):
                raise FieldError("source", "a github source is 'github:<owner>/<repo>'")
            if self.commit is None:
                raise FieldError("commit", "a github source must pin a 40-character commit")
            return
        if self.commit is not None:
            raise FieldError("commit", "commit is only for github sources")
        kind, _, name = source.partition(":")
        if kind != registry:
            raise FieldError("source", f"installer {self.installer!r} installs from '{registry}:' "
                              f"or 'github:' sources, not {kind!r}")
        if (_pypi_key(name) != _pypi_key(self.package or "")) if registry == "pypi" else name != self.package:
            raise FieldError("source", f"source {source!r} does not name the package {self.package!r}")
        if self.allow_sdist and self.installer != "pip":
            raise FieldError("allow_sdist", "allow_sdist is only for pip tools")

    @property
    def pinned(self) -> bool:
        """True when coord's install is reproducible: an exact version or a github commit."""
        if self.installer == "manual":
            return False
        if self.commit is not None:
            return True
        version = self.version or ""
        try:
            exact_version(version.removeprefix("==") if self.installer == "pip" else version)
        except ValueError:
            return False
        return True

    @property
    def install_spec(self) -> str | None:
        """The one argv item pip or npm is given (`ruff==0.6.9`, `prettier@3.3.3`); None for manual tools."""
        if self.installer == "manual":
            return None
        if self.commit is not None:
            repo = (self.source or "").removeprefix("github:")
            if self.installer == "pip":
                return f"{self.package} @ git+https://github.com/{repo}@{self.commit}"
            return f"github:{repo}#{self.commit}"
        version = self.version or ""
        if self.installer == "npm":
            return f"{self.package}@{version}"
        return f"{self.package}{version}" if version[:1] in "<>=!~" else f"{self.package}=={version}"

    def lookup_keys(self) -> tuple[list[str], list[str]]:
        """(declared aliases, implicit aliases): the executables and the package name are implicit ones,
        because agents report the command they could not run ("rg", "tsc") or the package they know."""
        return list(self.aliases), [*self.bins, *([self.package] if self.package else [])]
