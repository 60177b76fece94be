"""`infermeter sweep` (infermeter.experiments.sweep) and `infermeter merge`
(infermeter.experiments.merge)."""

from __future__ import annotations

from pathlib import Path

import typer

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


def sweep(
    file: Path = typer.Argument(..., help="The sweep file (SWEEP.toml): its jobs and stores."),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run the jobs as Ray tasks, on the cluster at ADDRESS, or RAY_ADDRESS's, or a new "
        "local one. Without it, one after another here.",
    ),
    address: str | None = typer.Argument(
        None, help="With --ray: the Ray cluster's head, HOST:PORT (e.g. 10.0.0.1:6379)."
    ),
) -> None:
    """Run a sweep of profiles and energy runs, merging each job's store as it finishes."""
    from infermeter.errors import UserError
    from infermeter.experiments.sweep import (
        JobResult,
        check_options,
        failures_line,
        load_sweep,
        run_sweep,
    )

    if address and not ray:
        raise UserError(
            f"{address!r} is a Ray address: add --ray (infermeter sweep FILE --ray ADDRESS)"
        )
    plan = load_sweep(file)
    check_options(plan, _options_of)
    where = f"on Ray ({address or 'RAY_ADDRESS or a local one'})" if ray else "one after another"
    console.print(
        f"{len(plan.jobs)} job(s) {where}; stores in {plan.stores}, merged into {plan.store}",
        highlight=False,
    )

    def done(r: JobResult) -> None:
        tries = f", {r.attempts} attempts" if r.attempts > 1 else ""
        note = f": {r.message}" if r.message else ""
        console.print(f"{'done' if r.ok else 'FAILED'} {r.job.name}{tries}{note}", highlight=False)

    results = run_sweep(plan, address, ray, done)
    line = failures_line(results, str(file))
    if line:
        say(line, "error:", "bold red")
        raise typer.Exit(code=1)
    console.print(f"all {len(results)} job(s) done; their runs are in {plan.store}")


def merge(
    target: Path = typer.Argument(..., help="The store to merge into (made if missing)."),
    sources: list[Path] = typer.Argument(..., help="Stores to merge from."),
) -> None:
    """Merge stores into one: every run once (by its key) and every measurement once."""
    from infermeter.experiments.merge import merge_stores

    console.print(merge_stores(target, sources).line(), highlight=False)
