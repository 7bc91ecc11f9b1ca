"""Rendering a new Claude Code agent file from `config/agent-template.md`.

The template is Markdown with YAML frontmatter and `string.Template` placeholders (`$name`,
`$description`, `$tools`, `$model`, `$expertise`, `$body_hint`; write `$$` for a literal dollar). No code
runs: substitution is plain text. Why two kinds of substitution: a value in the frontmatter is written
as a YAML double-quoted scalar with every risky character escaped, so a description holding quotes,
colons, `---` or newlines stays one string; in the body the same value is written as plain Markdown.
The result's frontmatter is parsed back before it is returned, so a broken template is caught here,
not by the agent host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from string import Template

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from coord.catalog import shipped_config_dir
from coord.errors import FileFormatError, InvalidInput

__all__ = ["load_agent_template", "render_agent_template", "yaml_quote"]

AGENT_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # Claude Code agent names; also the file name
_MODEL = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")
MAX_DESCRIPTION = 10_000
MAX_BODY_HINT = 50_000
_TOOLS_LINE = re.compile(r"^\s*tools:\s*\$\{?tools\}?\s*$")
# YAML's printable set (spec 5.1); anything else must be escaped inside a double-quoted scalar.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _needs_escape(code: int) -> bool:
    return (
        code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F
        or code in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF)  # line separators YAML 1.1 folds; BOM
    )


def yaml_quote(value: str) -> str:
    """`value` as a YAML double-quoted scalar that any YAML 1.1/1.2 parser reads back unchanged."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xD800 <= code <= 0xDFFF:
            raise InvalidInput("text contains a lone surrogate character; it cannot be written as UTF-8")
        elif _needs_escape(code):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def load_agent_template(path: Path | None = None) -> str:
    """The template text; the shipped `config/agent-template.md` unless `path` is given."""
    path = path or shipped_config_dir() / "agent-template.md"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read the agent template {path}: {exc}") from None


def _text(label: str, value: object, *, limit: int, one_line: bool = False, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{label} must be text, not {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise InvalidInput(f"{label} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{label} is longer than {limit} characters")
    if "\x00" in value or (one_line and any(c in value for c in "\r\n")):
        raise InvalidInput(f"{label} must not contain NUL{' or line breaks' if one_line else ''}")
    return value


def _split(template_text: str) -> tuple[str, str]:
    """(frontmatter lines, body) of a template that opens with a `---` block."""
    lines = template_text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise FileFormatError("the agent template must start with a '---' frontmatter line")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "\n".join(lines[1:index]), "\n".join(lines[index + 1:])
    raise FileFormatError("the agent template's frontmatter has no closing '---' line")


def _substitute(part: str, values: dict[str, str], where: str) -> str:
    try:
        return Template(part).substitute(values)
    except KeyError as exc:
        raise FileFormatError(f"the agent template {where} uses an unknown placeholder ${exc.args[0]}; "
                              f"known: {', '.join('$' + k for k in sorted(values))}") from None
    except ValueError as exc:
        raise FileFormatError(f"the agent template {where} has a stray '$' ({exc}); write $$ for a dollar "
                              "sign") from None


def render_agent_template(
    template_text: str,
    *,
    name: str,
    description: str,
    expertise: Sequence[str],
    tools: Sequence[str] | None,
    body_hint: str,
    model: str = "inherit",
) -> str:
    """The agent Markdown file. `tools=None` drops the `tools:` line, so the agent inherits every tool."""
    if not isinstance(name, str) or len(name) > 64 or not AGENT_NAME.match(name):
        raise InvalidInput(f"agent name {name!r} must be lowercase letters, digits and single hyphens "
                           "(at most 64), such as 'sql-reviewer'")
    _text("description", description, limit=MAX_DESCRIPTION)
    _text("body_hint", body_hint, limit=MAX_BODY_HINT, empty_ok=True)
    if not isinstance(model, str) or not _MODEL.match(model):
        raise InvalidInput(f"model {model!r} must be an alias such as 'sonnet', 'opus', 'haiku' or 'inherit'")
    if isinstance(expertise, str) or (tools is not None and isinstance(tools, str)):
        raise InvalidInput("expertise and tools must be lists of names, not one string")
    tags = [_text("an expertise tag", t, limit=100, one_line=True).strip() for t in expertise]
    tool_names = None if tools is None else [_text("a tool name", t, limit=200, one_line=True).strip()
                                             for t in tools]
    if tool_names and any("," in t for t in tool_names):
        raise InvalidInput("a tool name must not contain ',' (the tools field is comma-separated)")

    front, body = _split(template_text)
    if tool_names is None:
        front = "\n".join(line for line in front.split("\n") if not _TOOLS_LINE.match(line))
    yaml_values = {
        "name": yaml_quote(name), "description": yaml_quote(description), "model": yaml_quote(model),
        "tools": yaml_quote(", ".join(tool_names or [])),
        "expertise": "[" + ", ".join(yaml_quote(t) for t in tags) + "]",
        "body_hint": yaml_quote(body_hint),
    }
    body_values = {
        "name": name, "description": description.strip(), "model": model, "body_hint": body_hint.strip(),
        "tools": ", ".join(tool_names) if tool_names is not None else "all tools of the session (inherited)",
        "expertise": "\n".join(f"- {t}" for t in tags) or "- (none listed)",
    }
    front = _substitute(front, yaml_values, "frontmatter")
    rendered = "---\n" + front + "\n---\n" + _substitute(body, body_values, "body")
    _check_frontmatter(front)
    return rendered


def _check_frontmatter(front: str) -> None:
    """Parse the rendered frontmatter back: the template, not the values, is then the only suspect."""
    try:
        data = YAML(typ="safe", pure=True).load(front)
    except YAMLError as exc:
        raise FileFormatError(f"the agent template renders invalid YAML frontmatter: {exc}") from None
    if not isinstance(data, dict):
        raise FileFormatError("the agent template's frontmatter must be a YAML mapping")
