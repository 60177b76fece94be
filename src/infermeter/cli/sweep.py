"""`infermeter sweep` (infermeter.experiments.sweep) and `infermeter merge`
(infermeter.store.merge)."""

from __future__ import annotations

import functools

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import console, say, user_errors

_registered_in: list[typer.Typer] = []  # the app whose parser knows every command's options


def register(app: typer.Typer) -> None:
    """Add `sweep` and `merge` to `app`."""
    _registered_in[:] = [app]
    app.command("sweep")(user_errors(sweep))
    app.command("merge")(user_errors(merge))


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
    group = typer.main.get_command(_registered_in[0])
    sw.check_options(plan, functools.partial(o.options_of, group))
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
    """Merge stores into one: every run and every measurement once, none dropped (a run of the
    same settings measured apart is kept as a run of its own)."""
    from infermeter.store.merge import merge_stores

    for line in merge_stores(r.target, r.sources).lines():
        console.print(line, highlight=False)
