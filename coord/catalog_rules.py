"""The checks every catalog name and version goes through, in one place for tools and MCP servers.

Why so strict: catalog names become file names, client-config keys and argv items. A name that could
escape a folder (`../x`, `a/b`), change a command's meaning (`;`, `$(...)`, spaces) or float to a new
release (`latest`, `^1.2`) is refused when the catalog loads, not when something is installed.
"""

from __future__ import annotations

import re

SAFE_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 long"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PYPI_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 names, no extras
NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")  # optionally @scope/

# An exact release: PEP 440 (1.2.3, 1.0rc1, 2025.4.25, 1.0.post1) or semver (1.2.3-beta.1+build.5).
# Deliberately rejects every range form the registry rejects: ^1.2, ~1.2, >=1, 1.x, 1.*, latest.
_EXACT_VERSION = re.compile(
    r"^v?\d+(?:\.\d+)*"
    r"(?:(?:a|b|rc|alpha|beta|\.?post|\.?dev)\d*)*"
    r"(?:[-+][0-9A-Za-z]+(?:[.-][0-9A-Za-z]+)*)*$"
)
# One PEP 440 clause (`>=1.2`, `==1.4.*`, `~=2.0`); clauses are joined by commas. No markers, no URLs.
_PEP440_CLAUSE = re.compile(r"^(?:~=|===?|!=|<=|>=|<|>)\s*v?\d+(?:\.\d+)*(?:\.\*|[0-9A-Za-z.+!-]*)$")
# npm ranges: versions, x/* wildcards, comparators, `^`, `~`, hyphen ranges and `||`. No tags, URLs, paths.
_NPM_RANGE = re.compile(r"^[0-9A-Za-z.^~<>=|*+ -]+$")
_NPM_TAG_WORDS = re.compile(r"[A-Za-z]{2,}")  # `latest`, `next`, `beta` alone name a moving dist-tag


class FieldError(ValueError):
    """A cross-field problem in a catalog entry that still names the field it is about, so the loader
    can report "entry X, field Y" and not just "entry X"."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def check_safe_name(value: str, *, lowercase: bool = False) -> str:
    """A name, alias or executable that is safe as a file name, a config key and an argv item.

    `lowercase` for names that also name a folder or a config key (a tool's install prefix, an MCP
    server's `mcpServers` key), so two spellings can never become two folders.
    """
    if not _SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{value!r} is an unsafe name: use {SAFE_NAME_RULE}; no '/', '..', spaces or "
                         "shell characters")
    if lowercase and value != value.lower():
        raise ValueError(f"{value!r} must be lowercase")
    return value


def exact_version(value: str) -> str:
    """An exact version (1.2.3); ranges and `latest` are refused because they change under our feet."""
    if not isinstance(value, str) or not _EXACT_VERSION.match(value.strip()) or value != value.strip():
        raise ValueError(f"version {value!r} must be an exact version such as '1.2.3' "
                         "(not a range like '^1.2', not 'latest')")
    return value


def pep440_spec(value: str) -> str:
    """A pip version: an exact version (`1.2.3`, read as `==1.2.3`) or comma-joined PEP 440 clauses."""
    text = value.strip()
    try:
        return exact_version(text)
    except ValueError:
        pass
    clauses = [c.strip() for c in text.split(",")]
    if not text or not all(_PEP440_CLAUSE.match(c) for c in clauses):
        raise ValueError(f"version {value!r} is not an exact version or a PEP 440 constraint such as "
                         "'==1.2.3' or '>=1.2,<2'")
    return value


def npm_range(value: str) -> str:
    """An npm version: exact (`1.2.3`) or a semver range (`^1.2.3`, `>=1 <2`); never a dist-tag (`latest`)."""
    text = value.strip()
    if (not text or not _NPM_RANGE.match(text) or not any(ch.isdigit() for ch in text)
            or _NPM_TAG_WORDS.search(re.sub(r"-[0-9A-Za-z.]+", "", text))):
        raise ValueError(f"version {value!r} is not an npm version or range such as '3.3.3' or '^3.3.0' "
                         "(dist-tags like 'latest' move and are refused)")
    return value
