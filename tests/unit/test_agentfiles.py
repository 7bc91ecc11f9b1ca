"""Agent markdown files: parse, validate, byte-identical round trip, minimal edits, safe writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from coord.agentfiles import (
    AgentFile,
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
from coord.errors import Conflict, FileFormatError, InvalidInput, NotFound

FIXTURES = Path(__file__).parents[1] / "fixtures" / "agents"
FIXTURE_FILES = sorted(FIXTURES.glob("*.md"))
COLLECTIONS = Path(
    os.environ.get("COORD_AGENT_COLLECTIONS", Path(__file__).parents[2] / "../shared/data/agent-collections")
)


def _copy(tmp_path: Path, source: Path, transform=lambda b: b) -> Path:
    target = tmp_path / source.name
    target.write_bytes(transform(source.read_bytes()))
    return target


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    return [x for x in a if x not in b], [x for x in b if x not in a]


# ---- round trip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        ("as-is", lambda b: b),
        ("crlf", _crlf),
        ("no-final-newline", lambda b: b.rstrip(b"\n")),
        ("bom", lambda b: b"\xef\xbb\xbf" + b),
    ],
    ids=lambda v: v[0],
)
@pytest.mark.parametrize("source", FIXTURE_FILES, ids=lambda p: p.stem)
def test_unmodified_file_renders_byte_identical(tmp_path, source, variant):
    path = _copy(tmp_path, source, variant[1])
    agent = read_agent_file(path)
    assert render_agent(agent).encode("utf-8") == path.read_bytes()
    out = tmp_path / "out" / source.name
    write_agent_file(out, agent)
    assert out.read_bytes() == path.read_bytes()


def test_fixture_fields_are_read():
    reviewer = read_agent_file(FIXTURES / "code-reviewer.md")
    assert (reviewer.name, reviewer.model, reviewer.color) == ("code-reviewer", "sonnet", "blue")
    assert reviewer.tools == ["Read", "Write", "Bash"]
    assert "<example>" in reviewer.description and "\n" in reviewer.description
    assert reviewer.body.startswith("\nYou are a senior code reviewer")

    assert read_agent_file(FIXTURES / "python-pro.md").tools is None  # absent: inherits all tools

    dba = read_agent_file(FIXTURES / "database-admin.md")
    assert dba.tools == ["Read", "Bash", "Grep"] and dba.disallowed_tools == ["Write", "Edit"]
    assert dba.mcp_servers == ["postgres", "sentry", "github"]
    assert dba.expertise == ["postgresql", "mysql", "query-tuning", "backups"] and dba.expertise_declared
    assert dba.extra["permissionMode"] == "plan" and dba.extra["maxTurns"] == 25
    assert dba.extra["hooks"]["PreToolUse"][0]["matcher"] == "Bash"
    assert "model" not in dba.extra and "name" not in dba.extra

    auto = read_agent_file(FIXTURES / "test-automator.md")
    assert auto.tools == ["Read", "Grep", "Glob", "Bash(npm test:*, ctest:*)"]
    assert auto.mcp_servers == ["playwright"] and auto.extra == {"background": True, "isolation": "worktree"}
    assert "---" in auto.body  # a horizontal rule in the body is not a frontmatter fence

    k8s = read_agent_file(FIXTURES / "k8s-helper.md")
    assert k8s.tools == ["Read", "Edit", "Bash(kubectl get:*, kubectl describe:*)"]


def test_content_hash_is_sha256_of_the_raw_bytes(tmp_path):
    import hashlib

    path = _copy(tmp_path, FIXTURES / "code-reviewer.md", _crlf)
    assert read_agent_file(path).content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


# ---- minimal edits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_changing_description_touches_only_its_line(tmp_path, crlf):
    path = _copy(tmp_path, FIXTURES / "code-reviewer.md", _crlf if crlf else (lambda b: b))
    before = path.read_bytes().decode()
    agent = set_field(read_agent_file(path), "description", 'Reviews code: "quality" and security.\nAlways.')
    after = render_agent(agent)
    removed, added = _changed_lines(before, after)
    assert [x.split(":")[0] for x in removed] == ["description"]
    newline = "\r\n" if crlf else "\n"
    assert added == ['description: "Reviews code: \\"quality\\" and security.\\nAlways."' + newline]
    again = parse_agent_text(after)
    assert again.description == 'Reviews code: "quality" and security.\nAlways.'
    assert (again.tools, again.model, again.color, again.body) == (agent.tools, "sonnet", "blue", agent.body)


def test_changing_tools_keeps_the_comma_form_and_other_fields(tmp_path):
    path = _copy(tmp_path, FIXTURES / "code-reviewer.md")
    before = path.read_text()
    agent = read_agent_file(path)
    agent.tools = ["Read", "Grep"]  # plain attribute assignment is seen too
    after = render_agent(agent)
    assert _changed_lines(before, after) == (["tools: Read, Write, Bash\n"], ["tools: Read, Grep\n"])


def test_changing_a_yaml_list_keeps_list_form_and_comments(tmp_path):
    path = _copy(tmp_path, FIXTURES / "database-admin.md")
    before = path.read_text()
    agent = set_field(read_agent_file(path), "tools", ["Read", "Grep"])
    set_field(agent, "model", "sonnet")
    after = render_agent(agent)
    _, added = _changed_lines(before, after)
    assert "model: 'sonnet'  # needs careful reasoning about locks\n" in added  # style and comment kept
    assert "tools:\n  - Read\n  - Grep\ndisallowedTools: Write, Edit\n" in after
    assert "# Maintained by the platform team; see the runbook before changing tools.\n" in after
    assert after.split("disallowedTools", 1)[1] == before.split("disallowedTools", 1)[1].replace(
        "model: 'opus'", "model: 'sonnet'")
    assert parse_agent_text(after).tools == ["Read", "Grep"]


def test_removing_and_adding_fields(tmp_path):
    path = _copy(tmp_path, FIXTURES / "code-reviewer.md")
    before = path.read_text()
    agent = read_agent_file(path)
    set_field(agent, "color", None)
    set_field(agent, "permissionMode", "plan")
    set_field(agent, "tools", None)
    after = render_agent(agent)
    removed, added = _changed_lines(before, after)
    assert sorted(removed) == ["color: blue\n", "tools: Read, Write, Bash\n"]
    assert added == ["permissionMode: plan\n"]
    assert parse_agent_text(after).tools is None


def test_changing_mcp_servers_keeps_inline_configs(tmp_path):
    path = _copy(tmp_path, FIXTURES / "database-admin.md")
    agent = set_field(read_agent_file(path), "mcpServers", ["sentry", "linear"])
    after = render_agent(agent)
    assert parse_agent_text(after).mcp_servers == ["sentry", "linear"]
    assert "@sentry/mcp-server" in after and "postgres\n" not in after
    assert "skills:\n  - sql-style\n" in after  # fields after it untouched


def test_changing_extra_and_body(tmp_path):
    path = _copy(tmp_path, FIXTURES / "database-admin.md")
    before = path.read_text()
    agent = read_agent_file(path)
    agent.extra["maxTurns"] = 40
    agent.body = agent.body.replace("careful", "cautious")
    after = render_agent(agent)
    removed, added = _changed_lines(before, after)
    assert removed == ["maxTurns: 25\n", before.splitlines(keepends=True)[-6]]
    assert added[0] == "maxTurns: 40\n" and "cautious" in added[1]


def test_body_added_to_file_without_final_newline(tmp_path):
    agent = parse_agent_text("---\nname: tiny\ndescription: d\n---")
    agent.body = "Hello.\n"
    assert render_agent(agent) == "---\nname: tiny\ndescription: d\n---\nHello.\n"


def test_derived_expertise_is_not_written_but_declared_is(tmp_path):
    agent = read_agent_file(FIXTURES / "python-pro.md")
    set_field(agent, "description", "Python packaging and typing specialist")
    assert "packaging" in agent.expertise  # re-derived from the new description
    assert "expertise" not in render_agent(agent)
    set_field(agent, "expertise", ["Python", "Type Hints"])
    text = render_agent(agent)
    assert "expertise: [python, type-hints]\n" in text
    assert parse_agent_text(text).expertise == ["python", "type-hints"]


def test_declared_expertise_can_be_edited_and_removed(tmp_path):
    agent = read_agent_file(FIXTURES / "database-admin.md")
    set_field(agent, "expertise", ["postgresql", "replication"])
    assert "expertise: [postgresql, replication]\n" in render_agent(agent)
    set_field(agent, "expertise", None)
    text = render_agent(agent)
    assert "expertise" not in text.split("---")[1]
    assert not parse_agent_text(text).expertise_declared


@pytest.mark.parametrize(
    "frontmatter",
    [
        "{name: flowy, description: all on one line}\n",  # no line per key: falls back to a full dump
        "name: anchored\ndescription: &d shared text\nsummary: *d\n",  # an alias would dangle
    ],
)
def test_layouts_that_cannot_be_spliced_still_edit_correctly(frontmatter):
    agent = parse_agent_text(f"---\n{frontmatter}---\nbody\n")
    set_field(agent, "description", "changed")
    again = parse_agent_text(render_agent(agent))
    assert again.description == "changed" and again.body == "body\n" and again.name == agent.name
    assert again.extra == agent.extra


def test_render_refuses_an_invalid_agent():
    agent = read_agent_file(FIXTURES / "python-pro.md")
    agent.name = "Not Valid"
    with pytest.raises(AgentFileError) as err:
        render_agent(agent)
    assert err.value.reason == "invalid_name"
    with pytest.raises(InvalidInput):
        set_field(agent, "description", "  ")


# ---- new files -----------------------------------------------------------------------------------------


def test_new_agent_text_parses_back():
    text = new_agent_text(
        "data-wrangler", "Cleans CSV files: dedupe, types.\nThen reports.", "You clean data.",
        tools=["Read", "Bash"], model="haiku", expertise=["CSV", "Data Cleaning"], extra={"color": "cyan"},
    )
    assert text.startswith("---\nname: data-wrangler\n")
    assert "tools: Read, Bash\n" in text and "expertise: [csv, data-cleaning]\n" in text
    agent = parse_agent_text(text)
    assert agent.description == "Cleans CSV files: dedupe, types.\nThen reports."
    assert (agent.tools, agent.model, agent.color, agent.body) == (["Read", "Bash"], "haiku", "cyan",
                                                                   "\nYou clean data.\n")
    assert render_agent(agent) == text
    minimal = new_agent_text("solo", "Does one thing", "")
    assert parse_agent_text(minimal).tools is None and "expertise" not in minimal


@pytest.mark.parametrize("bad", [("../x", "d"), ("ok", " "), ("ok", "d", {"name": "other"})])
def test_new_agent_text_rejects_bad_input(bad):
    name, description, *extra = bad
    with pytest.raises(InvalidInput):
        new_agent_text(name, description, "body", extra=extra[0] if extra else None)


# ---- writing -------------------------------------------------------------------------------------------


def test_write_is_atomic_with_backup_and_refuses_stale_copies(tmp_path):
    path = _copy(tmp_path, FIXTURES / "code-reviewer.md")
    original = path.read_bytes()
    agent = read_agent_file(path)
    set_field(agent, "model", "opus")
    written = write_agent_file(path, agent)
    assert written.model == "opus" and written.content_hash != agent.content_hash
    backups = list(tmp_path.glob("code-reviewer.md.*.bak"))
    assert [b.read_bytes() for b in backups] == [original]
    assert not list(tmp_path.glob(".code-reviewer.md.*.tmp"))

    set_field(agent, "model", "haiku")  # `agent` was read before the write above: it is stale now
    with pytest.raises(Conflict):
        write_agent_file(path, agent)
    assert read_agent_file(path).model == "opus"
    set_field(written, "model", "haiku")
    assert write_agent_file(path, written).model == "haiku"


def test_write_never_clobbers_an_unrelated_or_broken_file(tmp_path):
    target = tmp_path / "solo.md"
    fresh = parse_agent_text(new_agent_text("solo", "Does one thing", "Body"))
    write_agent_file(target, fresh)
    with pytest.raises(Conflict):
        write_agent_file(target, parse_agent_text(new_agent_text("solo", "Another", "Body")))
    assert write_agent_file(target, parse_agent_text(new_agent_text("solo", "Another", "B")),
                            overwrite=True).description == "Another"
    target.write_bytes(b"not an agent file")
    with pytest.raises(FileFormatError):
        write_agent_file(target, fresh, overwrite=True)
    assert target.read_bytes() == b"not an agent file"


# ---- bad files -----------------------------------------------------------------------------------------

BAD_FILES = {
    "invalid_yaml": b"---\nname: x\ndescription: [unclosed\n---\nbody\n",
    "missing_frontmatter": b"# Just markdown\n\nname: x\n",
    "missing_frontmatter ": b"---\nname: x\ndescription: no closing fence\n",
    "missing_name": b"---\ndescription: something\n---\n",
    "invalid_name": b"---\nname: Code_Reviewer\ndescription: something\n---\n",
    "invalid_name ": b"---\nname: ../../etc/passwd\ndescription: something\n---\n",
    "missing_description": b"---\nname: ok\ndescription: ''\n---\n",
    "binary": b"---\nname: ok\ndescription: x\n---\n\x00\x01\x02",
    "not_utf8": b"---\nname: ok\ndescription: caf\xe9\n---\n",
    "invalid_field": b"---\nname: ok\ndescription: x\ntools: {Read: true}\n---\n",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES), ids=str.strip)
def test_bad_files_raise_typed_errors(tmp_path, case):
    path = tmp_path / "bad.md"
    path.write_bytes(BAD_FILES[case])
    with pytest.raises(FileFormatError) as err:
        read_agent_file(path)
    assert err.value.details["reason"] == case.strip()
    assert err.value.details["path"] == str(path) and str(path) in err.value.message
    assert path.read_bytes() == BAD_FILES[case]  # reported, never touched


def test_invalid_yaml_names_the_file_line():
    with pytest.raises(AgentFileError) as err:
        parse_agent_text("---\nname: x\ndescription: 'a' b\n---\n")
    assert err.value.reason == "invalid_yaml" and err.value.details["line"] == 3
    # `description: a: b` is not valid YAML either, but it is read leniently (tests/unit/test_agentparse.py).
    assert parse_agent_text("---\nname: x\ndescription: a: b\n---\n").warnings


def test_too_large_is_rejected_without_reading_it(tmp_path):
    path = tmp_path / "huge.md"
    with path.open("wb") as fh:
        fh.write(b"---\nname: huge\n")
        fh.truncate(1 << 40)  # sparse: reading it would take hours
    with pytest.raises(AgentFileError) as err:
        read_agent_file(path)
    assert err.value.reason == "too_large"
    small = _copy(tmp_path, FIXTURES / "code-reviewer.md")
    with pytest.raises(AgentFileError, match="limit"):
        read_agent_file(small, max_bytes=100)


def test_unreadable_files(tmp_path):
    folder = tmp_path / "dir-agent.md"
    folder.mkdir()
    fifo = tmp_path / "fifo-agent.md"
    os.mkfifo(fifo)
    for path in (folder, fifo):  # a FIFO must not block the reader
        with pytest.raises(AgentFileError) as err:
            read_agent_file(path)
        assert err.value.reason == "unreadable"
    locked = _copy(tmp_path, FIXTURES / "python-pro.md")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            print("running as root: chmod 000 does not stop reads; covered by the directory and FIFO cases")
        else:
            with pytest.raises(AgentFileError) as err:
                read_agent_file(locked)
            assert err.value.reason == "unreadable"
    finally:
        locked.chmod(0o644)
    with pytest.raises(NotFound):
        read_agent_file(tmp_path / "missing.md")


# ---- names and paths -----------------------------------------------------------------------------------

BAD_NAMES = ["../x", "a/b", "Name", "", "a" * 65, "a--b", "-a", "a-", "a b", ".", "..", "x.md", "a\\b",
             "ag\x00ent", "café", None, 5]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_rejected(tmp_path, name):
    with pytest.raises(InvalidInput):
        validate_agent_name(name)
    with pytest.raises(InvalidInput):
        agent_path(tmp_path, name)


@pytest.mark.parametrize("name", ["a", "code-reviewer", "k8s-helper-2", "a" * 64])
def test_good_names_map_inside_the_folder(tmp_path, name):
    assert validate_agent_name(name) == name
    path = agent_path(tmp_path, name)
    assert path.parent == tmp_path and path.name == f"{name}.md"


# ---- expertise tags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "tag"),
    [
        ("Python", "python"),
        ("  Machine_Learning ", "machine-learning"),
        ("C++", "c++"),
        ("C#", "c#"),
        ("Node.js.", "node.js"),
        ("CI/CD", "ci-cd"),
        ("react   native", "react-native"),
        ("--a--b--", "a-b"),
        ("What?!", "what"),
        ("*", ""),
        ("\uff30\uff39\uff34\uff28\uff2f\uff2e", "python"),  # fullwidth letters: NFKC folds them
        ("Rust (async)", "rust-async"),
    ],
)
def test_normalize_tag(raw, tag):
    assert normalize_tag(raw) == tag
    assert normalize_tag(tag) == tag  # idempotent


def test_derive_expertise():
    assert derive_expertise("x", "anything", ["Go", "go", " GraphQL APIs "]) == ["go", "graphql-apis"]
    text = "Rigorous visual validation expert specializing in UI testing and accessibility. " \
        "Use PROACTIVELY to verify UI changes."
    tags = derive_expertise("ui-visual-validator", text + "\n\n<example>user: hello database</example>", None)
    assert tags[:3] == ["ui", "visual", "validator"]
    assert {"accessibility", "testing", "ui-testing", "visual-validation"} <= set(tags)
    assert not {"expert", "use", "proactively", "specializing", "database", "hello"} & set(tags)
    assert tags == derive_expertise("ui-visual-validator", text, [])  # deterministic; [] means not declared
    assert all(t == normalize_tag(t) for t in tags)


# ---- the public collection -----------------------------------------------------------------------------


def test_real_collection_parses_and_round_trips(tmp_path):
    if not COLLECTIONS.is_dir():
        pytest.skip(f"shared agent collection not found at {COLLECTIONS} (set COORD_AGENT_COLLECTIONS)")
    files = sorted(COLLECTIONS.glob("**/agents/*.md"))
    parsed, failed = 0, []
    for path in files:
        try:
            agent = read_agent_file(path)
        except FileFormatError as exc:
            failed.append(f"{path.name}: {exc.details.get('reason')}")
            continue
        parsed += 1
        assert render_agent(agent).encode("utf-8") == path.read_bytes(), path
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", agent.name)
        edited = set_field(agent, "description", agent.description + " Edited.")
        assert parse_agent_text(render_agent(edited)).body == agent.body
    print(f"agent collection: {len(files)} files, {parsed} parse and round-trip, failures: {failed}")
    assert files and parsed + len(failed) == len(files)


def test_agentfile_built_by_hand_renders_as_a_new_file():
    agent = AgentFile(name="hand-made", description="Made in code", body="Body\n", tools=["Read"])
    text = render_agent(agent)
    assert text == "---\nname: hand-made\ndescription: Made in code\ntools: Read\n---\n\nBody\n"
