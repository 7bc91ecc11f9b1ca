"""Claude Code subagent files: parse, validate, derive expertise tags, and write back without damage.

A file is `---` + YAML frontmatter + `---` + Markdown body. Invariant 5 shapes the writer: an unmodified
agent renders to the exact bytes it was read from, and a modified one changes only the lines of the
fields that changed (other fields keep their order, quoting, comments and line endings). Each changed
field is re-emitted in place by ruamel.yaml and the result re-parsed to prove nothing else moved; when
that proof fails (anchors, flow-style frontmatter, odd line breaks) the whole frontmatter is re-dumped in
ruamel's round-trip mode instead, which keeps values and comments but not every byte.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import re
import stat
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString as DoubleQuoted
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString
from ruamel.yaml.scalarstring import SingleQuotedScalarString as SingleQuoted

from coord import fsutil
from coord.errors import Conflict, FileFormatError, InvalidInput, NotFound

MAX_AGENT_BYTES = 256 * 1024
MAX_NAME_LENGTH = 64
# A cap keeps a rambling description from flooding the registry's tag table.
MAX_DERIVED_TAGS = 40
NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

# Frontmatter key -> AgentFile attribute, in the order new files list them.
KNOWN_FIELDS = {"name": "name", "description": "description", "tools": "tools",
                "disallowedTools": "disallowed_tools", "model": "model", "mcpServers": "mcp_servers",
                "expertise": "expertise", "color": "color"}
_ATTR_TO_KEY = {attr: key for key, attr in KNOWN_FIELDS.items()}
_DELETE = object()
_OPEN_FENCE_RE = re.compile(r"---[ \t]*(?:\r\n|\n)")
_CLOSE_FENCE_RE = re.compile(r"^---[ \t]*(?:\r\n|\n|\Z)", re.MULTILINE)
# Commas inside parentheses belong to a permission pattern such as `Bash(git diff:*, git log:*)`.
_TOOL_SPLIT_RE = re.compile(r",(?![^()]*\))")


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
    _rt: _RoundTrip | None = field(default=None, repr=False, compare=False)


def _fail(reason: str, path: Path | None, message: str, **details: Any) -> AgentFileError:
    where = str(path) if path else "<agent text>"
    return AgentFileError(f"{where}: {message}", path=str(path) if path else None, reason=reason, **details)


# ---- names and paths ---------------------------------------------------------------------------------


def validate_agent_name(name: object) -> str:
    """Return `name` if it is a valid agent name (it becomes a filename, so nothing else may pass)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"agent name must be a non-empty string, not {name!r}; use lowercase letters, "
                           "digits and hyphens", field="name", reason="invalid_name")
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"agent name {name[:80]!r} is invalid: use 1-{MAX_NAME_LENGTH} lowercase letters, digits and "
            "single hyphens (for example 'code-reviewer')", field="name", reason="invalid_name")
    return name


def agent_path(folder: Path, name: str) -> Path:
    """The file for agent `name` in `folder`; the name is validated and the result cannot leave it."""
    path = folder / f"{validate_agent_name(name)}.md"
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        raise InvalidInput(f"agent name {name!r} would leave {folder}", field="name", reason="invalid_name")
    return path


# ---- expertise tags ----------------------------------------------------------------------------------

def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _wordset("""
a about above across after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either etc e.g i.e few for from
further had has have having he her here hers him his how i if in into is it its itself just like may me
might more most must my no nor not now of off on once one only or other our ours out over own per same
she should so some such than that the their them then there these they this those through to too two
under until up upon very via vs was we were what when where which while who whom why will with within
without would you your yours
""")
# Words that describe every agent and so tell the registry nothing about this one.
_GENERIC = _wordset("""
agent agents subagent subagents assistant assistants helper expert experts expertise specialist
specialists specializing specialized specialize specializes specialising specialised focused focusing
focus use uses used using usage proactively proactive elite senior master masters mastering mastery
comprehensive advanced modern rigorous intelligent professional powerful best deep various complex
need needs needed help helps handle handles handling include includes including ensure ensures provide
provides task tasks work works working skilled experienced knowledge invoke invoked call called
immediately whenever always automatically should must builds creates implements generates based want
wants thorough thoroughly recently significant appropriate specific relevant existing new
""")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
_SEGMENT_RE = re.compile(r"[,;:!?()\[\]{}\"'`<>|*]+|\.(?:\s|$)")
_EXAMPLES_RE = re.compile(r"<example|\bexamples?\s*:", re.IGNORECASE)


@functools.lru_cache(maxsize=1 << 16)  # pure, and called once per word of every description
def normalize_tag(s: str) -> str:
    """Canonical form of an expertise tag; "" when nothing is left.

    NFKC, lowercase, whitespace/underscores/slashes -> hyphens, runs of hyphens collapsed. Within each
    hyphen-separated token only letters, digits and `+ # .` survive; dots are stripped at either end and
    `+`/`#` at the start, so "C++" -> "c++", "C#" -> "c#", "Node.js." -> "node.js", "CI/CD" -> "ci-cd",
    "Machine_Learning" -> "machine-learning", ".NET" -> "net". The same rules apply to queries.
    """
    text = unicodedata.normalize("NFKC", s).lower().strip()
    text = re.sub(r"[\s_/\\-]+", "-", text)
    tokens = []
    for raw in text.split("-"):
        token = "".join(ch for ch in raw if ch.isalnum() or ch in "+#.").strip(".").lstrip("+#")
        if token:
            tokens.append(token)
    return "-".join(tokens)


def _unique(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(t for t in tags if t))


def _salient(tag: str) -> bool:
    return (len(tag) > 1 or tag in {"c", "r"}) and tag not in _STOPWORDS and tag not in _GENERIC \
        and not tag.replace(".", "").isdigit()


def derive_expertise(name: str, description: str, declared: list[str] | None) -> list[str]:
    """Expertise tags for an agent, normalized with `normalize_tag`.

    A non-empty declared list wins. Otherwise: the name's salient parts, then the salient words of the
    description, then pairs of adjacent salient words ("visual-regression"), each in order of appearance,
    capped at MAX_DERIVED_TAGS. The description is read up to its first example block; words of the
    "use this agent when you need..." kind are in the stopword and generic lists.
    """
    if declared:
        tags = _unique([normalize_tag(t) for t in declared])
        if tags:
            return tags
    words = [t for t in (normalize_tag(p) for p in name.split("-")) if _salient(t)]
    text = _EXAMPLES_RE.split(description, maxsplit=1)[0].replace("\\n", " ")
    pairs = []
    for sentence in _SENTENCE_RE.split(text):
        for segment in _SEGMENT_RE.split(sentence):
            run: list[str] = []
            for word in segment.replace("/", " ").split():  # "CI/CD" -> ci, cd and the pair ci-cd
                tag = normalize_tag(word)
                if _salient(tag):
                    words.append(tag)
                    if run:
                        pairs.append(f"{run[-1]}-{tag}")
                    run.append(tag)
                else:
                    run = []
    return _unique(words + pairs)[:MAX_DERIVED_TAGS]


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


def parse_agent_text(text: str, path: Path | None = None, *, roundtrip: bool = True) -> AgentFile:
    """Parse and validate an agent file's text; raise AgentFileError (with `details.reason`) if bad.

    `roundtrip=False` (folder sync, which only reads) validates exactly the same way, about twice as fast,
    but returns an agent that cannot be written back in place: render_agent would re-create its text.
    """
    if "\x00" in text:
        raise _fail("binary", path, "the file contains NUL bytes; an agent file is UTF-8 text")
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    rest = text[len(bom):]
    opened = _OPEN_FENCE_RE.match(rest)
    closed = _CLOSE_FENCE_RE.search(rest, opened.end()) if opened else None
    if not opened or not closed:
        raise _fail("missing_frontmatter", path, "the file must start with YAML frontmatter between two "
                    "'---' lines (name and description)")
    frontmatter = rest[opened.end():closed.start()]
    try:
        data = _loader(roundtrip).load(frontmatter)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else None  # +1 for the fence, +1 for 1-based lines
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _fail("invalid_yaml", path, f"invalid YAML in the frontmatter (line {line}): {problem}",
                    line=line) from exc
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise _fail("invalid_yaml", path, "the frontmatter must be a YAML mapping of 'key: value' lines")
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
    )
    if not roundtrip:
        return agent
    newline = "\r\n" if opened.group().endswith("\r\n") else "\n"
    tracked = (*_ATTR_TO_KEY, "expertise_declared", "extra", "body")
    original = copy.deepcopy({attr: getattr(agent, attr) for attr in tracked})
    agent._rt = _RoundTrip(bom, opened.group(), frontmatter, closed.group(), newline, data, original)
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


# ---- editing and writing -----------------------------------------------------------------------------


def set_field(agent: AgentFile, key: str, value: Any) -> AgentFile:
    """Set a frontmatter field (by its YAML key, e.g. "mcpServers", or attribute name) in place.

    None removes an optional field. Unknown keys go to `extra`. Derived expertise follows a new name or
    description. Returns `agent`.
    """
    attr = KNOWN_FIELDS.get(key, key if key in _ATTR_TO_KEY else None)
    if attr is None:
        if value is None:
            agent.extra.pop(key, None)
        else:
            agent.extra[key] = value
        return agent
    if attr == "name":
        validate_agent_name(value)
    elif attr == "description" and (not isinstance(value, str) or not value.strip()):
        raise InvalidInput("description must be a non-empty string", field="description")
    elif attr in ("tools", "disallowed_tools", "expertise", "mcp_servers") and value is not None:
        value = _str_list(value, _ATTR_TO_KEY[attr], agent.path)
    if attr == "expertise":
        agent.expertise_declared = bool(value)
        value = derive_expertise(agent.name, agent.description, value)
    elif attr == "mcp_servers":
        value = value or []
    setattr(agent, attr, value)
    if attr in ("name", "description") and not agent.expertise_declared:
        agent.expertise = derive_expertise(agent.name, agent.description, None)
    return agent


def _styled(value: str, original: Any) -> str:
    """`value` in the quoting style the original scalar used, so an edit keeps the file's look."""
    kind = type(original)
    if kind in (LiteralScalarString, FoldedScalarString):
        return kind(value)
    if "\n" in value or kind is DoubleQuoted:
        return DoubleQuoted(value)
    return SingleQuoted(value) if kind is SingleQuoted else value


def _node(attr: str, value: Any, original: Any) -> Any:
    if value is None or (attr in ("mcp_servers", "expertise") and not value):
        return _DELETE
    if isinstance(value, str):
        return _styled(value, original)
    if attr == "mcp_servers" and isinstance(original, list):
        by_name = {n: item for item in original for n in ([item] if isinstance(item, str) else item)}
        value = [by_name.get(n, n) for n in value]
    if attr in ("tools", "disallowed_tools") and not isinstance(original, list):
        return _styled(", ".join(value), original)  # the comma form Claude Code's docs show
    if attr == "expertise" and isinstance(original, str):
        return _styled(", ".join(value), original)
    if isinstance(value, list):
        seq = CommentedSeq(value)
        if attr == "expertise" or (isinstance(original, CommentedSeq) and original.fa.flow_style()):
            seq.fa.set_flow_style()
        return seq
    return value


def _expertise_change(agent: AgentFile, rt: _RoundTrip) -> Any:
    """The `expertise:` node to write, _DELETE, or None for no change.

    Derived tags are never written back: they would freeze today's derivation into the file. Tags the
    caller declared (or a list that differs from every derivation) are.
    """
    was_declared, before = rt.original["expertise_declared"], rt.original["expertise"]
    now = [t for t in (normalize_tag(t) for t in agent.expertise) if t]
    derived_now = derive_expertise(agent.name, agent.description, None)
    custom = agent.expertise_declared or now not in ([derived_now] if was_declared else [before, derived_now])
    if custom and (not was_declared or now != before):
        return _node("expertise", now, rt.data.get("expertise"))
    if was_declared and not custom:
        return _DELETE
    return None


def _changes(agent: AgentFile, rt: _RoundTrip) -> dict[str, Any]:
    """Frontmatter key -> new node (or _DELETE) for every field that differs from what was parsed."""
    out: dict[str, Any] = {}
    for attr, key in _ATTR_TO_KEY.items():
        if attr == "expertise":
            node = _expertise_change(agent, rt)
            if node is not None:
                out[key] = node
        elif getattr(agent, attr) != rt.original[attr]:
            out[key] = _node(attr, getattr(agent, attr), rt.data.get(key))
    old_extra = rt.original["extra"]
    for key in [*old_extra, *(k for k in agent.extra if k not in old_extra)]:
        if key not in agent.extra:
            out[key] = _DELETE
        elif key not in old_extra or agent.extra[key] != old_extra[key]:
            out[key] = agent.extra[key]
    return out


def _dump(data: CommentedMap, newline: str) -> str:
    buf = io.StringIO()
    _yaml().dump(data, buf)
    return buf.getvalue().replace("\n", newline)


def _expected(data: CommentedMap, changes: dict[str, Any]) -> CommentedMap:
    edited = copy.deepcopy(data)
    for key, node in changes.items():
        if node is _DELETE:
            edited.pop(key, None)
        else:
            edited[key] = node
    return edited


def _splice(rt: _RoundTrip, changes: dict[str, Any]) -> str | None:
    """Rewrite only the lines of changed keys; None when the frontmatter's layout does not allow it."""
    data = rt.data
    lines = [m.group() for m in re.finditer(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", rt.frontmatter)]
    positions = [data.lc.key(k) for k in data]
    starts = [line for line, _ in positions]
    if any(col != 0 for _, col in positions) or starts != sorted(set(starts)):
        return None
    out = list(lines)
    for index, key in reversed(list(enumerate(data))):
        if key not in changes:
            continue
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        while end > starts[index] + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1  # blank and column-0 comment lines introduce what follows; they stay
        new = "" if changes[key] is _DELETE else _dump(CommentedMap({key: changes[key]}), rt.newline)
        comment = (data.ca.items.get(key) or [None] * 4)[2]
        if new and comment is not None and comment.start_mark.line == starts[index] \
                and new.count(rt.newline) == 1:
            # Keep a trailing `# comment` on a one-line field: at its old column, or after the old gap.
            content, column = new[: -len(rt.newline)], comment.start_mark.column
            gap = column - len(lines[starts[index]][:column].rstrip())
            pad = " " * max(gap, column - len(content))
            new = content + pad + comment.value.split("\n", 1)[0] + rt.newline
        out[starts[index]:end] = [new]
    if out and not out[-1].endswith(("\n", "\r")):
        out[-1] += rt.newline
    for key, node in changes.items():
        if key not in data and node is not _DELETE:
            out.append(_dump(CommentedMap({key: node}), rt.newline))
    return "".join(out)


def _edit_frontmatter(rt: _RoundTrip, changes: dict[str, Any]) -> str:
    expected = _expected(rt.data, changes)
    spliced = _splice(rt, changes)
    if spliced is not None:
        try:
            reloaded = _yaml().load(spliced)
        except YAMLError:
            reloaded = None
        if isinstance(reloaded, dict) and list(reloaded) == list(expected) \
                and _plain(reloaded) == _plain(expected):
            return spliced
    return _dump(expected, rt.newline)


def _fresh_frontmatter(agent: AgentFile) -> CommentedMap:
    data = CommentedMap()
    for attr, key in _ATTR_TO_KEY.items():
        value = getattr(agent, attr)
        if attr == "expertise" and not agent.expertise_declared \
                and value == derive_expertise(agent.name, agent.description, None):
            continue
        node = _node(attr, value, None)
        if node is not _DELETE:
            data[key] = node
    for key, value in agent.extra.items():
        if key in data:
            raise InvalidInput(f"extra field {key!r} clashes with a standard field", field=key)
        data[key] = value
    return data


def render_agent(agent: AgentFile) -> str:
    """The file text for `agent`: the original bytes if nothing changed, else a minimal edit of them."""
    rt = agent._rt
    if rt is None and agent.content_hash:
        # Parsed with roundtrip=False: rendering afresh would drop the file's comments and layout.
        raise InvalidInput("this agent was parsed without round-trip data; re-read it with roundtrip=True "
                           "before writing it back", path=str(agent.path) if agent.path else None)
    if rt is None:
        body = agent.body if agent.body.startswith("\n") else "\n" + agent.body
        text = "---\n" + _dump(_fresh_frontmatter(agent), "\n") + "---\n" + body
    else:
        changes = _changes(agent, rt)
        frontmatter = _edit_frontmatter(rt, changes) if changes else rt.frontmatter
        body, fence = agent.body, rt.close_fence
        if body == rt.original["body"] and not changes:
            return rt.bom + rt.open_fence + frontmatter + fence + body
        if rt.newline == "\r\n" and "\r\n" not in body:
            body = body.replace("\n", "\r\n")  # a new body written with "\n" keeps a CRLF file CRLF
        if body and not fence.endswith("\n"):
            fence += rt.newline
        text = rt.bom + rt.open_fence + frontmatter + fence + body
    parse_agent_text(text, agent.path)  # never hand out text that would not read back
    return text


def new_agent_text(name: str, description: str, body: str, tools: list[str] | None = None,
                   model: str | None = None, expertise: list[str] | None = None,
                   extra: dict[str, Any] | None = None) -> str:
    """Text of a new agent file; raises InvalidInput for a bad name or an empty description."""
    agent = AgentFile(name=validate_agent_name(name), description="")
    for key, value in (("description", description), ("tools", tools), ("model", model),
                       ("expertise", expertise)):
        set_field(agent, key, value)
    agent.extra = dict(extra or {})
    agent.body = body.rstrip("\n") + "\n" if body.strip() else ""
    return render_agent(agent)


def write_agent_file(path: Path, agent: AgentFile, *, overwrite: bool = False) -> AgentFile:
    """Write `agent` to `path` atomically (lock, backup, temp file + rename) and return it re-read.

    Never clobbers: an existing file must still hold the bytes `agent` was parsed from (else Conflict),
    unless `overwrite` is set, and even then a file that does not parse is left alone (invariant 5).
    """
    text = render_agent(agent)
    data = text.encode("utf-8")

    def transform(current: bytes | None) -> bytes:
        if current is None or fsutil.sha256_bytes(current) == agent.content_hash:
            return data
        if not overwrite:
            raise Conflict(f"{path} changed since it was read (or belongs to another agent); re-read it "
                           "and apply the change again", path=str(path))
        try:
            parse_agent_text(current.decode("utf-8"), path)
        except (UnicodeDecodeError, AgentFileError) as exc:
            raise _fail("unparseable_target", path, "the existing file does not parse as an agent file; "
                        "it was left untouched - fix or remove it first") from exc
        return data

    fsutil.update_file(path, transform)
    return parse_agent_text(text, path)
