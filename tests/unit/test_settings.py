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
