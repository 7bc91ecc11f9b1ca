"""npm installs: `npm install --prefix <prefix>`, never `-g`, never lifecycle scripts.

`--ignore-scripts` is what keeps a package's preinstall/postinstall (arbitrary shell) from running;
`--no-audit --no-fund` keep the install from making requests it does not need.
"""

from __future__ import annotations

from pathlib import Path

from coord.installer.plan import InstallPlan
from coord.installer.steps import InstallOptions, Layout, Step, Steps, package_json_bins

NPM_ENV = {"npm_config_update_notifier": "false"}


def install_argv(plan: InstallPlan, layout: Layout, options: InstallOptions) -> list[str]:
    argv = [options.npm, "install", f"--prefix={layout.prefix}", "--ignore-scripts", "--no-audit",
            "--no-fund"]
    if plan.offline:
        argv.append("--offline")
    if plan.index_url:
        argv.append(f"--registry={plan.index_url}")
    argv.append(plan.tarball or f"{plan.package}@{plan.version}")
    return argv


def steps(plan: InstallPlan, layout: Layout, options: InstallOptions) -> Steps:
    readable = (Path(plan.tarball),) if plan.tarball else ()
    yield Step("install", install_argv(plan, layout, options), cwd=layout.prefix, network=not plan.offline,
               writable=(layout.prefix,), readable=readable, env=NPM_ENV)
    # npm links every bin of the package into node_modules/.bin; that link is what we expose.
    found = package_json_bins(layout.prefix / "node_modules" / plan.package, plan.package)
    return {name: layout.prefix / "node_modules" / ".bin" / name for name in found}
