"""Settings: defaults < TOML file < environment < flags, each value's source known, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from coord.errors import SettingsError
from coord.settings import load_settings


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coord.toml in the real ~/.config must not leak into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def _toml(tmp_path: Path, text: str, name: str = "coord.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _provenance(loaded) -> dict[str, str]:
    return {name: source for name, _value, source in loaded.rows()}


def test_defaults_are_safe_and_come_from_nowhere():
    loaded = load_settings(env={})
    s = loaded.settings
    assert loaded.config_file is None
    assert set(_provenance(loaded).values()) == {"default"}
    assert (s.safe_mode, s.allow_automated_installs, s.allow_mcp_installs, s.allow_agent_creation) == (
        True, False, False, False)
    assert s.max_payload_bytes == 65536
    assert s.db_url == f"sqlite:///{s.state_dir / 'coord.db'}"


def test_layers_override_in_order_and_record_their_source(tmp_path: Path):
    path = _toml(tmp_path, "lease_seconds = 10\nmax_task_attempts = 7\napproval_threshold = 0.9\n")
    env = {"COORD_LEASE_SECONDS": "20", "COORD_MAX_TASK_ATTEMPTS": "8"}
    loaded = load_settings(path, overrides={"lease_seconds": 30, "state_dir": None}, env=env)
    s, src = loaded.settings, _provenance(loaded)
    assert (s.lease_seconds, src["lease_seconds"]) == (30, "flag")
    assert (s.max_task_attempts, src["max_task_attempts"]) == (8, "env COORD_MAX_TASK_ATTEMPTS")
    assert (s.approval_threshold, src["approval_threshold"]) == (0.9, f"file {path}")
    assert src["state_dir"] == "default"  # a flag left unset (None) does not count as given
    assert loaded.config_file == path


def test_config_file_from_coord_config_and_coord_table(tmp_path: Path):
    path = _toml(tmp_path, "[coord]\nmax_payload_bytes = 1024\nagent_dirs = ['a', 'b']\n")
    loaded = load_settings(env={"COORD_CONFIG": str(path)})
    assert loaded.settings.max_payload_bytes == 1024
    assert loaded.settings.agent_dirs == [Path("a"), Path("b")]
    assert _provenance(loaded)["max_payload_bytes"] == f"file {path}"


@pytest.mark.parametrize("raw", ["a, b", '["a", "b"]'])
def test_lists_from_env_are_comma_separated_or_json(raw: str):
    assert load_settings(env={"COORD_AGENT_DIRS": raw}).settings.agent_dirs == [Path("a"), Path("b")]


@pytest.mark.parametrize(
    ("env", "field", "hint"),
    [
        ({"COORD_LEASE_SECONDS": "soon"}, "lease_seconds", "valid integer"),
        ({"COORD_MAX_PAYLOAD_BYTES": "10"}, "max_payload_bytes", "greater than or equal to 256"),
        ({"COORD_DISPATCH": "sometimes"}, "dispatch", "'queue' or 'inline'"),
        ({"COORD_SAFE_MODE": "maybe"}, "safe_mode", "valid boolean"),
        ({"COORD_APPROVAL_THRESHOLD": "1.5"}, "approval_threshold", "less than or equal to 1"),
        ({"COORD_AGENT_DIRS": "[not json"}, "agent_dirs", "Expecting value"),
    ],
)
def test_bad_env_value_names_field_source_and_problem(env: dict[str, str], field: str, hint: str):
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    message = str(err.value)
    var = next(iter(env))
    assert f"invalid setting {field}=" in message
    assert f"(from env {var})" in message
    assert hint in message
    assert err.value.exit_code == 78


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        load_settings(env={"COORD_LEASE_SECONDS": "soon", "COORD_SANDBOX": "docker"})
    assert "lease_seconds" in str(err.value) and "sandbox" in str(err.value)


def test_bad_value_in_toml_names_field_and_file(tmp_path: Path):
    path = _toml(tmp_path, 'lease_seconds = "soon"\n')
    with pytest.raises(SettingsError, match=rf"invalid setting lease_seconds='soon' \(from file {path}\)"):
        load_settings(path, env={})


def test_unknown_key_in_toml_names_key_and_file(tmp_path: Path):
    path = _toml(tmp_path, "lease_secs = 10\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, env={})
    assert f"unknown setting 'lease_secs' (from file {path})" in str(err.value)
    assert "coord config show" in str(err.value)


def test_unreadable_config_files_are_named(tmp_path: Path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = _toml(tmp_path, "lease_seconds = = 3\n", "broken.toml")
    with pytest.raises(SettingsError, match=f"{broken} is not valid TOML"):
        load_settings(broken, env={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(env={"COORD_CONFIG": str(tmp_path / "nope.toml")})


def test_blank_database_url_means_the_default(tmp_path: Path):
    loaded = load_settings(overrides={"state_dir": str(tmp_path)}, env={"COORD_DATABASE_URL": " "})
    assert loaded.settings.db_url == f"sqlite:///{tmp_path / 'coord.db'}"


# --- unknown COORD_* variables ---------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


def test_unknown_env_variable_is_one_line_naming_it_and_the_closest_setting():
    with pytest.raises(SettingsError) as err:
        load_settings(env={"COORD_DATABSE_URL": "postgresql+psycopg://db/coord", "COORD_LEASE_SECONDS": "30"})
    message = str(err.value)
    assert message == ("unknown environment variable COORD_DATABSE_URL (did you mean COORD_DATABASE_URL?); "
                       "see `coord config show` for the names")
    assert err.value.exit_code == 78


def test_unknown_env_variables_are_all_named_and_a_far_one_gets_no_guess():
    with pytest.raises(SettingsError) as err:
        load_settings(env={"COORD_ZZZ": "1", "COORD_LEASE_SECOND": "30"})
    assert str(err.value) == ("unknown environment variable COORD_LEASE_SECOND (did you mean COORD_LEASE_SECONDS?); "
                              "unknown environment variable COORD_ZZZ; see `coord config show` for the names")


def test_coord_variables_that_are_not_settings_are_allowed(tmp_path: Path):
    env = {"COORD_AGENT": "backend-dev", "COORD_EVENT": "approval.requested", "COORD_APPROVAL_ID": "a1",
           "COORD_DEMO_STATE": str(tmp_path), "COORD_EXTRAS": "dev", "COORD_AGENT_COLLECTIONS": str(tmp_path),
           "COORD_TEST_DATABASE_URL": "postgresql+psycopg://x/y", "COORD_TEST_ANYTHING_NEW": "1",
           "COORD_LEASE_SECONDS": "30"}
    assert load_settings(env=env).settings.lease_seconds == 30


def test_cli_refuses_an_unknown_variable_with_exit_78(tmp_path: Path):
    from click.testing import CliRunner

    from coord.cli.main import cli

    result = CliRunner().invoke(cli, ["config", "show"],
                                env={"COORD_STATE_DIR": str(tmp_path), "COORD_SAFEMODE": "false"})
    assert result.exit_code == 78, result.output
    assert "unknown environment variable COORD_SAFEMODE" in result.output and "COORD_SAFE_MODE?" in result.output


def test_every_coord_variable_the_project_uses_is_a_setting_or_allowed():
    """What scripts, units, CI, docs and tests set must never trip the unknown-variable check."""
    import re

    from coord.settings import NOT_SETTINGS, NOT_SETTINGS_PREFIXES, Settings

    known = {"COORD_" + name.upper() for name in Settings.model_fields} | set(NOT_SETTINGS)
    # Never reaches load_settings: test_installer_runner proves the install environment drops it.
    known.add("COORD_SECRET_TOKEN")
    folders = ["coord", "worker", "scripts", "systemd", ".ci", "docs", "config", "tests"]
    files = [REPO / "README.md", *(p for f in folders for p in (REPO / f).rglob("*") if p.is_file())]
    used: dict[str, str] = {}
    for path in files:
        if path == Path(__file__) or path.suffix in (".pyc", ".db", ".tgz", ".whl"):
            continue
        for name in re.findall(r"\bCOORD_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")):
            used.setdefault(name, str(path.relative_to(REPO)))
    stray = {n: p for n, p in used.items() if n not in known and not n.startswith(NOT_SETTINGS_PREFIXES)}
    assert not stray, f"add these to coord.settings.NOT_SETTINGS (or make them settings): {stray}"
    assert "COORD_DATABASE_URL" in used  # the scan did find the project's variables
