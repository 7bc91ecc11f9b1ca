"""git installs: clone, check out the pinned commit, build only with what the repository declares.

The build is chosen from the checked-out files, never from a command in the plan: `npm ci
--ignore-scripts` when there is a package-lock.json, else `pip install .` into the prefix's own venv
when there is a pyproject.toml or setup.py. Anything else is refused.
"""

from __future__ import annotations

from pathlib import Path

from coord.installer import pip as pip_installer
from coord.installer.npm import NPM_ENV
from coord.installer.plan import InstallPlan
from coord.installer.steps import (
    InstallOptions,
    Layout,
    Step,
    StepError,
    Steps,
    console_scripts,
    local_paths,
    package_json_bins,
    pip_base,
    pip_index_args,
)

GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}


def clone_url(plan: InstallPlan, options: InstallOptions) -> str:
    return f"{options.github_base_url.rstrip('/')}/{plan.github_repo}"


def src_dir(layout: Layout) -> Path:
    return layout.prefix / "src"


def steps(plan: InstallPlan, layout: Layout, options: InstallOptions) -> Steps:
    prefix, src = layout.prefix, src_dir(layout)
    url = clone_url(plan, options)
    mirror = local_paths([url]) if url.startswith("file://") else ()
    # `--` ends git's options: the URL and folder can never be read as flags. Hooks are not cloned.
    yield Step("clone", [options.git, "clone", "--quiet", "--no-checkout", "--", url, str(src)], cwd=prefix,
               network=True, writable=(prefix,), readable=mirror, env=GIT_ENV)
    if not plan.commit:  # the plan validator requires it; this keeps the type checker and a bypass honest
        raise StepError("a git plan needs a commit")
    checkout = [options.git, "-c", "advice.detachedHead=false", "checkout", "--quiet", plan.commit]
    yield Step("checkout", checkout, cwd=src, network=False, writable=(prefix,), env=GIT_ENV)

    if (src / "package-lock.json").is_file():
        yield Step("build", [options.npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=src,
                   network=not plan.offline, writable=(prefix,), env=NPM_ENV)
        bins = package_json_bins(src, plan.package)
        for target in bins.values():
            if target.is_file():
                target.chmod(target.stat().st_mode | 0o111)  # git may not carry the exec bit
        return bins
    if (src / "pyproject.toml").is_file() or (src / "setup.py").is_file():
        yield pip_installer.venv_step(layout, options)
        yield Step("build", [*pip_base(prefix / "bin" / "python"), *pip_index_args(plan), "."], cwd=src,
                   network=not plan.offline, writable=(prefix,), readable=local_paths(plan.find_links))
        return console_scripts(prefix, plan.package)
    raise StepError(f"{plan.source}@{plan.commit[:12]} has no package-lock.json, pyproject.toml or setup.py; "
                    "coord only builds what a repository declares")
