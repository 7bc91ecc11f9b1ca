"""`coord status`: is it healthy, and if not, why."""

from __future__ import annotations

import click
from rich.markup import escape

from coord.cli.main import CliState, pass_state
from coord.cli.output import console, fmt, show, table


@click.command()
@pass_state
@click.pass_context
def status(ctx: click.Context, state: CliState) -> None:
    """Engines and whether they answer, queue depth, workers alive, recent failures. Exit 69 when the
    database or the queue engine is unreachable."""
    from coord.db import Database
    from coord.status import collect, healthy, reachability

    s = state.settings
    db = Database(s.db_url, sqlite_synchronous=s.sqlite_synchronous)
    report = collect(s, db)
    db.dispose()

    def human() -> None:
        d = report["database"]
        # One unwrapped line per engine (people copy URLs and paths out of it; scripts grep it), escaped
        # because a URL or an error text may hold brackets rich would read as markup.
        console.print("[bold]database[/]  " + escape(f"{d['engine']} {d['url']} {reachability(d)}"
                      f"{'' if not d.get('schema') else ' schema ' + str(d['schema'])}"), soft_wrap=True)
        q = report["queue"]
        console.print("[bold]queue[/]     " + escape(f"{q['engine']} {q['url']} {reachability(q)}"), soft_wrap=True)
        if not d["reachable"]:
            return
        console.print(f"[bold]jobs[/]      pending {q['pending_jobs']}, oldest {fmt(q['oldest_pending_age_s'])} s, "
                      f"failed last hour {q['failed_last_hour']}")
        console.print(f"[bold]tasks[/]     {fmt(report['tasks']) if report['tasks'] else 'none'}")
        console.print(f"[bold]gaps[/]      {report['gaps']}    [bold]sync errors[/] {report['sync_errors']}")
        if report.get("agent_folders"):
            a = report["agent_folders"]
            console.print(f"[bold]agents[/]    {a['files']} files in {len(a['folders'])} folders, last sync "
                          f"{fmt(a['last_sync'])}" + (f"; bad: {', '.join(a['bad_files'])} (`coord agents errors`)"
                                                      if a["bad_files"] else ""))
        for key in [k for k in report if k not in ("database", "queue", "tasks", "gaps", "sync_errors", "workers",
                                                   "state_dir", "periodic", "agent_folders")]:
            console.print(f"[bold]{key:9}[/] {fmt(report[key])}")
        workers = report["workers"]
        if workers:
            table("workers", ["worker", "alive", "seen s ago", "status", "jobs done / failed", "bells queued"],
                  [(w["worker_id"], w["alive"], w["seen_s_ago"], w["status"],
                    f"{w.get('jobs', {}).get('done', '-')} / {w.get('jobs', {}).get('failed', '-')}",
                    w.get("queued_bells")) for w in workers])
        else:
            console.print("[bold]workers[/]   none has reported (is `coord worker` running?)")
        if report.get("periodic"):
            table("periodic jobs", ["job", "runs", "finished s ago", "result / error"],
                  [(p["job"], p["runs"], p["finished_s_ago"], p["last_error"] or p["result"])
                   for p in report["periodic"]])
        if q["last_errors"]:
            table("last job errors", ["job", "kind", "status", "attempts", "error"],
                  [(e["id"], e["job"], e["status"], e["attempts"], e["error"]) for e in q["last_errors"]])

    show(ctx, report, human)
    if not healthy(report):
        ctx.exit(69)


def register(cli: click.Group) -> None:
    cli.add_command(status)
