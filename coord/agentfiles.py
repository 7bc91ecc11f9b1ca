"""Claude Code subagent files: write back without damage; the one import point for reading them too.

A file is `---` + YAML frontmatter + `---` + Markdown body. Invariant 5 shapes the writer: an unmodified
agent renders to the exact bytes it was read from, and a modified one changes only the lines of the
fields that changed (other fields keep their order, quoting, comments and line endings). Each changed
field is re-emitted in place by ruamel.yaml and the result re-parsed to prove nothing else moved; when
that proof fails (anchors, flow-style frontmatter, odd line breaks) the whole frontmatter is re-dumped in
ruamel's round-trip mode instead, which keeps values and comments but not every byte.

Frontmatter that the parser could only read leniently (not valid YAML) is never edited: re-emitting it
would "fix" the user's file behind their back, so render_agent refuses with reason `lenient_frontmatter`.
Such an agent still renders to its exact bytes, and a new body keeps the frontmatter bytes as they are.
A file read only once its leading blank lines and indentation were removed renders to its exact bytes
and is never edited at all (reason `indented_file`).

Parsing and validation are in coord.agentparse and the expertise-tag rules in coord.agenttags; their public
names are re-exported here, where callers import them.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString as DoubleQuoted
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString
from ruamel.yaml.scalarstring import SingleQuotedScalarString as SingleQuoted

from coord import fsutil
from coord.agentparse import (
    _ATTR_TO_KEY,
    INDENTED_REASON,
    KNOWN_FIELDS,
    LENIENT_REASON,
    MAX_AGENT_BYTES,
    MAX_NAME_LENGTH,
    NAME_RE,
    AgentFile,
    AgentFileError,
    _fail,
    _plain,
    _RoundTrip,
    _str_list,
    _yaml,
    agent_path,
    parse_agent_bytes,
    parse_agent_text,
    read_agent_bytes,
    read_agent_file,
    validate_agent_name,
)
from coord.agenttags import MAX_DERIVED_TAGS, derive_expertise, normalize_tag
from coord.errors import Conflict, InvalidInput

_DELETE = object()


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
        if rt.indented_text is not None:
            if changes or agent.body != rt.original["body"]:
                raise _fail(INDENTED_REASON, agent.path, "coord will not edit this agent file ("
                            f"{', '.join(sorted(changes)) or 'body'}): it is indented or starts with blank lines "
                            "and was only read with those removed. Make '---' its first line, then re-read it",
                            fields=sorted(changes), warnings=[m for _, m in agent.warnings])
            return rt.indented_text
        if changes and rt.lenient:
            # Re-emitting the frontmatter would silently "fix" the user's file (and could change what
            # Claude Code reads): the user makes it valid YAML, then coord can edit it.
            raise _fail(LENIENT_REASON, agent.path, "coord will not edit this agent's frontmatter ("
                        f"{', '.join(sorted(changes))}): it is not valid YAML and was only read leniently. "
                        "Make it valid YAML first (quote the value that holds ': '), then re-read the file",
                        fields=sorted(changes), warnings=[m for _, m in agent.warnings])
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


__all__ = [
    "AgentFile",
    "AgentFileError",
    "INDENTED_REASON",
    "KNOWN_FIELDS",
    "LENIENT_REASON",
    "MAX_AGENT_BYTES",
    "MAX_DERIVED_TAGS",
    "MAX_NAME_LENGTH",
    "NAME_RE",
    "agent_path",
    "derive_expertise",
    "new_agent_text",
    "normalize_tag",
    "parse_agent_bytes",
    "parse_agent_text",
    "read_agent_bytes",
    "read_agent_file",
    "render_agent",
    "set_field",
    "validate_agent_name",
    "write_agent_file",
]
