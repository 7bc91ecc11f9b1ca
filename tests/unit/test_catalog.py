"""The tool and MCP catalogs: the shipped data, lookups, overrides, broken files, launch specs, templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from coord.catalog import FUZZY_CUTOFF, Catalog, McpServerEntry, ToolEntry, load_catalog, shipped_config_dir
from coord.catalog_rules import exact_version, npm_range, pep440_spec
from coord.errors import FileFormatError, InvalidInput
from coord.templates import load_agent_template, render_agent_template, yaml_quote

REQUIRED_TOOLS = [
    "ruff", "black", "mypy", "pytest", "isort", "flake8", "pylint", "bandit", "pre-commit", "httpie", "yq",
    "jc", "sqlfluff", "pip-audit", "poetry", "uv", "tox", "nox", "cookiecutter", "sqlite-utils", "csvkit",
    "mkdocs", "coverage", "prettier", "eslint", "typescript", "ts-node", "biome", "markdownlint-cli",
    "npm-check-updates", "serve", "http-server", "playwright", "pyright",
    "jq", "ripgrep", "docker", "git", "psql", "graphviz",
]
REQUIRED_MCP = [
    "filesystem", "git", "fetch", "memory", "time", "sequential-thinking", "everything", "postgres",
    "sqlite", "github", "playwright", "brave-search", "puppeteer", "slack",
]
GOOD_TOOL = """
[[tools]]
name = "good"
installer = "pip"
package = "good"
version = "1.0.0"
bins = ["good"]
verify = ["good", "--version"]
description = "A tool that loads."
"""


def server(name: str = "io.example/demo", version: str = "1.0.0", pkg_version: str = "2.0.0",
           **extra: object) -> dict:
    return {
        "name": name, "description": "A demo server.", "version": version,
        "packages": [{"registryType": "npm", "identifier": "demo-mcp", "version": pkg_version,
                      "transport": {"type": "stdio"}}],
        **extra,
    }


def tool_toml(**fields: object) -> str:
    base = {"name": "demo", "installer": "pip", "package": "demo", "version": "1.0.0", "bins": ["demo"],
            "verify": ["demo", "--version"], "description": "Demo."}
    base.update(fields)
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in base.items() if v is not None)
    return "[[tools]]\n" + body + "\n"


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog()


# ------------------------------------------------------------------------------------------ shipped data


def test_shipped_catalog_loads_without_issues(shipped: Catalog) -> None:
    assert shipped.errors == [], "\n".join(map(str, shipped.errors))
    assert shipped_config_dir() == Path(__file__).resolve().parents[2] / "config"


def test_shipped_catalog_has_the_required_entries(shipped: Catalog) -> None:
    for name in REQUIRED_TOOLS:
        match = shipped.find_tool(name)
        assert match is not None and match.how == "exact", name
    for name in REQUIRED_MCP:
        match = shipped.find_mcp(name)
        assert match is not None and match.how == "alias", name
        assert match.entry.short_name == name
    assert shipped.find_tool("typescript").entry.bins == ("tsc",)
    assert shipped.find_tool("jq").entry.manual_steps


def test_shipped_installable_tools_are_pinned(shipped: Catalog) -> None:
    for tool in shipped.tools.values():
        assert tool.pinned == (tool.installer != "manual"), tool.name
        if tool.installer == "manual":
            assert tool.install_spec is None
        else:
            assert "latest" not in (tool.install_spec or "")


def test_shipped_mcp_files_are_named_after_their_short_name() -> None:
    for file in (shipped_config_dir() / "mcp-servers").glob("*.json"):
        entry = McpServerEntry.model_validate(json.loads(file.read_text()))
        assert file.stem == entry.short_name


# ---------------------------------------------------------------------------------------------- lookups


def test_exact_lookup_ignores_case_underscores_and_spaces(shipped: Catalog) -> None:
    for query in ("ruff", "RUFF", "Pre_Commit", " pre commit "):
        match = shipped.find_tool(query)
        assert match is not None and match.how == "exact" and match.similarity == 1.0


def test_alias_lookup(shipped: Catalog) -> None:
    postgres = shipped.find_mcp("postgresql")
    assert postgres is not None and postgres.how == "alias" and postgres.similarity == 1.0
    assert postgres.entry.name == "io.github.modelcontextprotocol/server-postgres"
    assert shipped.find_mcp("pg").entry is postgres.entry
    assert shipped.find_mcp("io.github.modelcontextprotocol/server-postgres").how == "exact"
    # Agents report the command they could not run: a tool's executables find it.
    assert shipped.find_tool("rg").entry.name == "ripgrep"
    assert shipped.find_tool("tsc").entry.name == "typescript"
    assert shipped.find_tool("@biomejs/biome").entry.name == "biome"


def test_fuzzy_lookup(shipped: Catalog) -> None:
    match = shipped.find_tool("rufff")
    assert match is not None and match.entry.name == "ruff" and match.how == "fuzzy"
    assert FUZZY_CUTOFF <= match.similarity < 1.0
    server = shipped.find_mcp("postgress")
    assert server is not None and server.how == "fuzzy" and server.entry.short_name == "postgres"


def test_unknown_name_gives_none_and_suggestions(shipped: Catalog) -> None:
    assert shipped.find_tool("mypi") is None  # too far to be taken for mypy ...
    assert [m.entry.name for m in shipped.closest_tools("mypi")][:1] == ["mypy"]  # ... but suggested
    assert shipped.find_tool("kubectl-definitely-unknown") is None
    assert shipped.find_mcp("kubernetes-operator") is None
    assert shipped.find_mcp("slak").entry.short_name == "slack"
    closest = shipped.closest_tools("pylintt", n=3)
    assert closest[0].entry.name == "pylint" and len(closest) <= 3
    assert all(0 < m.similarity <= 1 for m in closest)
    assert shipped.find_tool("") is None and shipped.find_tool("x" * 10_000) is None


# -------------------------------------------------------------------------------------------- overrides


def test_user_override_replaces_entries_by_name(tmp_path: Path, shipped: Catalog) -> None:
    user = tmp_path / "user"
    (user / "mcp-servers").mkdir(parents=True)
    (user / "tools.toml").write_text(tool_toml(name="ruff", package="ruff", version="0.5.0", bins=["ruff"],
                                               verify=["ruff", "--version"]))
    pg = json.loads((shipped_config_dir() / "mcp-servers" / "postgres.json").read_text())
    pg["packages"][0]["version"] = "0.6.1"
    (user / "mcp-servers" / "my-postgres.json").write_text(json.dumps(pg))

    catalog = load_catalog([shipped_config_dir(), user])

    assert catalog.errors == []
    assert catalog.find_tool("ruff").entry.version == "0.5.0"
    assert catalog.tool_sources["ruff"] == str(user / "tools.toml")
    assert catalog.find_mcp("postgresql").entry.packages[0].version == "0.6.1"
    assert len(catalog.tools) == len(shipped.tools) and len(catalog.mcp_servers) == len(shipped.mcp_servers)
    assert catalog.find_tool("black").entry == shipped.find_tool("black").entry


def test_a_single_override_file_and_a_missing_folder(tmp_path: Path) -> None:
    single = tmp_path / "extra.json"
    single.write_text(json.dumps([server("io.example/one"), server("io.example/two")]))
    catalog = load_catalog([shipped_config_dir(), single, tmp_path / "no-such-folder"])
    assert catalog.errors == []
    assert catalog.find_mcp("io.example/two") is not None
    missing = load_catalog([tmp_path / "missing.toml"])
    assert [(i.entry, i.message) for i in missing.errors] == [(None, "catalog file does not exist")]


def test_an_alias_taken_by_a_later_entry_is_reported(tmp_path: Path) -> None:
    mine = server("io.example/my-pg", _meta={"io.coord/catalog": {"aliases": ["pg"]}})
    (tmp_path / "mcp-servers.json").write_text(json.dumps(mine))
    catalog = load_catalog([shipped_config_dir(), tmp_path])
    assert catalog.find_mcp("pg").entry.name == "io.example/my-pg"
    assert catalog.find_mcp("postgresql").entry.short_name == "postgres"
    [issue] = catalog.errors
    assert issue.entry == "io.example/my-pg" and issue.field == "aliases" and "'pg'" in issue.message


# ---------------------------------------------------------------------------------------- broken files


def test_invalid_toml_and_json_files_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[[tools]\nname = ")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "good.toml").write_text(GOOD_TOOL)
    catalog = load_catalog([tmp_path / "bad.toml", tmp_path / "bad.json", tmp_path / "good.toml"])
    assert [(Path(i.file).name, i.entry, i.field) for i in catalog.errors] == [
        ("bad.toml", None, None), ("bad.json", None, None)]
    assert "not valid TOML" in catalog.errors[0].message and "not valid JSON" in catalog.errors[1].message
    assert catalog.find_tool("good") is not None


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"verify": None}, "verify", "required"),
        ({"version": "latest"}, "version", "PEP 440"),
        ({"installer": "npm", "source": None, "version": "latest"}, "version", "dist-tags"),
        ({"name": "../evil"}, "name", "unsafe"),
        ({"name": "ok;rm"}, "name", "unsafe"),
        ({"name": "a/b"}, "name", "unsafe"),
        ({"name": "two words"}, "name", "unsafe"),
        ({"name": "Ruff"}, "name", "lowercase"),
        ({"name": "g++"}, "name", "unsafe"),
        ({"bins": ["$(id)"]}, "bins", "unsafe"),
        ({"verify": ["sh", "-c", "x"]}, "verify", "bins"),
        ({"source": "npm:demo"}, "source", "pypi"),
        ({"source": "github:owner/repo"}, "commit", "commit"),
        ({"installer": "manual", "version": None}, "manual_steps", "manual_steps"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_a_bad_tool_entry_names_file_entry_and_field(tmp_path: Path, fields: dict, field: str,
                                                     words: str) -> None:
    file = tmp_path / "tools.toml"
    file.write_text(GOOD_TOOL + tool_toml(**fields))
    catalog = load_catalog([file])
    assert [i.field for i in catalog.errors] == [field], catalog.errors
    issue = catalog.errors[0]
    assert issue.file == str(file) and issue.entry == fields.get("name", "demo")
    assert words in issue.message
    assert catalog.find_tool("good") is not None and "demo" not in catalog.tools


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (server(pkg_version="^1.2"), "packages.0.version"),
        (server(pkg_version="latest"), "packages.0.version"),
        (server(pkg_version="1.x"), "packages.0.version"),
        (server(version="latest"), "version"),
        (server(name="io.example/../evil"), "name"),
        (server(name="io.example/a/b"), "name"),
        (server(name="no-slash"), "name"),
        ({"name": "io.example/missing", "version": "1.0.0", "packages": []}, "description"),
        (server(description="x" * 101), "description"),
        (server(_meta={"io.coord/catalog": {"aliases": ["pg; rm -rf ~"]}}), "_meta.io.coord/catalog.aliases"),
        (server(remotes=[{"type": "sse", "url": "https://x.example/sse", "headers": [
            {"name": "Authorization", "value": "Bearer abc123", "isSecret": True}]}]), "remotes.0.headers.0.value"),
    ],
)
def test_a_bad_server_entry_names_file_entry_and_field(tmp_path: Path, entry: dict, field: str) -> None:
    file = tmp_path / "servers.json"
    file.write_text(json.dumps([server("io.example/good"), entry]))
    catalog = load_catalog([file])
    assert field in [i.field for i in catalog.errors], catalog.errors
    assert all(i.file == str(file) and i.entry == entry["name"] for i in catalog.errors)
    assert catalog.find_mcp("io.example/good") is not None and len(catalog.mcp_servers) == 1


def test_a_missing_description_is_reported_as_required(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"name": "io.example/x", "version": "1.0.0"}))
    [issue] = [i for i in load_catalog([tmp_path / "x.json"]).errors if i.field == "description"]
    assert issue.message == "this field is required"


def test_duplicates_in_one_file_keep_the_first(tmp_path: Path) -> None:
    file = tmp_path / "tools.toml"
    file.write_text(GOOD_TOOL + GOOD_TOOL.replace("A tool that loads.", "Second."))
    catalog = load_catalog([file])
    assert [i.field for i in catalog.errors] == ["name"]
    assert catalog.find_tool("good").entry.description == "A tool that loads."


# ------------------------------------------------------------------------------------------ launch specs


def test_launch_specs_pin_versions_and_never_hold_secrets(shipped: Catalog, tmp_path: Path) -> None:
    for entry in shipped.mcp_servers.values():
        for prefix in (None, tmp_path):
            text = json.dumps(entry.launch_spec(prefix))
            assert "latest" not in text, entry.name
        for var in entry.required_secrets:
            assert "${" + var + "}" in json.dumps(entry.launch_spec()), (entry.name, var)


def test_npm_and_pypi_launch_specs(shipped: Catalog, tmp_path: Path) -> None:
    pg = shipped.find_mcp("postgres").entry
    assert pg.launch_spec() == {"command": "npx", "args": [
        "-y", "@modelcontextprotocol/server-postgres@0.6.2", "${POSTGRES_CONNECTION_STRING}"], "env": {}}
    assert pg.launch_spec(tmp_path)["command"] == str(tmp_path / "node_modules" / ".bin" / "mcp-server-postgres")
    assert pg.required_secrets == ["POSTGRES_CONNECTION_STRING"]

    git = shipped.find_mcp("git").entry
    version = git.packages[0].version
    assert git.launch_spec() == {"command": "uvx", "args": [f"mcp-server-git=={version}"], "env": {}}
    filled = git.launch_spec(tmp_path, {"GIT_REPOSITORY_PATH": "/src/repo"})
    assert filled == {"command": str(tmp_path / "bin" / "mcp-server-git"), "args": ["--repository", "/src/repo"],
                      "env": {}}
    with pytest.raises(InvalidInput, match="absolute"):
        git.launch_spec(Path("relative/prefix"))


def test_secrets_are_references_never_values(shipped: Catalog) -> None:
    github = shipped.find_mcp("github").entry
    spec = github.launch_spec()
    assert spec["env"] == {"GITHUB_PERSONAL_ACCESS_TOKEN": "${GITHUB_PERSONAL_ACCESS_TOKEN}"}
    assert github.required_secrets == ["GITHUB_PERSONAL_ACCESS_TOKEN"]
    with pytest.raises(InvalidInput, match="secret"):
        github.launch_spec(None, {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_realtoken"})
    with pytest.raises(InvalidInput, match="not a variable"):
        github.launch_spec(None, {"SOMETHING_ELSE": "x"})

    remote = shipped.find_mcp("github-remote").entry.launch_spec()
    assert remote == {"type": "http", "url": "https://api.githubcopilot.com/mcp/",
                      "headers": {"Authorization": "Bearer ${GITHUB_PERSONAL_ACCESS_TOKEN}"}}
    # An optional secret must not reach the server as the literal text "${VAR}" when unset.
    assert shipped.find_mcp("context7").entry.launch_spec()["env"] == {"CONTEXT7_API_KEY": "${CONTEXT7_API_KEY:-}"}


def test_non_secret_required_values_can_be_filled(shipped: Catalog) -> None:
    slack = shipped.find_mcp("slack").entry
    spec = slack.launch_spec(None, {"SLACK_TEAM_ID": "T123"})
    assert spec["env"] == {"SLACK_BOT_TOKEN": "${SLACK_BOT_TOKEN}", "SLACK_TEAM_ID": "T123"}
    assert slack.required_secrets == ["SLACK_BOT_TOKEN", "SLACK_TEAM_ID"]
    redis = shipped.find_mcp("redis").entry
    assert redis.launch_spec()["args"][-1] == "redis://localhost:6379"  # the default


def test_oci_and_remote_choice() -> None:
    entry = McpServerEntry.model_validate({
        "name": "io.example/both", "description": "Both kinds.", "version": "1.0.0",
        "packages": [{"registryType": "oci", "identifier": "ghcr.io/example/both", "version": "1.0.0",
                      "transport": {"type": "stdio"},
                      "environmentVariables": [{"name": "TOKEN", "isSecret": True, "isRequired": True}]}],
        "remotes": [{"type": "sse", "url": "https://both.example/sse"}],
    })
    assert entry.launch_spec() == {"command": "docker", "args": [
        "run", "-i", "--rm", "-e", "TOKEN", "ghcr.io/example/both:1.0.0"], "env": {"TOKEN": "${TOKEN}"}}
    assert entry.launch_spec(prefer_remote=True) == {"type": "sse", "url": "https://both.example/sse"}


# ------------------------------------------------------------------------------------- tools and rules


def test_tool_install_specs() -> None:
    def tool(**kw: object) -> ToolEntry:
        base = {"name": "t", "installer": "pip", "package": "t", "version": "1.0", "bins": ["t"],
                "verify": ["t"], "description": "d"}
        return ToolEntry.model_validate({**base, **kw})

    assert tool().install_spec == "t==1.0" and tool().source == "pypi:t" and tool().pinned
    assert tool(version=">=1,<2").install_spec == "t>=1,<2" and not tool(version=">=1,<2").pinned
    assert tool(installer="npm", version="^3.0.0").install_spec == "t@^3.0.0"
    commit = "a" * 40
    gh = tool(source="github:owner/repo", commit=commit, version=None)
    assert gh.install_spec == f"t @ git+https://github.com/owner/repo@{commit}" and gh.pinned


@pytest.mark.parametrize("good", ["1.2.3", "2025.4.25", "1.0rc1", "1.0.post1", "1.2.3-beta.1", "0.0.83"])
def test_exact_versions(good: str) -> None:
    assert exact_version(good) == good


@pytest.mark.parametrize("bad", ["latest", "^1.2", "~1.2.3", ">=1.2.3", "1.x", "1.*", "", " 1.2", "1.2 || 2"])
def test_not_exact_versions(bad: str) -> None:
    with pytest.raises(ValueError, match="exact"):
        exact_version(bad)


def test_version_constraints() -> None:
    for ok in ("1.2.3", "==1.2.3", ">=1.2,<2", "~=2.0", "==1.4.*"):
        assert pep440_spec(ok) == ok
    for ok in ("3.3.3", "^3.3.0", ">=1 <2", "1.x", "1.2.3 - 1.4.0", "^1 || ^2"):
        assert npm_range(ok) == ok
    for bad in ("latest", "*", ">=1; python_version<'3'", "https://x/y.tar.gz"):
        with pytest.raises(ValueError):
            pep440_spec(bad)
    for bad in ("latest", "next", "*", "git+https://x", "file:../x", "^1 || next"):
        with pytest.raises(ValueError):
            npm_range(bad)


# ------------------------------------------------------------------------------------------- templates

NASTY = [
    'Reviews SQL: "quoted", with: colons',
    "line one\nline two\n---\nname: injected",
    "# not a comment ' single ' quotes \\ backslash",
    "tab\there, CR\rhere, NUL-free control \x07 \x1b[31m",
    "unicode é ✓ 🚀 \u2028 line sep \u0085 NEL \ufeff BOM",
    "- looks: [like, yaml] {and: more} &anchor *alias !tag | > %",
    "yes", "null", "~", "123", "  leading and trailing spaces  ",
]


@pytest.mark.parametrize("description", NASTY)
def test_rendered_frontmatter_is_valid_yaml(description: str) -> None:
    text = render_agent_template(
        load_agent_template(), name="sql-reviewer", description=description,
        expertise=["sql", "postgres: tuning", 'say "hi"'], tools=["Read", "Bash(git diff:*)"],
        body_hint="Check $HOME and ${PATH} stay literal.",
    )
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    data = YAML(typ="safe", pure=True).load(front)
    assert data == {"name": "sql-reviewer", "description": description, "tools": "Read, Bash(git diff:*)",
                    "model": "inherit", "expertise": ["sql", "postgres: tuning", 'say "hi"']}
    assert "Check $HOME and ${PATH} stay literal." in body


def test_template_without_tools_inherits_them() -> None:
    text = render_agent_template(load_agent_template(), name="a", description="d", expertise=[], tools=None,
                                 body_hint="")
    front = text[4:].split("\n---\n", 1)[0]
    assert "tools" not in YAML(typ="safe", pure=True).load(front)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "../evil"}, {"name": "Bad Name"}, {"name": "a" * 65}, {"description": "  "},
        {"description": "nul\x00"}, {"expertise": ["two\nlines"]}, {"tools": ["Read, Write"]},
        {"tools": "Read"}, {"model": "opus; rm"},
    ],
)
def test_bad_template_values_are_refused(kwargs: dict) -> None:
    values = {"name": "ok", "description": "d", "expertise": [], "tools": None, "body_hint": "", **kwargs}
    with pytest.raises(InvalidInput):
        render_agent_template(load_agent_template(), **values)


def test_broken_templates_are_file_format_errors() -> None:
    args = {"name": "ok", "description": "d", "expertise": [], "tools": None, "body_hint": ""}
    for template in ("no frontmatter", "---\nname: $name\n", "---\nname: $nope\n---\n", "---\nx: $ 1\n---\n",
                     "---\nname: [$name\n---\n"):
        with pytest.raises(FileFormatError):
            render_agent_template(template, **args)


def test_yaml_quote_escapes_everything_yaml_would_reinterpret() -> None:
    assert yaml_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert yaml_quote("\u2028") == '"\\u2028"'
    with pytest.raises(InvalidInput):
        yaml_quote("\ud800")
