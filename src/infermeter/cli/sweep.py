"""`infermeter sweep` (infermeter.experiments.sweep) and `infermeter merge`
(infermeter.store.merge)."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import console, say, user_errors


def register(app: typer.Typer) -> None:
    """Add `sweep` and `merge` to `app`."""
    app.command("sweep")(user_errors(sweep))
    app.command("merge")(user_errors(merge))


def _options_of(command: str) -> set[str]:
    """The options (without dashes) of `infermeter COMMAND`, as its parser knows them (the
    whole app's, imported when called: infermeter.cli.main imports this module)."""
    from infermeter.cli.main import app

    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {
        name.lstrip("-")
        for param in params
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]
        if name.startswith("--")
    }


@o.request(rq.SweepRequest)
def sweep(r: rq.SweepRequest) -> None:
    """Run a sweep of profiles and energy runs, merging each job's store as it finishes."""
    from infermeter.errors import UserError
    from infermeter.experiments import sweep as sw

    if r.address and not r.ray:
        raise UserError(
            f"{r.address!r} is a Ray address: add --ray (infermeter sweep FILE --ray ADDRESS)"
        )
    plan = sw.load_sweep(r.file)
    sw.check_options(plan, _options_of)
    ray_at = r.address or "RAY_ADDRESS or a local one"
    where = f"on Ray ({ray_at})" if r.ray else "one after another"
    console.print(
        f"{len(plan.jobs)} job(s) {where}; stores in {plan.stores}, merged into {plan.store}",
        highlight=False,
    )

    def done(j: sw.JobResult) -> None:  # one job finished
        tries = f", {j.attempts} attempts" if j.attempts > 1 else ""
        note = f": {j.message}" if j.message else ""
        console.print(f"{'done' if j.ok else 'FAILED'} {j.job.name}{tries}{note}", highlight=False)

    results = sw.run_sweep(plan, r.address, r.ray, done)
    line = sw.failures_line(results, str(r.file))
    if line:
        say(line, "error:", "bold red")
        raise typer.Exit(code=1)
    console.print(f"all {len(results)} job(s) done; their runs are in {plan.store}")


@o.request(rq.MergeRequest)
def merge(r: rq.MergeRequest) -> None:
    """Merge stores into one: every run once (by its key) and every measurement once."""
    from infermeter.store.merge import merge_stores

    console.print(merge_stores(r.target, r.sources).line(), highlight=False)
