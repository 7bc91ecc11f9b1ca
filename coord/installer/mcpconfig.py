"""Add or remove one MCP server entry in a client config file, and roll the change back (invariants 5, 7).

Files: `.mcp.json` (Claude Code, project scope) and `claude_desktop_config.json` (Claude Desktop), both
`{"mcpServers": {NAME: ENTRY}}`. Every write goes through fsutil.update_file (sidecar lock, re-read and
compare before the rename, timestamped backup, atomic replace), keeps every other key and the key order
as they were, and keeps the file's indentation. A file that is not valid JSON is never overwritten:
FileFormatError names it and the parse error, and the entry we would have added is written beside it
as `<file>.proposed` for a person to merge.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coord.errors import Conflict, FileFormatError, InvalidInput
from coord.fsutil import lock_for, sha256_bytes, update_file, write_atomic

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VAR_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
# A secret header may carry a scheme word before the reference: `Bearer ${TOKEN}`.
HEADER_REF = re.compile(r"^([A-Za-z]+ )?\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
FLOATING = re.compile(r"(^|[@=:])latest$", re.IGNORECASE)
STDIO_KEYS = {"type", "command", "args", "env"}
REMOTE_KEYS = {"type", "url", "headers"}
REMOTE_TYPES = {"http", "sse"}


@dataclass(frozen=True)
class ConfigChange:
    """One change to a client config file: what the history row records and what rollback needs."""

    path: Path
    name: str
    action: Literal["added", "replaced", "removed", "restored", "unchanged"]
    previous: dict[str, Any] | None
    backup: Path | None
    written_sha256: str | None = None
    created: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "action": self.action, "previous": self.previous,
                "backup": str(self.backup) if self.backup else None,
                "written_sha256": self.written_sha256, "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfigChange:
        """The change `to_dict` recorded (install history), ready for `rollback`."""
        return cls(Path(data["path"]), data["name"], data["action"], data.get("previous"),
                   Path(data["backup"]) if data.get("backup") else None, data.get("written_sha256"),
                   bool(data.get("created")))


class _Changed(Exception):
    """The file is no longer the bytes we wrote: an exact restore would lose someone else's edit."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME.match(name):
        raise InvalidInput(f"MCP server name {name!r} must be letters, digits, '_', '.' or '-' (max 64)")
    return name


def _strings(where: str, values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and "\0" not in v for v in values):
        raise InvalidInput(f"{where} must be a list of strings")
    return values


def _secret_map(where: str, mapping: Any, secret: set[str], pattern: re.Pattern[str], *,
                fold: bool = False) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise InvalidInput(f"{where} must be an object of strings")
    for key, value in mapping.items():
        if not isinstance(value, str) or not isinstance(key, str) or (not fold and not ENV_NAME.match(key)):
            raise InvalidInput(f"{where}: {key!r} must be a valid name with a string value")
        if (key.lower() if fold else key) in secret and not pattern.match(value):
            raise InvalidInput(f"{where}: {key} is a secret; write it as a ${{VAR}} reference "
                               f"(e.g. \"${{{key.upper().replace('-', '_')}}}\"), never as a value")
    return mapping


def validate_entry(entry: Any, secret_vars: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of `entry` after checking its shape, that nothing floats on `latest`, and that the
    variables marked secret (env names, or header names case-insensitively) are `${VAR}` references."""
    if not isinstance(entry, dict):
        raise InvalidInput("an MCP server entry must be an object")
    entry = copy.deepcopy(entry)
    secret = set(secret_vars)
    kind = entry.get("type", "stdio")
    if kind == "stdio":
        unknown = set(entry) - STDIO_KEYS
        if unknown or not isinstance(entry.get("command"), str) or not entry["command"]:
            raise InvalidInput(f"a stdio entry needs `command` and may have args, env "
                               f"(unknown: {sorted(unknown)})")
        pinned = [entry["command"], *_strings("args", entry.get("args", []))]
        _secret_map("env", entry.get("env", {}), secret, VAR_REF)
    elif kind in REMOTE_TYPES:
        unknown = set(entry) - REMOTE_KEYS
        url = entry.get("url")
        if unknown or not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
            raise InvalidInput(f"a {kind} entry needs an http(s) `url` and may have headers "
                               f"(unknown: {sorted(unknown)})")
        pinned = [url]
        _secret_map("headers", entry.get("headers", {}), {s.lower() for s in secret}, HEADER_REF, fold=True)
    else:
        raise InvalidInput(f"entry type {kind!r} is not one of stdio, {', '.join(sorted(REMOTE_TYPES))}")
    floating = [v for v in pinned if FLOATING.search(v)]
    if floating:
        raise InvalidInput(f"{floating} float on 'latest'; pin an exact version")
    return entry


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        # json.loads would silently keep the last one, and our rewrite would drop the others.
        raise ValueError(f"duplicate keys {dupes}")
    return dict(pairs)


def _load(path: Path, data: bytes | None) -> dict[str, Any]:
    """The parsed file ({} when absent or blank); FileFormatError when it does not parse."""
    if data is None or not data.strip():
        return {}
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              path=str(path)) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError(f"{path} is not valid JSON: {exc}", path=str(path)) from None
    if not isinstance(doc, dict):
        raise FileFormatError(f"{path} must hold a JSON object at the top level", path=str(path))
    if not isinstance(doc.get("mcpServers", {}), dict):
        raise FileFormatError(f"{path}: `mcpServers` must be an object", path=str(path))
    return doc


def _indent(data: bytes | None) -> int | str:
    match = re.search(rb"\n([ \t]+)\"", data or b"")
    if not match:
        return 2
    ws = match.group(1).decode()
    return "\t" if "\t" in ws else len(ws)


def _dump(doc: dict[str, Any], like: bytes | None) -> bytes:
    return (json.dumps(doc, indent=_indent(like), ensure_ascii=False) + "\n").encode("utf-8")


def proposed_path(path: Path) -> Path:
    return path.with_name(path.name + ".proposed")


def add_server(path: Path, name: str, entry: dict[str, Any], *, secret_vars: Iterable[str] = (),
               replace: bool = False, backup_dir: Path | None = None) -> ConfigChange:
    """Add `name` -> `entry` under mcpServers. The same entry again is a no-op ("unchanged"); a
    different entry under that name is a Conflict unless replace=True (then `previous` keeps it).
    backup_dir: where the backup of the previous file goes (default: beside it)."""
    path, name = Path(path), validate_name(name)
    entry = validate_entry(entry, secret_vars)
    seen: dict[str, Any] = {}

    def transform(before: bytes | None) -> bytes:
        doc = _load(path, before)
        servers = doc.setdefault("mcpServers", {})
        old = servers.get(name)
        seen.update(previous=copy.deepcopy(old), created=before is None, written=None)
        if old == entry:
            return before if before is not None else _dump(doc, None)
        if old is not None and not replace:
            raise Conflict(f"{path} already has an MCP server {name!r} with a different entry; "
                           "remove it first or replace it explicitly", path=str(path), name=name)
        servers[name] = entry
        seen["written"] = _dump(doc, before)
        return seen["written"]

    try:
        saved = update_file(path, transform, backup_dir=backup_dir)
    except FileFormatError as exc:
        raise _proposed_instead(path, name, entry, exc) from None
    written = seen.get("written")
    if written is None:
        return ConfigChange(path, name, "unchanged", seen.get("previous"), None)
    action = "replaced" if seen["previous"] is not None else "added"
    return ConfigChange(path, name, action, seen["previous"], saved, sha256_bytes(written), seen["created"])


def _proposed_instead(path: Path, name: str, entry: dict[str, Any], exc: FileFormatError) -> FileFormatError:
    """Write the entry we would have added beside the unparsable file; the error to raise says where."""
    proposed = proposed_path(path)
    write_atomic(proposed, _dump({"mcpServers": {name: entry}}, None))
    return FileFormatError(f"{exc.message}; left it untouched and wrote the entry coord would add to {proposed}",
                           path=str(path), proposed=str(proposed))


def check_file(path: Path, name: str, entry: dict[str, Any], *, secret_vars: Iterable[str] = ()) -> None:
    """Refuse now what add_server would refuse later, without writing the target: a file that does not
    parse (FileFormatError, with `<file>.proposed` written as add_server does) or a different entry
    already under `name` (Conflict). An install checks this before it runs anything."""
    path, name = Path(path), validate_name(name)
    entry = validate_entry(entry, secret_vars)
    try:
        data = path.read_bytes() if path.exists() else None
    except OSError as exc:
        raise InvalidInput(f"{path} cannot be read: {exc.strerror}", path=str(path)) from None
    try:
        doc = _load(path, data)
    except FileFormatError as exc:
        raise _proposed_instead(path, name, entry, exc) from None
    old = doc.get("mcpServers", {}).get(name)
    if old is not None and old != entry:
        raise Conflict(f"{path} already has an MCP server {name!r} with a different entry; "
                       "remove it first or replace it explicitly", path=str(path), name=name)


def remove_server(path: Path, name: str, previous: dict[str, Any] | None = None, *,
                  backup_dir: Path | None = None) -> ConfigChange:
    """Remove `name` from mcpServers, or put `previous` back under it when given (undoing a replace)."""
    path, name = Path(path), validate_name(name)
    seen: dict[str, Any] = {}

    def transform(before: bytes | None) -> bytes:
        doc = _load(path, before)
        servers = doc.get("mcpServers", {})
        seen.update(previous=copy.deepcopy(servers.get(name)), written=None)
        if previous is not None and servers.get(name) != previous:
            doc.setdefault("mcpServers", servers)[name] = previous
        elif previous is None and name in servers:
            del servers[name]
        else:
            return before if before is not None else b""
        seen["written"] = _dump(doc, before)
        return seen["written"]

    if not path.exists():
        return ConfigChange(path, name, "unchanged", None, None)
    saved = update_file(path, transform, backup_dir=backup_dir)
    if seen.get("written") is None:
        return ConfigChange(path, name, "unchanged", seen.get("previous"), None)
    action = "restored" if previous is not None else "removed"
    return ConfigChange(path, name, action, seen["previous"], saved, sha256_bytes(seen["written"]))


def rollback(change: ConfigChange, *, backup_dir: Path | None = None) -> ConfigChange | None:
    """Undo `change`. While the file still holds exactly what we wrote, put back the exact bytes from
    before (or delete the file we created); if someone edited it since, undo only our entry."""
    if change.action == "unchanged" or change.written_sha256 is None:
        return None
    path = change.path
    if change.created:
        with lock_for(path):
            if path.exists() and sha256_bytes(path.read_bytes()) == change.written_sha256:
                path.unlink()
                return None
    elif change.backup and change.backup.exists():
        original = change.backup.read_bytes()

        def transform(current: bytes | None) -> bytes:
            if current is None or sha256_bytes(current) != change.written_sha256:
                raise _Changed
            return original

        try:
            update_file(path, transform, backup_dir=backup_dir)
            return None
        except _Changed:
            pass
    # previous is what stood under the name before `change`: None means "absent", so this removes.
    return remove_server(path, change.name, change.previous, backup_dir=backup_dir)
