"""The tool and MCP server catalogs: what coord knows how to install, loaded and validated entry by entry.

Where the files live: the shipped catalog is the repository's `config/` folder, found relative to this
package (`shipped_config_dir()`), so it works from a checkout or an editable install. A catalog folder
holds `tools.toml` (`[[tools]]` tables), `mcp-servers/*.json` (one registry `server.json` object per
file, or an array of them) and optionally `mcp-servers.json`. `load_catalog([shipped, *user_paths])`
reads them in order; an entry loaded later replaces an earlier one with the same name, which is how a
user overrides a shipped entry. A user path may also be a single `.toml` (tools) or `.json` (MCP) file.

Why entry by entry: one typo in a user's override must not hide the other forty tools. Every problem
becomes a `CatalogIssue` naming the file, the entry and the field; the rest still loads.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import ValidationError

from coord.catalog_mcp import McpServerEntry
from coord.catalog_rules import FieldError
from coord.catalog_tools import ToolEntry

__all__ = [
    "CLOSEST_CUTOFF",
    "FUZZY_CUTOFF",
    "Catalog",
    "CatalogIssue",
    "Match",
    "McpServerEntry",
    "ToolEntry",
    "load_catalog",
    "normalize_name",
    "shipped_config_dir",
]

# A fuzzy hit must be this close (difflib ratio over normalized names) to count as the tool asked for:
# "rufff" -> "ruff" is 0.89; "mypi" -> "mypy" (0.75) and "black" -> "flake" (0.6) are only suggestions.
FUZZY_CUTOFF = 0.8
# "Did you mean" lists are suggestions for a person, so they may be looser.
CLOSEST_CUTOFF = 0.5
MAX_FILE_BYTES = 1 << 20  # catalog files are hand-written; anything bigger is a mistake or an attack
MAX_QUERY_CHARS = 200  # difflib is quadratic; nobody's tool name is longer


def shipped_config_dir() -> Path:
    """The `config/` folder beside the `coord` package (repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent / "config"


def normalize_name(name: str) -> str:
    """Case, `_`, `-` and spaces do not tell names apart: "Sequential_Thinking" is "sequential-thinking"."""
    return re.sub(r"[\s_-]+", "-", name.strip().lower()).strip("-")


@dataclass(frozen=True)
class CatalogIssue:
    """One problem found while loading; `entry` and `field` are None when the whole file is at fault."""

    file: str
    entry: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f": entry {self.entry!r}" if self.entry else "")
        return where + (f", field {self.field!r}" if self.field else "") + f": {self.message}"


E = TypeVar("E", ToolEntry, McpServerEntry)


@dataclass(frozen=True)
class Match(Generic[E]):
    """A lookup result. `similarity` is 1.0 for exact and alias hits, the difflib ratio for fuzzy ones."""

    entry: E
    how: Literal["exact", "alias", "fuzzy", "semantic"]  # semantic: coord.matching.catalog_match
    similarity: float
    matched: str  # exact/alias: the query as given; fuzzy: the normalized name or alias it resembled


class _Index(Generic[E]):
    """Name -> entry lookups over one kind of entry.

    Precedence: names, then declared aliases (a later file's claim wins, and the clash is reported),
    then implicit aliases such as bins and package names (they only fill free keys). Fuzzy matching
    compares the query with all of these.
    """

    def __init__(self, entries: dict[str, E], source_of: dict[str, str], issues: list[CatalogIssue]) -> None:
        self.exact: dict[str, tuple[Literal["exact", "alias"], E]] = {
            normalize_name(e.name): ("exact", e) for e in entries.values()}
        self.fuzzy: list[tuple[str, E]] = []
        for key, entry in entries.items():
            declared, _ = entry.lookup_keys()
            for alias in declared:
                norm = normalize_name(alias)
                taken = self.exact.get(norm)
                if taken is not None and taken[1] is not entry:
                    if taken[0] == "exact":
                        why = f"alias {alias!r} is the name of {taken[1].name!r}; the name wins"
                        issues.append(CatalogIssue(source_of.get(key, "?"), entry.name, "aliases", why))
                        continue
                    why = f"alias {alias!r} of {taken[1].name!r} now finds {entry.name!r}, loaded later"
                    issues.append(CatalogIssue(source_of.get(key, "?"), entry.name, "aliases", why))
                if taken is None or taken[0] != "exact":
                    self.exact[norm] = ("alias", entry)
        for entry in entries.values():
            _, implicit = entry.lookup_keys()
            for alias in implicit:
                self.exact.setdefault(normalize_name(alias), ("alias", entry))
            self.fuzzy += [(normalize_name(k), entry) for k in (entry.name, *entry.aliases, *implicit)]

    def find(self, query: str) -> Match[E] | None:
        if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS or not normalize_name(query):
            return None
        hit = self.exact.get(normalize_name(query))
        if hit is not None:
            return Match(hit[1], hit[0], 1.0, query)
        best = self.closest(query, 1, FUZZY_CUTOFF)
        return best[0] if best else None

    def closest(self, query: str, n: int, cutoff: float) -> list[Match[E]]:
        if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS or n <= 0:
            return []
        norm = normalize_name(query)
        best: dict[int, tuple[float, str, E]] = {}
        matcher = difflib.SequenceMatcher(b=norm, autojunk=False)
        for key, entry in self.fuzzy:
            matcher.set_seq1(key)
            # The cheap upper bounds first: this runs over every key on every miss.
            if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
                continue
            ratio = matcher.ratio()
            if ratio >= cutoff and ratio > best.get(id(entry), (-1.0,))[0]:
                best[id(entry)] = (ratio, key, entry)
        hit = self.exact.get(norm)
        matches = []
        for ratio, key, entry in sorted(best.values(), key=lambda r: (-r[0], r[2].name))[:n]:
            if hit is not None and hit[1] is entry:
                matches.append(Match(entry, hit[0], 1.0, key))
            else:
                matches.append(Match(entry, "fuzzy", ratio, key))
        return matches


@dataclass
class Catalog:
    """Both catalogs after overrides, keyed by normalized name, plus every problem met while loading.

    Read-only once built: the lookup indexes are made in `__post_init__`.
    """

    tools: dict[str, ToolEntry] = field(default_factory=dict)
    mcp_servers: dict[str, McpServerEntry] = field(default_factory=dict)
    errors: list[CatalogIssue] = field(default_factory=list)
    tool_sources: dict[str, str] = field(default_factory=dict)  # key -> the file the entry came from
    mcp_sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tool_index = _Index(self.tools, self.tool_sources, self.errors)
        self._mcp_index = _Index(self.mcp_servers, self.mcp_sources, self.errors)

    def find_tool(self, name: str) -> Match[ToolEntry] | None:
        return self._tool_index.find(name)

    def find_mcp(self, name: str) -> Match[McpServerEntry] | None:
        return self._mcp_index.find(name)

    def closest_tools(self, name: str, n: int = 5, cutoff: float = CLOSEST_CUTOFF) -> list[Match[ToolEntry]]:
        return self._tool_index.closest(name, n, cutoff)

    def closest_mcp(
        self, name: str, n: int = 5, cutoff: float = CLOSEST_CUTOFF
    ) -> list[Match[McpServerEntry]]:
        return self._mcp_index.closest(name, n, cutoff)


# ---------------------------------------------------------------------------------------------- loading


def load_catalog(paths: list[Path] | None = None) -> Catalog:
    """Load catalog folders and files in order (shipped first, overrides after). Never raises on bad data.

    `paths=None` loads the shipped catalog alone. A path with a `.toml`/`.json` suffix that does not
    exist is reported; a missing folder is skipped, so an optional user folder can always be passed.
    """
    catalog = {"tools": ({}, {}), "mcp": ({}, {})}  # kind -> (entries, sources)
    issues: list[CatalogIssue] = []
    for path in [shipped_config_dir()] if paths is None else paths:
        for kind, file in _catalog_files(Path(path), issues):
            entries, sources = catalog[kind]
            loaded = _load_tools(file, issues) if kind == "tools" else _load_servers(file, issues)
            entries.update(loaded)  # same key: the later file's entry replaces the earlier one
            sources.update(dict.fromkeys(loaded, str(file)))
    (tools, tool_sources), (servers, mcp_sources) = catalog["tools"], catalog["mcp"]
    return Catalog(tools=tools, mcp_servers=servers, errors=issues,  # type: ignore[arg-type]
                   tool_sources=tool_sources, mcp_sources=mcp_sources)


def _catalog_files(path: Path, issues: list[CatalogIssue]) -> list[tuple[str, Path]]:
    if path.is_dir():
        found = [("tools", path / "tools.toml")] if (path / "tools.toml").is_file() else []
        folder = path / "mcp-servers"
        if folder.is_dir():
            found += [("mcp", f) for f in sorted(folder.glob("*.json")) if f.is_file()]
        if (path / "mcp-servers.json").is_file():
            found.append(("mcp", path / "mcp-servers.json"))
        return found
    if path.suffix not in (".toml", ".json"):
        if path.exists():
            issues.append(CatalogIssue(str(path), None, None, "not a catalog file: use a .toml file of "
                                       "[[tools]], a .json file of MCP servers, or a catalog folder"))
        return []
    if not path.is_file():
        issues.append(CatalogIssue(str(path), None, None, "catalog file does not exist"))
        return []
    return [("tools" if path.suffix == ".toml" else "mcp", path)]


def _read(file: Path, issues: list[CatalogIssue]) -> str | None:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            issues.append(CatalogIssue(str(file), None, None, f"file is larger than {MAX_FILE_BYTES} bytes"))
            return None
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(CatalogIssue(str(file), None, None, f"cannot read the file: {exc}; it was skipped"))
        return None


def _load_tools(file: Path, issues: list[CatalogIssue]) -> dict[str, ToolEntry]:
    text = _read(file, issues)
    if text is None:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        issues.append(CatalogIssue(str(file), None, None, f"not valid TOML ({exc}); the file was skipped"))
        return {}
    for key in data:
        if key != "tools":
            issues.append(CatalogIssue(str(file), None, key, "unknown top-level key; tools go in [[tools]]"))
    raw = data.get("tools", [])
    if not isinstance(raw, list):
        issues.append(CatalogIssue(str(file), None, "tools", "'tools' must be an array of [[tools]] tables"))
        return {}
    return _validate_all(file, raw, ToolEntry, issues)


def _load_servers(file: Path, issues: list[CatalogIssue]) -> dict[str, McpServerEntry]:
    text = _read(file, issues)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        issues.append(CatalogIssue(str(file), None, None, f"not valid JSON ({exc}); the file was skipped"))
        return {}
    raw = [data] if isinstance(data, dict) else data
    if not isinstance(raw, list):
        issues.append(CatalogIssue(str(file), None, None, "expected a server.json object or an array"))
        return {}
    return _validate_all(file, raw, McpServerEntry, issues)


def _validate_all(file: Path, raw: list[Any], model: type[E], issues: list[CatalogIssue]) -> dict[str, E]:
    loaded: dict[str, E] = {}
    for index, item in enumerate(raw):
        label = _label(item, index)
        if not isinstance(item, dict):
            issues.append(CatalogIssue(str(file), label, None, "an entry must be a table/object"))
            continue
        try:
            entry = model.model_validate(item)
        except ValidationError as exc:
            issues.extend(CatalogIssue(str(file), label, *_describe(err)) for err in exc.errors())
            continue
        key = normalize_name(entry.name)
        if key in loaded:
            issues.append(CatalogIssue(str(file), label, "name", "duplicate in this file; the first is kept"))
            continue
        loaded[key] = entry
    return loaded


def _label(item: Any, index: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return name[:100] if isinstance(name, str) and name else f"#{index + 1}"


def _describe(err: Any) -> tuple[str | None, str]:
    """(field path, message) from one pydantic error, preferring the field a cross-field check names."""
    cause = (err.get("ctx") or {}).get("error")
    path = ".".join(str(p) for p in err["loc"]) or None
    if isinstance(cause, FieldError):
        path = ".".join(filter(None, [path, cause.field]))
    message = str(cause) if isinstance(cause, ValueError) else err["msg"]
    if err["type"] == "missing":
        message = "this field is required"
    elif err["type"] == "extra_forbidden":
        message = "unknown field (a typo?)"
    return path, message
