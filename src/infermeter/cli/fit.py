"""`infermeter fit`, `estimate`, `runs`, `show` and `export`: fitted models made, priced,
listed and written (infermeter.model)."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import (
    console,
    out,
    outcome_label,
    print_fit,
    print_notes,
    say,
    show,
    user_errors,
)
from infermeter.units import plural


def register(app: typer.Typer) -> None:
    """Add `fit`, `estimate`, `runs`, `show` and `export` to `app`."""
    for name, command in (("fit", fit), ("estimate", estimate), ("runs", runs)):
        app.command(name)(user_errors(command))
    app.command("show")(user_errors(show_run))
    app.command("export")(user_errors(export))


@o.request(rq.FitRequest)
def fit(r: rq.FitRequest) -> None:
    """Fit the runtime (and energy) model of a stored run or of a points file."""
    from infermeter.model.runfit import fit_request, save_fitted, sustained_lines

    result = fit_request(r)
    for model in result.models:
        print_fit(model)
    for line in sustained_lines(result.sustained, result.sustained_note):
        out(line)
    if not result.stored:
        out(
            "not stored as the run's fit (settings differ from the defaults); pass --save to "
            "store it"
        )
    for line in save_fitted(result.models, r.output, result.sustained) if r.output else []:
        out(line)


@o.request(rq.EstimateRequest)
def estimate(r: rq.EstimateRequest) -> None:
    """Price queries: idealized runtime, dollars and joules per query and in total."""
    from infermeter.model.estimate import summarize, write_table
    from infermeter.model.pricing import price_request

    priced, model_name = price_request(r)
    print_notes(priced.notes)
    print_notes(priced.warnings, "warning")
    estimates = priced.estimates
    if r.output:
        write_table(estimates, r.output)
        out(f"{plural(len(estimates), 'estimate')} written to {r.output}")
    if len(estimates) <= 50:
        show(estimates, f"estimates for {model_name} {priced.on()}")
    show(summarize(estimates).reset_index(names=""), plural(len(estimates), "query"))


@o.request(rq.StoreRequest)
def runs(r: rq.StoreRequest) -> None:
    """List the runs in the store."""
    from infermeter.store.db import ENERGY_COUNTS, Store

    with Store(r.store, read_only=True) as db:
        listed = db.runs()
    energy = (listed["kind"] == "energy").any()
    show(listed, f"runs in {r.store}" + (f" ({ENERGY_COUNTS})" if energy else ""))


@o.request(rq.RunRequest)
def show_run(r: rq.RunRequest) -> None:
    """A run's setting, its points (min/mean over trials) and its latest fit; a load run's
    summary table; an energy run's configurations and batches."""
    from infermeter.experiments.energy import stored_energy_run
    from infermeter.experiments.load import stored_load
    from infermeter.experiments.plans import load_table, load_title, stored_outcome
    from infermeter.model.runfit import points_summary, run_view
    from infermeter.store.db import Store

    with Store(r.store, read_only=True) as db:
        view = run_view(db, r.run)
        energy = stored_energy_run(db, view.record) if view.record.kind == "energy" else None
    if view.record.kind == "energy":  # its results are in the energy tables, not points
        console.print(view.header(), highlight=False)
        if energy is None:
            console.print("no configurations stored yet")
            return
        console.print(energy.line, highlight=False)
        show(energy.table, energy.title, digits=4)
        for line in energy.problems:
            console.print(line, markup=False, highlight=False)
        return
    if view.not_fitted:
        console.print(view.not_fitted, markup=False)
    console.print(view.header(), highlight=False)
    points, fits, fitted_now = view.points, view.fits, view.fitted_now
    if points.empty:
        console.print("no points stored yet")
        return
    for note in view.record.backend_info.get("notes") or []:  # as the profile said them
        say(str(note), "note:", "yellow", err=False)
    ending = stored_outcome(view.record, points)
    if view.record.kind.startswith("load"):  # the table `load` printed, then its end line
        grid = stored_load(view.record.grid)
        table = load_table(grid, points)
        show(table[[c for c in table.columns if not c.endswith("_p90_s")]], load_title(grid))
        say(ending.line(), *outcome_label(ending), err=False)
        return
    say(ending.line(), *outcome_label(ending), err=False)
    summary, bad = points_summary(points)
    trials = int(summary["trials"].sum())
    title = f"{plural(len(summary), 'point')} from {plural(trials, 'ok measurement')}"
    show(summary, f"{title} (min and mean over trials)")
    if not bad.empty:
        show(bad, f"{plural(len(bad), 'measurement')} not used in fits")
    for model in fits:
        print_fit(model)
    for line in view.sustained_lines():
        out(line)
    if fitted_now:
        console.print("fitted now with the default settings; not stored (run `infermeter fit`)")


@o.request(rq.ExportRequest)
def export(r: rq.ExportRequest) -> None:
    """Export a run's points (CSV/Parquet/JSONL) or its fit (HELM efficiency_data)."""
    from infermeter.model.runfit import export_run

    export_run(r.store, r.run, r.output, r.helm, console.print, out)
