"""Reading Claude Code subagent files: the AgentFile model, agent names and paths, and the validating parser.

A file is `---` + YAML frontmatter + `---` + Markdown body. A round-trip parse keeps what coord.agentfiles
(the writer) needs to give the exact bytes back or to edit only the changed fields (`AgentFile._rt`);
`roundtrip=False` skips that for callers that only read (folder sync). Callers import these names from
coord.agentfiles.

Frontmatter that is not valid YAML only because a plain value holds `: ` (`description: ... Triggers on:
'x', 'y'`), a case Claude Code itself loads, is read leniently as top-level `key: value` lines instead: the
agent is registered, `AgentFile.warnings` says so, and the writer refuses to edit that frontmatter. In the
same way a file whose fence is only pushed off line 1 by leading blank lines or a uniform indentation (a
file pasted inside a code block) is read with those removed, with a warning, and never edited.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import stat
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from coord import fsutil
from coord.agenttags import derive_expertise
from coord.errors import FileFormatError, InvalidInput, NotFound

MAX_AGENT_BYTES = 256 * 1024
MAX_NAME_LENGTH = 64
# Hyphens and dots between lowercase letters and digits ("powershell-5.1-expert"): no leading, trailing or
# doubled separator, so no "..", no hidden file and no path separator can pass.
NAME_RE = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")
# Warning and error reason for a frontmatter read by the lenient fallback.
LENIENT_REASON = "lenient_frontmatter"
# Warning and error reason for a file read with its leading blank lines and indentation removed.
INDENTED_REASON = "indented_file"

# Frontmatter key -> AgentFile attribute, in the order new files list them.
KNOWN_FIELDS = {"name": "name", "description": "description", "tools": "tools",
                "disallowedTools": "disallowed_tools", "model": "model", "mcpServers": "mcp_servers",
                "expertise": "expertise", "color": "color"}
_ATTR_TO_KEY = {attr: key for key, attr in KNOWN_FIELDS.items()}
_OPEN_FENCE_RE = re.compile(r"---[ \t]*(?:\r\n|\n)")
_CLOSE_FENCE_RE = re.compile(r"^---[ \t]*(?:\r\n|\n|\Z)", re.MULTILINE)
# Commas inside parentheses belong to a permission pattern such as `Bash(git diff:*, git log:*)`.
_TOOL_SPLIT_RE = re.compile(r",(?![^()]*\))")
# The lenient fallback's top-level key line: a key at column 0, a colon, then a space/tab or the line end.
_LENIENT_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):(?:[ \t]+(.*))?")
# A value that opens YAML syntax (quoted, flow, block scalar, anchor, alias, tag) and still fails to parse is
# broken YAML, not prose with a colon in it: the fallback refuses it rather than guess.
_YAML_SYNTAX_START = tuple("\"'[{|>&*!")
# ...except Markdown emphasis, which YAML reads as an alias: `description: **ARCHITECT**: Designs ...`.
_EMPHASIS_RE = re.compile(r"(\*\*?)[^*\s][^*]*\1")
# Claude Code's frontmatter fields (Claude Code docs, sub-agents page) and coord's `expertise`.
_AGENT_FIELDS = frozenset({*KNOWN_FIELDS, "permissionMode", "maxTurns", "skills", "hooks", "memory", "background",
                           "isolation"})


class AgentFileError(FileFormatError):
    """An agent file is not a valid Claude Code subagent file; it was left untouched."""

    @property
    def reason(self) -> str:
        return str(self.details.get("reason", ""))


@dataclass
class _RoundTrip:
    """What the writer needs to reproduce the original bytes and to see what the caller changed."""

    bom: str
    open_fence: str
    frontmatter: str
    close_fence: str
    newline: str
    data: CommentedMap
    original: dict[str, Any]
    lenient: bool = False  # the frontmatter is not valid YAML: the writer must not edit it
    # The file as it is, when it was read with its leading blank lines and indentation removed: the writer
    # gives it back unchanged and refuses any edit.
    indented_text: str | None = None


@dataclass
class AgentFile:
    name: str
    description: str
    body: str = ""
    tools: list[str] | None = None  # None: the agent inherits every tool
    disallowed_tools: list[str] | None = None
    model: str | None = None
    mcp_servers: list[str] = field(default_factory=list)
    expertise: list[str] = field(default_factory=list)
    expertise_declared: bool = False  # True when the file has an `expertise:` field
    color: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    path: Path | None = None
    # (reason, message) for what was accepted but should be fixed; reason LENIENT_REASON: the frontmatter is
    # not valid YAML and was read as `key: value` lines (sync may report it; coord will not edit the file).
    warnings: list[tuple[str, str]] = field(default_factory=list)
    _rt: _RoundTrip | None = field(default=None, repr=False, compare=False)


def _where(path: Path | None) -> str:
    return str(path) if path else "<agent text>"


def _fail(reason: str, path: Path | None, message: str, **details: Any) -> AgentFileError:
    return AgentFileError(f"{_where(path)}: {message}", path=str(path) if path else None, reason=reason,
                          **details)


# ---- names and paths ---------------------------------------------------------------------------------


def validate_agent_name(name: object) -> str:
    """Return `name` if it is a valid agent name (it becomes a filename, so nothing else may pass)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"agent name must be a non-empty string, not {name!r}; use lowercase letters, "
                           "digits and hyphens", field="name", reason="invalid_name")
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name) or name.endswith(".md"):
        raise InvalidInput(
            f"agent name {name[:80]!r} is invalid: use 1-{MAX_NAME_LENGTH} lowercase letters and digits, "
            "joined by single hyphens or dots (for example 'code-reviewer' or 'powershell-5.1-expert'), "
            "not ending in '.md'", field="name", reason="invalid_name")
    return name


def agent_path(folder: Path, name: str) -> Path:
    """The file for agent `name` in `folder`; the name is validated and the result cannot leave it."""
    path = folder / f"{validate_agent_name(name)}.md"
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        raise InvalidInput(f"agent name {name!r} would leave {folder}", field="name", reason="invalid_name")
    return path


# ---- reading -----------------------------------------------------------------------------------------


def _yaml() -> YAML:
    # One instance per call: ruamel YAML objects are not safe to share between threads.
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1_000_000  # never fold a long description across lines
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


_loaders = threading.local()


def _loader(roundtrip: bool) -> YAML:
    """A per-thread YAML instance for loading (building one costs as much as loading a small file).

    The safe loader skips the comment bookkeeping that makes round-trip loading slow, and uses libyaml's
    parser when ruamel.yaml.clib is installed (about 4x faster again). Either way values are resolved by
    ruamel's YAML 1.2 resolver, as in round-trip mode, so a value never changes type between the two.
    """
    key = "rt" if roundtrip else "safe"
    yaml = getattr(_loaders, key, None)
    if yaml is None:
        yaml = _yaml() if roundtrip else YAML(typ="safe")
        setattr(_loaders, key, yaml)
    return yaml


def _plain(value: Any) -> Any:
    """ruamel's round-trip types as plain Python values (for `extra` and for comparisons)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def _str_list(value: Any, key: str, path: Path | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [t.strip() for t in _TOOL_SPLIT_RE.split(value) if t.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v).strip() for v in value if v.strip()]
    raise _fail("invalid_field", path, f"field {key!r} must be a comma-separated string or a list of "
                "strings", field=key)


def _mcp_names(value: Any, path: Path | None) -> list[str]:
    items = list(value) if isinstance(value, dict) else value
    if isinstance(items, str):
        return _str_list(items, "mcpServers", path) or []
    names: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            names.append(str(item))
        elif isinstance(item, dict) and all(isinstance(k, str) for k in item):
            names.extend(str(k) for k in item)
        else:
            raise _fail("invalid_field", path, "field 'mcpServers' must list server names or "
                        "{name: config} mappings", field="mcpServers")
    return names


def _optional_str(data: CommentedMap, key: str, path: Path | None) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    raise _fail("invalid_field", path, f"field {key!r} must be a string", field=key)


def _fold(pieces: list[str]) -> str:
    """Lines of a plain value joined as YAML folds a plain scalar: a line break is a space, a blank line a
    newline."""
    out, blanks = "", 0
    for piece in pieces:
        if not piece:
            blanks += 1
            continue
        if out:
            out += "\n" * blanks if blanks else " "
        out, blanks = out + piece, 0
    return out


class _NotLenient(Exception):
    """The frontmatter cannot be read leniently either: `line` (of the file) and what is wrong there."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


def _lenient_value(key_line: str, key: str, first: str, rest: list[str], line: int) -> Any:
    """The value of one `key: ...` entry (its line, number `line`, plus its continuation lines).

    An entry that is valid YAML on its own (a list, a block scalar, a quoted string, a number) keeps its YAML
    value; otherwise its text is taken as it stands, a `- item` list as a list of strings.
    """
    try:
        loaded = _loader(False).load("\n".join([key_line, *rest, ""]))  # ends in a line break, as in the file
    except YAMLError:
        loaded = None
    if isinstance(loaded, dict) and list(loaded) == [key]:
        return loaded[key]
    if first.startswith(_YAML_SYNTAX_START) and not _EMPHASIS_RE.match(first):
        raise _NotLenient(line, f"the value of {key!r} starts YAML syntax ({first[0]!r}) that does not parse")
    texts = [text.strip() for text in rest]
    for offset, text in enumerate(texts, start=1):
        field_match = _LENIENT_KEY_RE.fullmatch(text)
        if field_match and field_match.group(1) in _AGENT_FIELDS:
            # Most likely a mis-indented field: folding it into the value would silently drop it (an
            # indented `tools:` would leave the agent with every tool).
            raise _NotLenient(line + offset, f"indented {field_match.group(1)!r} line inside the value of "
                              f"{key!r}; move it to column 0 or quote the value")
    items = [text for text in texts if text]
    if not first and items and all(t == "-" or t.startswith(("- ", "-\t")) for t in items):
        return [t[1:].strip() for t in items]
    return _fold([first, *texts])


def _lenient_frontmatter(frontmatter: str) -> dict[str, Any]:
    """Frontmatter that is not valid YAML read as top-level `key: value` lines; _NotLenient if it is not.

    A key is `[A-Za-z_][A-Za-z0-9_-]*:` at column 0 followed by a space, a tab or the line end; the rest of
    its line is the value, and the indented lines (or column-0 `- item` lines) after it continue it. Blank
    lines and column-0 `#` comments are skipped. Refused: any other column-0 line, including one before the
    first key; an indented line before the first key; a key given twice; a value that starts YAML syntax
    (quote, `[`, `{`, `|`, `>`, `&`, `*`, `!`) but does not parse, unless it opens Markdown emphasis
    (`**Architect**: ...`); an indented agent field such as `tools:` inside a value.
    """
    entries: list[tuple[int, str, str, str, list[str]]] = []  # line number, key line, key, value, continuation
    for number, line in enumerate(re.split(r"\r\n|\r|\n", frontmatter), start=2):  # line 1 is the fence
        if not line.strip():
            if entries:
                entries[-1][4].append("")
            continue
        if line.startswith("#"):
            continue
        match = _LENIENT_KEY_RE.fullmatch(line)
        if match:
            if any(match.group(1) == entry[2] for entry in entries):
                raise _NotLenient(number, f"duplicate key {match.group(1)!r}")
            entries.append((number, line, match.group(1), (match.group(2) or "").strip(), []))
        elif entries and (line[0] in " \t" or line == "-" or line.startswith(("- ", "-\t"))):
            entries[-1][4].append(line)
        elif not entries and line[0] in " \t":
            raise _NotLenient(number, "an indented line before the first 'key: value' line")
        else:
            raise _NotLenient(number, "not a 'key: value' line (a key at the start of the line, then ': ')")
    return {key: _lenient_value(key_line, key, first, rest, number)
            for number, key_line, key, first, rest in entries}


def _first_content_line(frontmatter: str) -> int:
    """The file line (1-based) of the frontmatter's first line that is not blank or a comment."""
    for number, line in enumerate(re.split(r"\r\n|\r|\n", frontmatter), start=2):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return 2


def parse_agent_text(text: str, path: Path | None = None, *, roundtrip: bool = True) -> AgentFile:
    """Parse and validate an agent file's text; raise AgentFileError (with `details.reason`) if bad.

    `roundtrip=False` (folder sync, which only reads) validates exactly the same way, about twice as fast,
    but returns an agent that cannot be written back in place: render_agent would re-create its text.

    Frontmatter that is not valid YAML is read by the lenient fallback (`_lenient_frontmatter`) when it can
    be; the agent then carries a LENIENT_REASON warning. When it cannot, the YAML error is raised as before.
    """
    if "\x00" in text:
        raise _fail("binary", path, "the file contains NUL bytes; an agent file is UTF-8 text")
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    rest = text[len(bom):]
    opened = _OPEN_FENCE_RE.match(rest)
    closed = _CLOSE_FENCE_RE.search(rest, opened.end()) if opened else None
    if not opened:
        unindented = _unindented(rest)
        if unindented is not None:
            return _read_unindented(text, bom + unindented, path, roundtrip)
        raise _fail("missing_frontmatter", path, "the file must start with YAML frontmatter between two "
                    "'---' lines (name and description); line 1 is not '---'", line=1)
    if not closed:
        raise _fail("missing_frontmatter", path, "the '---' on line 1 opens YAML frontmatter (name and "
                    "description) but no '---' line closes it", line=1)
    frontmatter = rest[opened.end():closed.start()]
    warnings: list[tuple[str, str]] = []
    try:
        data = _loader(roundtrip).load(frontmatter)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else None  # +1 for the fence, +1 for 1-based lines
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        try:
            data = _lenient_frontmatter(frontmatter)
        except _NotLenient as refusal:
            # The YAML error as before; the lenient reading's own complaint too when it is about another line
            # (a stray line before the first key, say, which YAML only trips over a line later).
            also = f"; line {refusal.line}: {refusal.problem}" if refusal.line != line else ""
            first = refusal.line if line is None else min(line, refusal.line)
            raise _fail("invalid_yaml", path, f"invalid YAML in the frontmatter (line {line}): {problem}{also}",
                        line=first) from exc
        # Not the parser's wording of the problem: libyaml (sync) and ruamel (round trip) word it differently.
        warnings.append((LENIENT_REASON, f"{_where(path)}: the frontmatter is not valid YAML (line {line}), so it "
                         "was read as plain 'key: value' lines and coord will not edit it; quote the value on "
                         f"line {line} (a value holding ': ' must be quoted in YAML)"))
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        line = _first_content_line(frontmatter)
        raise _fail("invalid_yaml", path, f"the frontmatter must be a YAML mapping of 'key: value' lines, "
                    f"not a {'list' if isinstance(data, list) else 'single value'} (line {line})", line=line)
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        raise _fail("missing_name", path, "the frontmatter has no 'name' field")
    try:
        validate_agent_name(name)
    except InvalidInput as exc:
        raise _fail("invalid_name", path, exc.message, field="name") from exc
    description = data.get("description")
    if description is None or (isinstance(description, str) and not description.strip()):
        raise _fail("missing_description", path, "the frontmatter has no 'description' field; it says "
                    "when to use the agent")
    if not isinstance(description, str):
        raise _fail("invalid_field", path, "field 'description' must be a string", field="description")
    declared = _str_list(data.get("expertise"), "expertise", path)
    agent = AgentFile(
        name=str(name),
        description=str(description),
        body=rest[closed.end():],
        tools=_str_list(data.get("tools"), "tools", path),
        disallowed_tools=_str_list(data.get("disallowedTools"), "disallowedTools", path),
        model=_optional_str(data, "model", path),
        mcp_servers=_mcp_names(data.get("mcpServers"), path),
        expertise=derive_expertise(str(name), str(description), declared),
        expertise_declared=bool(declared),
        color=_optional_str(data, "color", path),
        extra={_plain(k): _plain(v) for k, v in data.items() if k not in KNOWN_FIELDS},
        content_hash=fsutil.sha256_bytes(text.encode("utf-8")),
        path=path,
        warnings=warnings,
    )
    if not roundtrip:
        return agent
    newline = "\r\n" if opened.group().endswith("\r\n") else "\n"
    tracked = (*_ATTR_TO_KEY, "expertise_declared", "extra", "body")
    original = copy.deepcopy({attr: getattr(agent, attr) for attr in tracked})
    agent._rt = _RoundTrip(bom, opened.group(), frontmatter, closed.group(), newline, data, original,
                           lenient=bool(warnings))
    return agent


def _unindented(text: str) -> str | None:
    """`text` without its leading blank lines and common indentation, when that is what keeps it from
    starting with the '---' fence (a file pasted inside a code block or an indented list); else None."""
    lines = text.splitlines(keepends=True)
    while lines and not lines[0].strip():
        lines.pop(0)
    unindented = textwrap.dedent("".join(lines))
    return unindented if unindented != text and _OPEN_FENCE_RE.match(unindented) else None


def _read_unindented(text: str, unindented: str, path: Path | None, roundtrip: bool) -> AgentFile:
    """The agent of a file that only reads once unindented, with a warning; the writer will not edit it."""
    agent = parse_agent_text(unindented, path, roundtrip=roundtrip)
    agent.content_hash = fsutil.sha256_bytes(text.encode("utf-8"))
    agent.warnings.insert(0, (INDENTED_REASON, f"{_where(path)}: the file starts with blank lines or is indented, "
                              "so it was read with those removed; Claude Code reads an agent file only when its "
                              "first line is '---': remove the indentation, and coord can then edit it too"))
    if agent._rt is not None:
        agent._rt = dataclasses.replace(agent._rt, indented_text=text)
    return agent


def read_agent_bytes(path: Path, max_bytes: int = MAX_AGENT_BYTES) -> bytes:
    """The bytes of `path`; never reads more than `max_bytes` + 1 bytes, never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: agent file does not exist", path=str(path), reason="missing") from exc
    except OSError as exc:
        raise _fail("unreadable", path, f"cannot open the file ({exc.strerror}); check its permissions") \
            from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _fail("unreadable", path, "not a regular file (a directory, FIFO or device)")
        if info.st_size > max_bytes:
            raise _fail("too_large", path, f"{info.st_size} bytes is over the {max_bytes}-byte limit",
                        size=info.st_size, limit=max_bytes)
        chunks, total = [], 0
        while chunk := os.read(fd, max_bytes + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # the file grew after fstat
                raise _fail("too_large", path, f"more than the {max_bytes}-byte limit", limit=max_bytes)
    except OSError as exc:
        raise _fail("unreadable", path, f"cannot read the file ({exc.strerror})") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def parse_agent_bytes(raw: bytes, path: Path | None = None, *, roundtrip: bool = True) -> AgentFile:
    """Decode (UTF-8, no NUL bytes) and parse an agent file's bytes; see parse_agent_text."""
    if b"\x00" in raw:
        raise _fail("binary", path, "the file contains NUL bytes; an agent file is UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail("not_utf8", path, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8",
                    offset=exc.start) from exc
    return parse_agent_text(text, path, roundtrip=roundtrip)


def read_agent_file(path: Path, max_bytes: int = MAX_AGENT_BYTES, *, roundtrip: bool = True) -> AgentFile:
    """Read and parse `path` (read_agent_bytes, then parse_agent_bytes)."""
    return parse_agent_bytes(read_agent_bytes(path, max_bytes), path, roundtrip=roundtrip)

