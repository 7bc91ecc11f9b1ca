"""MCP server catalog entries in the official registry `server.json` shape, and their client launch specs.

Field names are the registry's camelCase (`registryType`, `packageArguments`, ...). Fields coord does not
use are kept (`extra="allow"`) because the registry format keeps growing. coord's own additions live
under `_meta["io.coord/catalog"]`: `aliases` (the short names agents ask for; the first one is the key
written under `mcpServers`) and `bin` (the executable a prefix install exposes, when it is not the
package name).

Secrets never leave the user's environment: a secret or a required value with no default is written
into the launch spec as a `${VAR}` reference that Claude Code expands at start-up, and a catalog entry
that stores a literal secret is refused when it loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from coord.catalog_rules import NPM_NAME, PYPI_NAME, FieldError, check_safe_name, exact_version
from coord.errors import InvalidInput

__all__ = ["Argument", "CoordExtension", "KeyValueInput", "McpServerEntry", "Package", "Remote"]

META_KEY = "io.coord/catalog"
_SERVER_NAME = re.compile(r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FLAG = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL = re.compile(r"^(https?://[^\s]+|\{[a-zA-Z_][a-zA-Z0-9_]*\}[^\s]*)$")
_TEMPLATE_VAR = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
_REFERENCE = r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\}|\{[a-zA-Z_][a-zA-Z0-9_]*\})"  # ${ENV_VAR} or registry {var}
_ONLY_REFERENCES = re.compile(rf"^(?:[^${{}}]*{_REFERENCE})+[^${{}}]*$")
_IDENTIFIERS = {
    "npm": NPM_NAME,
    "pypi": PYPI_NAME,
    "oci": re.compile(r"^[a-z0-9]+(?:[._:/-][a-z0-9]+)*$"),
    "nuget": re.compile(r"^[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*$"),
    "mcpb": re.compile(r"^https://[^\s]+$"),
}


def _var_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper() or "VALUE"


class _Registry(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Input(_Registry):
    description: str | None = None
    is_required: bool = False
    is_secret: bool = False
    format: Literal["string", "number", "boolean", "filepath"] | None = None
    value: str | None = None
    default: str | None = None
    choices: list[str] = Field(default_factory=list)
    placeholder: str | None = None

    @model_validator(mode="after")
    def _no_stored_secret(self) -> Input:
        if self.is_secret and self.default is not None:
            raise FieldError("default", "a secret must not have a default stored in the catalog")
        if self.is_secret and self.value is not None and not _ONLY_REFERENCES.match(self.value):
            raise FieldError("value", "a secret value must be only ${VAR}/{var} references, never the secret")
        return self


class KeyValueInput(Input):
    """An environment variable or HTTP header."""

    name: str
    variables: dict[str, Input] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,128}$", value):
            raise ValueError(f"{value!r} is not a valid environment variable or header name")
        return value


class Argument(Input):
    """A runtime or package argument: `positional` (value or valueHint) or `named` (a `--flag`)."""

    type: Literal["positional", "named"]
    name: str | None = None
    value_hint: str | None = None
    is_repeated: bool = False
    variables: dict[str, Input] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> Argument:
        if self.type == "positional" and self.value is None and not self.value_hint:
            raise FieldError("valueHint", "a positional argument needs a value or a valueHint")
        if self.type == "named" and not (self.name and _FLAG.match(self.name)):
            raise FieldError("name", "a named argument needs a flag name such as '--port'")
        return self


class Transport(_Registry):
    type: Literal["stdio", "streamable-http", "sse"]
    url: str | None = None
    headers: list[KeyValueInput] = Field(default_factory=list)
    variables: dict[str, Input] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _url(self) -> Transport:
        if self.type != "stdio" and not (self.url and _URL.match(self.url)):
            raise FieldError("url", f"a {self.type} transport needs an http(s):// url")
        return self


class Remote(Transport):
    type: Literal["streamable-http", "sse"]


class Package(_Registry):
    registry_type: Literal["npm", "pypi", "oci", "nuget", "mcpb"]
    registry_base_url: str | None = None
    identifier: str
    version: str
    file_sha256: str | None = Field(None, pattern=r"^[a-f0-9]{64}$")
    runtime_hint: str | None = None
    transport: Transport
    runtime_arguments: list[Argument] = Field(default_factory=list)
    package_arguments: list[Argument] = Field(default_factory=list)
    environment_variables: list[KeyValueInput] = Field(default_factory=list)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return exact_version(value)

    @model_validator(mode="after")
    def _identifier(self) -> Package:
        if not _IDENTIFIERS[self.registry_type].match(self.identifier) or ".." in self.identifier:
            kind = self.registry_type
            raise FieldError("identifier", f"{self.identifier!r} is not a valid {kind} package identifier")
        return self


class Repository(_Registry):
    url: str
    source: str
    id: str | None = None
    subfolder: str | None = None


class CoordExtension(BaseModel):
    """coord's own fields under `_meta["io.coord/catalog"]`."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[str] = Field(default_factory=list)
    bin: str | None = None

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, values: list[str]) -> list[str]:
        return [check_safe_name(v, lowercase=True) for v in values]

    @field_validator("bin")
    @classmethod
    def _bin(cls, value: str | None) -> str | None:
        return None if value is None else check_safe_name(value)


class Meta(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    coord: CoordExtension = Field(default_factory=CoordExtension, alias=META_KEY)


class McpServerEntry(_Registry):
    schema_: str | None = Field(None, alias="$schema")
    name: str = Field(max_length=200)
    title: str | None = None
    description: str = Field(min_length=1, max_length=100)
    version: str
    repository: Repository | None = None
    website_url: str | None = None
    packages: list[Package] = Field(default_factory=list)
    remotes: list[Remote] = Field(default_factory=list)
    meta: Meta = Field(default_factory=Meta, alias="_meta")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVER_NAME.match(value) or ".." in value:
            raise ValueError(f"{value!r} is not a registry name: reverse-DNS with exactly one '/', "
                             "such as 'io.github.user/weather'")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return exact_version(value)

    @model_validator(mode="after")
    def _runnable(self) -> McpServerEntry:
        if not self.packages and not self.remotes:
            raise FieldError("packages", "a server needs at least one package or remote")
        return self

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.meta.coord.aliases)

    @property
    def short_name(self) -> str:
        """The `mcpServers` key a client config uses: the first alias, else the part after the slash."""
        return self.aliases[0] if self.aliases else self.name.split("/", 1)[1]

    def lookup_keys(self) -> tuple[list[str], list[str]]:
        """(declared aliases, implicit aliases): the part after the slash and the package identifiers."""
        return list(self.aliases), [self.name.split("/", 1)[1], *(p.identifier for p in self.packages)]

    @property
    def required_secrets(self) -> list[str]:
        """Every `${VAR}` the default launch spec references: secrets, and required values with no default.
        Empty when coord cannot launch the server at all (then `launch_spec` says why)."""
        try:
            return _Launch(self, {}).build(None, prefer_remote=False)[1]
        except InvalidInput:
            return []

    def launch_spec(self, prefix: Path | None = None, env_values: dict[str, str] | None = None, *,
                    prefer_remote: bool = False) -> dict[str, Any]:
        """The client-config entry: `{"command", "args", "env"}` for a stdio package, or
        `{"type": "http"|"sse", "url", "headers"}` for a remote.

        `prefix` is where coord installed the package (npm: `<prefix>/node_modules/.bin/<bin>`,
        pypi: the venv `<prefix>/bin/<bin>`); without it the client runs `npx`/`uvx` with the exact
        version. `env_values` fills non-secret variables; passing a secret there is an error.
        """
        return _Launch(self, env_values or {}).build(prefix, prefer_remote=prefer_remote)[0]


_LAUNCHABLE = ("npm", "pypi", "oci")


class _Launch:
    """Builds one launch spec, collecting the `${VAR}` references it had to write."""

    def __init__(self, entry: McpServerEntry, values: dict[str, str]) -> None:
        self.entry = entry
        self.values = values
        self.refs: list[str] = []
        self.prefix_var = _var_name(entry.short_name)

    def build(self, prefix: Path | None, *, prefer_remote: bool) -> tuple[dict[str, Any], list[str]]:
        package = next((p for p in self.entry.packages
                        if p.registry_type in _LAUNCHABLE and p.transport.type == "stdio"), None)
        if self.entry.remotes and (prefer_remote or package is None):
            remote = self.entry.remotes[0]
            self._check_values(remote.headers, [], remote.variables)
            return self._remote(remote), self.refs
        if package is None:
            raise InvalidInput(f"MCP server {self.entry.name!r} has no npm, pypi or oci stdio package "
                               "coord can launch, and no remote")
        if prefix is not None and not Path(prefix).is_absolute():
            raise InvalidInput(f"install prefix {prefix} must be absolute: clients start from any folder")
        self._check_values(package.environment_variables,
                           [*package.runtime_arguments, *package.package_arguments], {})
        return self._stdio(package, prefix), self.refs

    def _check_values(self, env: list[KeyValueInput], args: list[Argument], extra: dict[str, Input]) -> None:
        inputs = self._inputs(env, args, extra)
        for key, value in self.values.items():
            if key not in inputs:
                raise InvalidInput(f"{key} is not a variable of MCP server {self.entry.name!r}; "
                                   f"known: {sorted(inputs) or 'none'}")
            if inputs[key].is_secret:
                raise InvalidInput(f"{key} is a secret: coord writes it as ${{{key}}} and never stores it; "
                                   "set it in the environment the MCP client runs in")
            if not isinstance(value, str) or "\x00" in value:
                raise InvalidInput(f"the value of {key} must be text without NUL characters")

    def _inputs(
        self, env: list[KeyValueInput], args: list[Argument], extra: dict[str, Input]
    ) -> dict[str, Input]:
        """Every variable a caller may fill, by the name its `${VAR}` reference would have."""
        inputs: dict[str, Input] = {_var_name(k): v for k, v in extra.items()}
        for item in [*env, *args]:
            inputs.update({_var_name(k): v for k, v in item.variables.items()})
        inputs.update({e.name: e for e in env if e.value is None})
        inputs.update({self._arg_var(a): a for a in args if a.value is None})
        return inputs

    def _ref(self, var: str) -> str:
        if var not in self.refs:
            self.refs.append(var)
        return "${" + var + "}"

    def _resolve(self, var: str, item: Input) -> str | None:
        """A value the catalog does not fix: a secret is always a reference; else the caller's value, the
        default, or a reference when required. An optional secret becomes `${VAR:-}` (empty when unset),
        because an unset `${VAR}` would reach the server as that literal text."""
        if item.is_secret:
            return self._ref(var) if item.is_required else "${" + var + ":-}"
        if var in self.values:
            return self.values[var]
        if item.default is not None:
            return item.default
        return self._ref(var) if item.is_required else None

    def _fixed(self, value: str, variables: dict[str, Input]) -> str:
        """A catalog value with registry `{var}` placeholders: each becomes its value or a reference."""
        def sub(m: re.Match[str]) -> str:
            var = variables.get(m.group(1))
            if var is None:
                return m.group(0)
            if var.value is not None and not var.is_secret:
                return var.value
            return self._resolve(_var_name(m.group(1)), var.model_copy(update={"is_required": True})) or ""
        return _TEMPLATE_VAR.sub(sub, value)

    def _arg_var(self, arg: Argument) -> str:
        return f"{self.prefix_var}_{_var_name(arg.value_hint or (arg.name or '').lstrip('-'))}"

    def _args(self, args: list[Argument]) -> list[str]:
        out: list[str] = []
        for arg in args:
            flag = [arg.name or ""] if arg.type == "named" else []
            if arg.value is not None:
                value: str | None = self._fixed(arg.value, arg.variables)
            elif flag and not (arg.value_hint or arg.is_required or arg.is_secret or arg.default is not None):
                out += flag  # a bare switch such as `--read-only`: present, without a value
                continue
            else:
                value = self._resolve(self._arg_var(arg), arg)
            if value is not None:  # an optional argument nobody filled is left out, flag and all
                out += [*flag, value]
        return out

    def _env(self, env: list[KeyValueInput]) -> dict[str, str]:
        out: dict[str, str] = {}
        for var in env:
            fixed = var.value is not None
            value = self._fixed(var.value or "", var.variables) if fixed else self._resolve(var.name, var)
            if value is not None:
                out[var.name] = value
        return out

    def _stdio(self, package: Package, prefix: Path | None) -> dict[str, Any]:
        runtime = self._args(package.runtime_arguments)
        args = self._args(package.package_arguments)
        env = self._env(package.environment_variables)
        ident, version = package.identifier, package.version
        bin_name = self.entry.meta.coord.bin or ident.rsplit("/", 1)[-1]
        if package.registry_type == "oci":
            env_flags = [x for name in env for x in ("-e", name)]  # docker forwards the client's env values
            command, argv = "docker", ["run", "-i", "--rm", *runtime, *env_flags, f"{ident}:{version}", *args]
        elif prefix is not None:
            where = ("node_modules", ".bin") if package.registry_type == "npm" else ("bin",)
            command, argv = str(Path(prefix, *where, bin_name)), args
        elif package.registry_type == "npm":
            command, argv = "npx", ["-y", *runtime, f"{ident}@{version}", *args]
        elif bin_name != ident:
            command, argv = "uvx", [*runtime, "--from", f"{ident}=={version}", bin_name, *args]
        else:
            command, argv = "uvx", [*runtime, f"{ident}=={version}", *args]
        return {"command": command, "args": argv, "env": env}

    def _remote(self, remote: Remote) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "http" if remote.type == "streamable-http" else "sse",
                                "url": self._fixed(remote.url or "", remote.variables)}
        headers = self._env(remote.headers)
        if headers:
            spec["headers"] = headers
        return spec
