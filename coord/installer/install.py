"""Install a plan into coord's tools folder and undo it: the driver around the pip/npm/git steps.

Order of refusals, all before any process starts: the plan is parsed (InvalidInput), its source is
checked against the allowlist (PolicyDenied naming the patterns), the sandbox setting is resolved
(Unavailable), the prefix lock is taken (Conflict when another worker installs the same prefix) and
the bins are checked for clashes with another tool's links (Conflict).

After that, a failing step never raises: the outcome says failed or timed_out, carries every attempt
(argv, exit code, duration, output tail) for the install history, and the prefix and links are rolled
back so a retry starts clean. A prefix is complete only once its marker file is written (last), so a
prefix without one is a leftover of a killed attempt and is removed before the next.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from coord.errors import Conflict, InvalidInput
from coord.fsutil import write_atomic
from coord.installer import git, npm, pip
from coord.installer.plan import InstallPlan, check_source, parse_plan
from coord.installer.runner import RunResult, resolve_sandbox, run, scrubbed_env
from coord.installer.steps import InstallOptions, Layout, Step, StepError, Steps

Runner = Callable[..., RunResult]
BUILDERS: dict[str, Callable[[InstallPlan, Layout, InstallOptions], Steps]] = {
    "pip": pip.steps, "npm": npm.steps, "git": git.steps,
}


@dataclass
class InstallOutcome:
    status: Literal["installed", "failed", "timed_out"]
    plan: InstallPlan
    prefix: Path
    rule: str
    bins: dict[str, Path] = field(default_factory=dict)  # bin name -> link in tools_dir/bin
    replaced_links: dict[Path, str] = field(default_factory=dict)  # link -> target it had before us
    attempts: list[RunResult] = field(default_factory=list)
    verify: RunResult | None = None
    error: str | None = None
    retryable: bool = False
    already_installed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "plan": self.plan.model_dump(mode="json"), "prefix": str(self.prefix),
            "rule": self.rule, "bins": {k: str(v) for k, v in self.bins.items()},
            "replaced_links": {str(k): v for k, v in self.replaced_links.items()},
            "attempts": [a.to_dict() for a in self.attempts],
            "verify": self.verify.to_dict() if self.verify else None, "error": self.error,
            "retryable": self.retryable, "already_installed": self.already_installed,
        }


def _owner_of(link: Path, tools_dir: Path) -> str | None:
    """The tool name recorded in the marker of the prefix a link points into, or None."""
    try:
        rel = Path(os.readlink(link))
        prefix_root = (tools_dir / "prefixes").resolve()
        parts = (link.parent / rel).resolve().relative_to(prefix_root).parts
        marker = prefix_root / parts[0] / ".coord-install.json"
        return json.loads(marker.read_text(encoding="utf-8"))["plan"]["name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _check_link(link: Path, plan: InstallPlan, tools_dir: Path) -> None:
    if not (link.exists() or link.is_symlink()):
        return
    if not link.is_symlink():
        raise Conflict(f"{link} exists and is not a coord link; remove it or choose other bins")
    owner = _owner_of(link, tools_dir)
    if owner != plan.name:
        raise Conflict(f"{link} already exposes {owner or 'something coord did not install'}; "
                       f"tool {plan.name!r} will not take it over")


def _link(link: Path, target: Path) -> str | None:
    """Point `link` at `target` atomically (symlink beside it + rename); returns the old target."""
    previous = os.readlink(link) if link.is_symlink() else None
    tmp = link.with_name(f".{link.name}.coord-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    return previous


def uninstall(prefix: Path, bins: Iterable[Path], restore: Mapping[Path, str] | None = None) -> None:
    """Remove links that point into `prefix` (restoring any target they replaced), then the prefix.

    Links pointing elsewhere are left alone: a link is only ours to remove while it is ours.
    """
    prefix = Path(prefix)
    if prefix.parent.name != "prefixes":
        raise InvalidInput(f"{prefix} is not a coord install prefix (expected <tools_dir>/prefixes/<name>)")
    root = prefix.resolve()
    for link in bins:
        link = Path(link)
        if link.is_symlink() and (link.parent / os.readlink(link)).resolve().is_relative_to(root):
            previous = (restore or {}).get(link)
            if previous:
                _link(link, Path(previous))
            else:
                link.unlink()
    shutil.rmtree(prefix, ignore_errors=True)


def rollback(outcome: InstallOutcome) -> None:
    uninstall(outcome.prefix, outcome.bins.values(), outcome.replaced_links)


def _run_step(step: Step, layout: Layout, options: InstallOptions, runner: Runner) -> RunResult:
    return runner(step.argv, cwd=step.cwd, writable=list(step.writable), readable=list(step.readable),
                  timeout=options.timeout, network=step.network, sandbox=options.sandbox,
                  env_extra={**options.env_extra, **step.env}, home=layout.home, limits=options.limits,
                  label=step.label)


def _drive(gen: Steps, layout: Layout, options: InstallOptions, runner: Runner,
           out: InstallOutcome) -> dict[str, Path] | None:
    """Run the generator's steps; the bins it found, or None after filling `out` with the failure."""
    try:
        step = next(gen)
        while True:
            layout.home.mkdir(parents=True, exist_ok=True)
            result = _run_step(step, layout, options, runner)
            out.attempts.append(result)
            if not result.ok:
                out.status = "timed_out" if result.timed_out else "failed"
                out.error = f"step {step.label!r} " + (
                    "timed out" if result.timed_out else f"exited with {result.exit_code}")
                # A timeout or a download step may pass next time; a local step would fail the same way.
                out.retryable = result.timed_out or step.network
                gen.close()
                return None
            step = gen.send(result)
    except StopIteration as done:
        return dict(done.value or {})
    except StepError as exc:
        out.status, out.error = "failed", str(exc)
        return None


def _choose_bins(plan: InstallPlan, found: dict[str, Path]) -> dict[str, Path]:
    if not plan.bins:
        return found
    missing = [b for b in plan.bins if b not in found]
    if missing:
        provided = sorted(found) or "no executables"
        raise StepError(f"the package does not provide {missing}; it provides {provided}")
    return {b: found[b] for b in plan.bins}


def install(
    plan: InstallPlan | Mapping[str, Any],
    tools_dir: Path,
    options: InstallOptions | None = None,
    *,
    runner: Runner = run,
) -> InstallOutcome:
    """Install `plan` under tools_dir/prefixes/<name>-<version>, expose its bins in tools_dir/bin.

    Idempotent: a prefix already completed for this same plan is not rebuilt; its links are checked
    and its verify command is run again.
    """
    options = options or InstallOptions()
    plan = parse_plan(plan)
    rule = check_source(plan, options.allowed_sources)
    resolve_sandbox(options.sandbox)
    tools_dir = Path(tools_dir).resolve()
    layout = Layout(tools_dir, plan)
    scrubbed_env(layout.home, options.env_extra)  # a disallowed variable is refused before anything runs
    layout.prefix.parent.mkdir(parents=True, exist_ok=True)
    layout.bin_dir.mkdir(parents=True, exist_ok=True)
    out = InstallOutcome(status="failed", plan=plan, prefix=layout.prefix, rule=rule)

    lock = FileLock(str(layout.prefix) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise Conflict(f"{plan.prefix_name} is being installed by another worker right now; retry later",
                       prefix=str(layout.prefix)) from None
    try:
        for b in plan.bins:
            _check_link(layout.bin_dir / b, plan, tools_dir)
        found = _existing(layout)
        if found is not None:
            out.already_installed = True
        else:
            shutil.rmtree(layout.prefix, ignore_errors=True)
            layout.prefix.mkdir(parents=True)
            try:
                found = _drive(BUILDERS[plan.installer](plan, layout, options), layout, options, runner, out)
            except BaseException:
                uninstall(layout.prefix, [])  # an unexpected error must not leave half a prefix either
                raise
            if found is None:
                uninstall(layout.prefix, [])
                return out
        try:
            chosen = _choose_bins(plan, found)
            for name in chosen:
                _check_link(layout.bin_dir / name, plan, tools_dir)
            if plan.verify and plan.verify[0] not in chosen:
                # Never fall back to whatever PATH offers: verify checks *this* install.
                raise StepError(f"verify runs {plan.verify[0]!r}, which this install does not provide "
                                f"(it provides {sorted(chosen) or 'no executables'})")
        except (StepError, Conflict) as exc:
            out.status, out.error = "failed", str(exc)
            uninstall(layout.prefix, [])
            return out
        for name, target in chosen.items():
            link = layout.bin_dir / name
            previous = _link(link, target)
            out.bins[name] = link
            if previous and previous != str(target):
                out.replaced_links[link] = previous
        if plan.verify:
            out.verify = runner([str(out.bins[plan.verify[0]]), *plan.verify[1:]],
                                cwd=layout.prefix, writable=[layout.prefix], readable=[layout.bin_dir],
                                timeout=options.verify_timeout,
                                network=False, sandbox=options.sandbox, env_extra=dict(options.env_extra),
                                home=layout.home, limits=options.limits, label="verify")
            if not out.verify.ok:
                out.status = "timed_out" if out.verify.timed_out else "failed"
                out.error = f"verify {list(plan.verify)} " + (
                    "timed out" if out.verify.timed_out else f"exited with {out.verify.exit_code}")
                rollback(out)
                out.bins, out.replaced_links = {}, {}
                return out
        write_atomic(layout.marker, json.dumps(
            {"plan": plan.model_dump(mode="json"), "bins": {k: str(v) for k, v in chosen.items()}},
            indent=2).encode())
        out.status, out.error = "installed", None
        return out
    finally:
        lock.release()


def _existing(layout: Layout) -> dict[str, Path] | None:
    """The bins of a completed prefix for this very plan, or None when it must be (re)built."""
    try:
        marker = json.loads(layout.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("plan") != layout.plan.model_dump(mode="json"):
        return None
    return {k: Path(v) for k, v in marker.get("bins", {}).items()}
