"""pip installs: one venv per tool under the prefix, then pip from that venv, never the system Python.

Wheels only (`--only-binary=:all:`) unless the plan allows sdists: building an sdist runs the
package's own setup code, which is exactly the arbitrary command invariant 4 keeps out.
"""

from __future__ import annotations

from coord.installer.plan import InstallPlan
from coord.installer.steps import (
    InstallOptions,
    Layout,
    Step,
    Steps,
    console_scripts,
    local_paths,
    pip_base,
    pip_index_args,
)


def venv_step(layout: Layout, options: InstallOptions) -> Step:
    prefix = layout.prefix
    return Step("venv", [options.python, "-m", "venv", str(prefix)], cwd=prefix, network=False,
                writable=(prefix,))


def install_argv(plan: InstallPlan, layout: Layout) -> list[str]:
    binary = [] if plan.allow_sdist else ["--only-binary=:all:"]
    return [*pip_base(layout.prefix / "bin" / "python"), *binary, *pip_index_args(plan),
            f"{plan.package}=={plan.version}"]


def steps(plan: InstallPlan, layout: Layout, options: InstallOptions) -> Steps:
    yield venv_step(layout, options)
    yield Step("install", install_argv(plan, layout), cwd=layout.prefix, network=not plan.offline,
               writable=(layout.prefix,), readable=local_paths(plan.find_links))
    return console_scripts(layout.prefix, plan.package)
