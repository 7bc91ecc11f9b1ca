"""Real-world agent files the strict parser used to refuse: colons in plain values (read leniently, never
edited), dotted names, and expertise tags across dashes. The fixtures are written here, each reproducing a
pattern seen in public collections (no third-party file is copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coord.agentfiles import (
    INDENTED_REASON,
    LENIENT_REASON,
    AgentFileError,
    agent_path,
    derive_expertise,
    new_agent_text,
    normalize_tag,
    parse_agent_text,
    read_agent_file,
    render_agent,
    set_field,
    validate_agent_name,
    write_agent_file,
)
from coord.agentscan import read_file
from coord.errors import FileFormatError, InvalidInput
from coord.fsutil import sha256_bytes

# "Triggers on: '...'" inside an unquoted description: invalid YAML (a second `: ` in a plain scalar), but a
# file Claude Code loads.
TRIGGERS = (
    "---\n"
    "name: backlog-helper\n"
    "description: Use when the user needs to groom or refine a backlog. Triggers on: 'groom backlog', "
    "'sprint refinement', 'clean up backlog'.\n"
    "tools: Read, Write, Edit, Glob, Grep, WebFetch, WebSearch\n"
    "model: sonnet\n"
    "---\n"
    "\n"
    "You groom backlogs.\n"
)
TRIGGERS_DESCRIPTION = ("Use when the user needs to groom or refine a backlog. Triggers on: 'groom backlog', "
                        "'sprint refinement', 'clean up backlog'.")


def _write(tmp_path: Path, text: str | bytes, name: str = "agent.md") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---- lenient frontmatter -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lf", "crlf", "bom"])
def test_colon_in_a_plain_description_is_read_leniently(tmp_path, variant):
    text = TRIGGERS.replace("\n", "\r\n") if variant == "crlf" else TRIGGERS
    raw = (b"\xef\xbb\xbf" if variant == "bom" else b"") + text.encode()
    path = _write(tmp_path, raw)
    agent = read_agent_file(path)
    assert agent.name == "backlog-helper" and agent.description == TRIGGERS_DESCRIPTION
    assert agent.tools == ["Read", "Write", "Edit", "Glob", "Grep", "WebFetch", "WebSearch"]
    assert agent.model == "sonnet" and agent.extra == {}
    assert "groom" in agent.expertise and "backlog" in agent.expertise
    [(reason, message)] = agent.warnings
    assert reason == LENIENT_REASON and str(path) in message and "line 3" in message
    # Folder sync reads without round-trip data: the same agent, the same warning.
    quick = read_agent_file(path, roundtrip=False)
    assert (quick.description, quick.tools, quick.warnings) == (agent.description, agent.tools, agent.warnings)
    # Unmodified, it renders and writes back byte for byte.
    assert render_agent(agent).encode("utf-8") == raw
    out = tmp_path / "out" / "agent.md"
    write_agent_file(out, agent)
    assert out.read_bytes() == raw == path.read_bytes()


def test_folder_sync_registers_a_leniently_read_file(tmp_path):
    path = _write(tmp_path, TRIGGERS)
    scan = read_file(str(path), str(tmp_path), 256 * 1024)
    assert scan.error is None and scan.name == "backlog-helper"
    assert scan.spec is not None and scan.spec["description"] == TRIGGERS_DESCRIPTION
    assert scan.spec["tools"] == ["Read", "Write", "Edit", "Glob", "Grep", "WebFetch", "WebSearch"]


def test_strict_yaml_files_get_no_warning():
    agent = parse_agent_text("---\nname: ok\ndescription: 'Triggers on: x'\n---\n")
    assert agent.warnings == [] and agent.description == "Triggers on: x"


def test_lenient_reading_of_other_shapes():
    text = (
        "---\n"
        "# a comment line\n"
        "name: shapes\n"
        "description: Use when: the user asks\n"
        "  for shapes: circles\n"
        "\n"
        "  and squares.\n"
        "tools:\n"
        "- Read\n"
        "- Bash(git log:*, git diff:*)\n"
        "disallowedTools:\n"
        "  - Write: never: ever\n"  # a list item YAML cannot read stays text
        "maxTurns: 12\n"
        "notes: |\n"
        "  kept: as YAML\n"
        "skills: [a, b]\n"
        "color: blue\n"
        "---\nBody\n"
    )
    agent = parse_agent_text(text)
    assert agent.description == "Use when: the user asks for shapes: circles\nand squares."
    assert agent.tools == ["Read", "Bash(git log:*, git diff:*)"]
    assert agent.disallowed_tools == ["Write: never: ever"]
    assert agent.extra == {"maxTurns": 12, "notes": "kept: as YAML\n", "skills": ["a", "b"]}
    assert agent.color == "blue" and agent.body == "Body\n" and agent.warnings[0][0] == LENIENT_REASON


def test_a_leniently_read_file_is_never_edited(tmp_path):
    path = _write(tmp_path, TRIGGERS)
    agent = read_agent_file(path)
    for key, value in (("description", "Quoted now"), ("model", "opus"), ("tools", ["Read"]),
                       ("permissionMode", "plan")):
        edited = set_field(read_agent_file(path), key, value)
        with pytest.raises(AgentFileError) as err:
            render_agent(edited)
        assert err.value.reason == LENIENT_REASON and str(path) in err.value.message
        assert "not valid YAML" in err.value.message and err.value.details["fields"] == [key]
        with pytest.raises(AgentFileError):
            write_agent_file(path, edited)
    assert path.read_bytes() == TRIGGERS.encode()  # untouched: no "fix", no backup, no temp file
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["agent.md"]
    # A new body leaves the frontmatter's bytes as they are, so that edit is allowed.
    agent.body = "\nYou groom backlogs, carefully.\n"
    written = write_agent_file(path, agent)
    assert path.read_text() == TRIGGERS.replace("backlogs.", "backlogs, carefully.")
    assert written.description == TRIGGERS_DESCRIPTION and written.warnings


# Genuinely broken frontmatter: refused as before, naming the file and the line.
BROKEN = {
    "unclosed fence": ("---\nname: x\ndescription: y: z\n", "missing_frontmatter", 1),
    "no fence": ("name: x\ndescription: y\n---\n", "missing_frontmatter", 1),
    "stray line before the first key": ("---\nstray words\nname: x\ndescription: y: z\n---\n", "invalid_yaml", 2),
    "indented line before the first key": ("---\n  name: x\ndescription: y: z\n---\n", "invalid_yaml", 2),
    "stray line after a key": ("---\nname: x\ndescription: y: z\nstray words\n---\n", "invalid_yaml", 3),
    "top-level list": ("---\n- name: x\n- description: y\n---\n", "invalid_yaml", 2),
    "top-level scalar": ("---\n\njust some words\n---\n", "invalid_yaml", 3),
    "duplicate key": ("---\nname: x\ndescription: y: z\ndescription: w\n---\n", "invalid_yaml", 3),
    "broken quoted value": ('---\nname: x\ndescription: "a" b: c\n---\n', "invalid_yaml", 3),
    "broken flow value": ("---\nname: x\ndescription: [a: b\n---\n", "invalid_yaml", 3),
    "mis-indented tools": ("---\nname: x\ndescription: y: z\n  tools: Read\n---\n", "invalid_yaml", 3),
    "tab-indented tools": ("---\nname: x\ndescription: y: z\n\ttools: Read\n---\n", "invalid_yaml", 3),
    "colon without a space": ("---\nname: x\ndescription: y: z\nmodel:opus\n---\n", "invalid_yaml", 3),
    "alias, not emphasis": ("---\nname: x\ndescription: *anchor: y\n---\n", "invalid_yaml", 3),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_genuinely_broken_frontmatter_is_still_refused(tmp_path, case):
    text, reason, line = BROKEN[case]
    path = _write(tmp_path, text)
    with pytest.raises(FileFormatError) as err:
        read_agent_file(path)
    assert err.value.details["reason"] == reason and err.value.details["line"] == line
    assert err.value.message.startswith(f"{path}: ") and f"line {line}" in err.value.message
    assert path.read_bytes() == text.encode()
    scan = read_file(str(path), str(tmp_path), 256 * 1024)  # sync reports it and registers nothing
    assert scan.error is not None and scan.error[0] == reason and scan.name is None


@pytest.mark.parametrize("description", ["**TECHNICAL DESIGN SPECIALIST**: Designs systems from PRDs.",
                                         "*Architect*: designs systems", "**Note:** designs systems"])
def test_markdown_emphasis_opening_a_value_is_prose(description):
    agent = parse_agent_text(f"---\nname: architect\ndescription: {description}\ntools: Read, Grep\n---\nBody\n")
    assert agent.description == description and agent.tools == ["Read", "Grep"]
    assert agent.warnings[0][0] == LENIENT_REASON


def test_misplaced_lines_are_named_when_yaml_reports_another_line():
    with pytest.raises(AgentFileError) as err:
        parse_agent_text("---\nname: x\ndescription: y: z\n  tools: Read\n---\n")
    message = err.value.message
    assert "(line 3): mapping values are not allowed here" in message and "line 4: indented 'tools'" in message


def test_binary_and_oversized_files_are_refused_as_before(tmp_path):
    binary = _write(tmp_path, TRIGGERS.encode() + b"\x00", "binary.md")
    with pytest.raises(AgentFileError) as err:
        read_agent_file(binary)
    assert err.value.reason == "binary"
    with pytest.raises(AgentFileError) as err:
        read_agent_file(_write(tmp_path, TRIGGERS, "big.md"), max_bytes=100)
    assert err.value.reason == "too_large"
    with pytest.raises(AgentFileError) as err:
        read_agent_file(_write(tmp_path, TRIGGERS.encode().replace(b"groom", b"gr\xe9om"), "latin1.md"))
    assert err.value.reason == "not_utf8"


# ---- dotted names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["powershell-5.1-expert", "dotnet-framework-4.8-expert", "node.js-pro", "a.b"])
def test_dotted_names_are_valid_and_stay_in_the_folder(tmp_path, name):
    assert validate_agent_name(name) == name
    path = agent_path(tmp_path, name)
    assert path.parent == tmp_path and path.name == f"{name}.md" and path.stem == name
    text = new_agent_text(name, "Automates Windows with PowerShell 5.1", "Body")
    written = write_agent_file(path, parse_agent_text(text))
    assert written.name == name and read_agent_file(path).name == name
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [f"{name}.md"]


@pytest.mark.parametrize("name", [".a", "a.", "a..b", "a.-b", "a-.b", ".md", "x.md", "a/b.c", "../a.b", "a.B",
                                  "a. b", "a.\u0431"])
def test_bad_dotted_names_are_rejected(tmp_path, name):
    with pytest.raises(InvalidInput):
        validate_agent_name(name)
    with pytest.raises(InvalidInput):
        agent_path(tmp_path, name)


def test_a_file_with_a_dotted_name_parses(tmp_path):
    path = _write(tmp_path, "---\nname: powershell-5.1-expert\ndescription: Windows PowerShell 5.1 automation"
                            "\ntools: Read, Bash\n---\nBody\n", "powershell-5.1-expert.md")
    agent = read_agent_file(path)
    assert agent.name == "powershell-5.1-expert" and agent.warnings == []
    assert agent.expertise[:2] == ["powershell", "windows"]  # "5.1" is a version, not a tag
    assert render_agent(agent) == path.read_text()


# ---- expertise tags across dashes ----------------------------------------------------------------------


def test_tags_do_not_merge_words_across_a_dash():
    description = ("Agile ceremony management\u2014especially sprint planning. Licensing systems\u2014from "
                   "OSI to commercial. Client\u2013server apps \u2013 done -- fast; bash --posix scripts")
    tags = derive_expertise("scrum-helper", description, None)
    assert {"management", "especially", "systems", "ceremony-management", "client-server",
            "client-server-apps", "bash-posix"} <= set(tags)
    assert not [t for t in tags if "managementespecially" in t or "systemsfrom" in t]
    assert not {"management-especially", "systems-from", "apps-done", "done-fast"} & set(tags)
    assert all(t == normalize_tag(t) for t in tags)


@pytest.mark.parametrize(("raw", "tag"), [("front\u2013end", "front-end"), ("Management\u2014Especially",
                                          "management-especially"), ("a\u2212b", "a-b"), ("x\u2010y", "x-y")])
def test_normalize_tag_treats_every_dash_as_a_hyphen(raw, tag):
    assert normalize_tag(raw) == tag


# ---- a second public collection (not in the repository) ------------------------------------------------


def test_second_collection_parses_when_present():
    folder = Path(os.environ.get("COORD_TEST_SECOND_AGENT_COLLECTION", "/nonexistent"))
    if not folder.is_dir():
        pytest.skip("set COORD_TEST_SECOND_AGENT_COLLECTION to a folder of agent files (e.g. VoltAgent's categories/)")
    files = sorted(p for p in folder.rglob("*.md") if p.name.lower() != "readme.md")
    failed = []
    for path in files:
        try:
            agent = read_agent_file(path)
        except FileFormatError as exc:
            failed.append(f"{path.name}: {exc.message}")
            continue
        assert render_agent(agent).encode("utf-8") == path.read_bytes(), path
    print(f"{len(files) - len(failed)}/{len(files)} parse")
    assert files and not failed, failed


# ---- indented files -------------------------------------------------------------------------------------

INDENTED = ("\n    ---\n    name: queue-keeper\n    description: Runs the message queues. \n    model: sonnet\n"
            "    ---\n    \n    ## Focus Areas\n    - Dead letter queues\n        - nested item\n")


@pytest.mark.parametrize("variant", ["lf", "crlf", "tabs"])
def test_an_indented_file_is_read_with_a_warning_and_never_edited(tmp_path, variant):
    text = INDENTED.replace("\n", "\r\n") if variant == "crlf" else INDENTED
    text = text.replace("    ", "\t") if variant == "tabs" else text
    path = _write(tmp_path, text)
    agent = read_agent_file(path)
    newline = "\r\n" if variant == "crlf" else "\n"
    inner = "    " if variant != "tabs" else "\t"
    assert agent.name == "queue-keeper" and agent.description == "Runs the message queues."
    assert agent.model == "sonnet"
    assert agent.body == newline.join(["", "## Focus Areas", "- Dead letter queues", f"{inner}- nested item", ""])
    [(reason, message)] = agent.warnings
    assert reason == INDENTED_REASON and str(path) in message and "first line is '---'" in message
    assert agent.content_hash == sha256_bytes(text.encode())
    quick = read_agent_file(path, roundtrip=False)
    assert (quick.description, quick.body, quick.warnings) == (agent.description, agent.body, agent.warnings)
    # Unchanged, it renders and writes back byte for byte; any edit is refused and leaves it as it is.
    assert render_agent(agent) == text
    for edit in (lambda a: set_field(a, "description", "Other"), lambda a: setattr(a, "body", "new\n") or a):
        with pytest.raises(AgentFileError) as err:
            write_agent_file(path, edit(read_agent_file(path)))
        assert err.value.reason == INDENTED_REASON and "Make '---' its first line" in err.value.message
    assert path.read_bytes() == text.encode()
    # Folder sync registers it, and its warning is reported.
    scan = read_file(str(path), str(tmp_path), 256 * 1024)
    assert scan.error is None and scan.name == "queue-keeper"


@pytest.mark.parametrize("text", [
    "    # notes\n    ---\n    name: x\n    description: y\n    ---\n",  # something before the fence
    "\n\n# Title\n\n---\nname: x\ndescription: y\n---\n",  # the fence is not the first line
    "  ---\n  name: x\n description: y\n  ---\n",  # not a uniform indentation: YAML refuses it
])
def test_indentation_is_only_removed_when_it_alone_hides_the_fence(text):
    with pytest.raises(AgentFileError) as err:
        parse_agent_text(text)
    assert err.value.reason in ("missing_frontmatter", "invalid_yaml")
