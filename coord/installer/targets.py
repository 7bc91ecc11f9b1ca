"""What an approved install will do, rebuilt from the catalog and the operator's settings (invariant 4).

A proposal only names *what* a person approved. The plan that runs comes from the catalog entry of that
name; where its artifacts come from (find-links, index, tarball, offline: `_trusted_sources`) comes from
settings, never from a proposal, because those fields bypass the source the allowlist judged. The catalog
must still say what was approved (a new version is a new decision), and only exact versions install.
Nothing here runs anything; every refusal is a typed CoordError naming its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coord.db.models import Install
from coord.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from coord.installer.plan import InstallPlan, canonical_source, check_source, parse_plan, refuse_unsafe, source_allowed
from coord.installer.steps import Layout


def _npm_tarball(folders: list[str], package: str, version: str) -> str | None:
    """A tarball named as `npm pack` names it (`@scope/name` -> `scope-name-1.2.3.tgz`) in a local folder."""
    filename = f"{package.removeprefix('@').replace('/', '-')}-{version}.tgz"
    for folder in folders:
        if "://" in folder and not folder.startswith("file://"):
            continue
        candidate = Path(folder.removeprefix("file://")) / filename
        if candidate.is_file():
            return str(candidate.resolve())
    return None


def _trusted_sources(settings: Any, installer: str, package: str, version: str) -> dict[str, Any]:
    """The plan fields that say where artifacts come from, from settings only (never from a proposal)."""
    links = list(settings.install_find_links)
    if installer == "npm":
        return {"tarball": _npm_tarball(links, package, version), "index_url": settings.install_npm_registry,
                "offline": settings.install_offline}
    return {"find_links": links, "index_url": settings.install_index_url, "offline": settings.install_offline}


@dataclass(frozen=True)
class Target:
    """What an approved install will do: a plan (None when nothing is installed: a remote server) and,
    for an MCP server, the entry written into client configs."""

    plan: InstallPlan | None
    source: str
    server: str | None = None
    server_key: str | None = None
    launch_spec: dict[str, Any] | None = None
    secrets: tuple[str, ...] = ()
    prefix: Path | None = None


def _version_of(plan: dict[str, Any]) -> str:
    return str(plan.get("version") or "").removeprefix("==")


def _identity(plan: dict[str, Any]) -> tuple[str, str]:
    """What a person approved, in one spelling: (canonical source, commit or exact version)."""
    registry = {"pip": "pypi", "npm": "npm"}.get(plan.get("installer") or "", "?")
    source = plan.get("source") or f"{registry}:{plan.get('package')}"
    return canonical_source(source), plan.get("commit") or _version_of(plan)


def _check_unchanged(approved: dict[str, Any], plan: InstallPlan) -> None:
    """The catalog must still describe what the person approved: a new version is a new decision."""
    if not approved.get("package"):
        return
    was, now = _identity(approved), _identity(plan.model_dump())
    if was != now:
        raise Conflict(f"the catalog entry changed since it was approved (approved {' '.join(was)}, the catalog "
                       f"now says {' '.join(now)}); nothing was installed. Propose it again for a new approval")


def _tool_target(install: Install, settings: Any, catalog: Any) -> Target:
    match = catalog.find_tool(install.name)
    if match is None or match.how != "exact" or match.entry.name != install.name:
        raise NotFound(f"tool {install.name!r} is not in the catalog; nothing was installed")
    entry = match.entry
    if entry.installer == "manual":
        raise InvalidInput(f"{entry.name} is a system tool coord never installs; a person runs: {entry.manual_steps}")
    if not entry.pinned:
        raise InvalidInput(f"the catalog gives {entry.name} the version range {entry.version!r}; coord installs "
                           "exact versions only: pin it in the catalog (e.g. version = \"1.2.3\") and propose again")
    github = (entry.source or "").startswith("github:")
    installer = "git" if github else entry.installer
    version = (entry.version or "").removeprefix("==")
    if github and (not version or any(c in version for c in "<>=!^~*, ")):
        version = (entry.commit or "")[:12]  # the commit pins a git install; the version only labels the prefix
    data = {"kind": "tool", "name": entry.name, "installer": installer, "package": entry.package,
            "version": version, "source": entry.source, "commit": entry.commit if github else None,
            "allow_sdist": entry.allow_sdist, "bins": list(entry.bins), "verify": list(entry.verify),
            **_trusted_sources(settings, "pip" if github else installer, entry.package or "", version)}
    plan = parse_plan(data)
    return Target(plan, plan.source)


def _mcp_target(install: Install, settings: Any, catalog: Any) -> Target:
    server = install.plan.get("server") or install.name
    match = catalog.find_mcp(server)
    if match is None or match.how == "fuzzy" or server not in (match.entry.name, match.entry.short_name):
        raise NotFound(f"MCP server {server!r} is not in the catalog; nothing was installed")
    entry = match.entry
    key = entry.short_name
    package = next((p for p in entry.packages
                    if p.registry_type in ("npm", "pypi", "oci") and p.transport.type == "stdio"), None)
    secrets = tuple(entry.required_secrets)
    if package is not None and package.registry_type in ("npm", "pypi"):
        installer = "npm" if package.registry_type == "npm" else "pip"
        data = {"kind": "mcp", "name": key, "installer": installer, "package": package.identifier,
                "version": package.version, "source": f"{package.registry_type}:{package.identifier}",
                "bins": [entry.meta.coord.bin or package.identifier.rsplit("/", 1)[-1]],
                **_trusted_sources(settings, installer, package.identifier, package.version)}
        plan = parse_plan(data)
        prefix = Layout(Path(settings.tools_path).resolve(), plan).prefix
        return Target(plan, plan.source, entry.name, key, entry.launch_spec(prefix=prefix), secrets, prefix)
    # Nothing coord installs: a docker image the client runs, or a hosted server.
    if package is not None:
        source = f"oci:{package.identifier}"
    else:
        source = f"remote:{urlsplit(entry.remotes[0].url or '').hostname or '?'}"
    return Target(None, source, entry.name, key, entry.launch_spec(prefer_remote=package is None), secrets)


def resolve(install: Install, settings: Any, catalog: Any = None) -> Target:
    """The target of an approved install, from the catalog; InvalidInput / NotFound / Conflict when it
    cannot be installed as approved. Nothing runs here."""
    refuse_unsafe("install name", install.name)
    approved = dict(install.plan or {})
    if approved.get("package") is not None:
        refuse_unsafe("package name", approved["package"], allow_scope=True)
    if approved.get("version") is not None:
        refuse_unsafe("version", _version_of(approved))
    if catalog is None:
        from coord.proposals import load_catalog_for

        catalog = load_catalog_for(settings)
    target = (_tool_target if install.kind == "tool" else _mcp_target)(install, settings, catalog)
    if target.plan is not None:
        _check_unchanged(approved, target.plan)
    return target


def check_allowed(target: Target, settings: Any) -> str:
    patterns = list(settings.allowed_install_sources)
    if target.plan is not None:
        return check_source(target.plan, patterns)
    ok, why = source_allowed(target.source, patterns)
    if not ok:
        raise PolicyDenied(why, source=target.source, patterns=patterns)
    return why


__all__ = ["Target", "check_allowed", "resolve"]
