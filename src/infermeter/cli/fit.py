"""`infermeter fit`, `estimate`, `runs`, `show` and `export`: fitted models made, priced,
listed and written (infermeter.model)."""

from __future__ import annotations

from pathlib import Path

import typer

from infermeter.cli import options as o
from infermeter.cli.console import console, out, print_fit, print_notes, show, user_errors
from infermeter.errors import UserError


def register(app: typer.Typer) -> None:
    """Add `fit`, `estimate`, `runs`, `show` and `export` to `app`."""
    for name, command in (("fit", fit), ("estimate", estimate), ("runs", runs)):
        app.command(name)(user_errors(command))
    app.command("show")(user_errors(show_run))
    app.command("export")(user_errors(export))


def fit(
    run: int | None = typer.Argument(None, help="Run id in the store (default: the latest)."),
    points: Path | None = typer.Option(
        None,
        help="CSV/JSONL of points from any tool: prompt_tokens, output_tokens, runtime_s "
        "[, trial, batch_size, energy_j].",
    ),
    denoise: str | None = typer.Option(
        None, help="Reduce runtime trials by min (the default, the paper), median or mean."
    ),
    overhead: str | None = typer.Option(
        None, help="none, auto (§3.5; the default for API runs) or seconds."
    ),
    decode: str | None = typer.Option(
        None,
        help="curve: decode time follows the measured points along o (default for local "
        "stacks); line: the paper's line per prompt size (default for APIs and --points).",
    ),
    folds: int = typer.Option(
        0, help="Also report a k-fold error over the profiled points (0: none)."
    ),
    slopes: str = typer.Option(
        "per-prompt",
        help="With --decode line: per-prompt g(p) from each prompt size's slope, or global: "
        "the paper's one g.",
    ),
    accept_poor_fit: bool = o.AcceptPoorFitOption,
    save: bool | None = typer.Option(
        None,
        "--save/--no-save",
        help="Store this fit as the run's fit (default: only when every setting is the "
        "default, so an exploratory fit never replaces it).",
    ),
    output: Path | None = typer.Option(None, help="Write the fitted runtime model JSON here."),
    model_name: str = typer.Option("", "--model", help="Name recorded with --points."),
    store: Path = o.StoreOption,
) -> None:
    """Fit the runtime (and energy) model of a stored run or of a points file."""
    from infermeter.model.runfit import fit_settings, refit, save_fitted
    from infermeter.store.outputs import check_output

    if output:
        check_output(output, "model file")
    settings = fit_settings(denoise, overhead, decode, slopes, folds, accept_poor_fit)
    result = refit(settings, points, model_name, store, run, save)
    for model in result.models:
        print_fit(model)
    if not result.stored:
        out(
            "not stored as the run's fit (settings differ from the defaults); pass --save to "
            "store it"
        )
    for line in save_fitted(result.models, output) if output else []:
        out(line)


def estimate(
    profile_path: Path = typer.Option(..., "--profile", help="Fitted model JSON or HELM file."),
    model: str | None = typer.Option(None, help="Entry of a HELM efficiency_data file."),
    queries: Path | None = typer.Option(None, help="CSV/JSONL of prompt_tokens, output_tokens."),
    prompt_tokens: str | None = typer.Option(None, help="Prompt sizes, e.g. 512 or 1,512."),
    output_tokens: str | None = typer.Option(None, help="Output lengths, e.g. 64 or 1,64."),
    energy_profile: Path | None = typer.Option(None, help="Fitted energy model JSON."),
    accelerator: str | None = typer.Option(None, help="Price on this hardware entry."),
    num_accelerators: int | None = typer.Option(None, help="Accelerators per query."),
    price_per_hour: float | None = o.PriceOption,
    power_watts: float | None = o.PowerOption,
    grid_intensity: float | None = typer.Option(None, help="gCO2e per kWh, for CO2e."),
    output: Path | None = typer.Option(None, help="Write per-query rows (.csv/.jsonl/.parquet)."),
    hardware_config: Path | None = o.HardwareConfigOption,
    settings: list[str] | None = o.SetOption,
) -> None:
    """Price queries: idealized runtime, dollars and joules per query and in total."""
    from infermeter.model.estimate import summarize, write_table
    from infermeter.model.helm import load_model_set
    from infermeter.model.pricing import parse_overrides, price_queries, query_frame
    from infermeter.spec.hardware import load_hardware_config
    from infermeter.store.outputs import check_output

    if output:
        check_output(output)
    runtime_model = load_model_set(profile_path, model)
    energy_model = load_model_set(energy_profile) if energy_profile else None
    frame = query_frame(
        queries,
        o.parse_sizes(prompt_tokens, "--prompt-tokens") if queries is None else None,
        o.parse_sizes(output_tokens, "--output-tokens") if queries is None else None,
    )
    catalog = load_hardware_config(hardware_config) if hardware_config else None
    overrides = parse_overrides(price_per_hour, power_watts, settings)
    priced = price_queries(
        frame, runtime_model, energy_model, accelerator, num_accelerators, overrides, catalog,
        grid_intensity,
    )  # fmt: skip
    print_notes(priced.notes)
    print_notes(priced.warnings, "warning")
    estimates = priced.estimates
    if output:
        write_table(estimates, output)
        out(f"{len(estimates)} estimates written to {output}")
    if len(estimates) <= 50:
        show(estimates, f"estimates for {runtime_model.first().model} {priced.on()}")
    show(summarize(estimates).reset_index(names=""), f"{len(estimates)} queries")


def runs(store: Path = o.StoreOption) -> None:
    """List the runs in the store."""
    from infermeter.store.db import Store

    with Store(store, read_only=True) as db:
        show(db.runs(), f"runs in {store}")


def show_run(run: int | None = o.RunArgument, store: Path = o.StoreOption) -> None:
    """A run's setting, its points (min/mean over trials) and its latest fit."""
    from infermeter.model.runfit import points_summary, run_view
    from infermeter.store.db import Store

    with Store(store, read_only=True) as db:
        view = run_view(db, run)
    if view.not_fitted:
        console.print(view.not_fitted, markup=False)
    console.print(view.header(), highlight=False)
    points, fits, fitted_now = view.points, view.fits, view.fitted_now
    if points.empty:
        console.print("no points stored yet")
        return
    summary, bad = points_summary(points)
    show(summary, "points")
    if not bad.empty:
        show(bad, "points not used in fits")
    for model in fits:
        print_fit(model)
    if fitted_now:
        console.print("fitted now with the default settings; not stored (run `infermeter fit`)")


def export(
    run: int | None = o.RunArgument,
    output: Path | None = typer.Option(None, help="Points as .csv, .jsonl or .parquet."),
    helm: Path | None = typer.Option(None, help="The run's runtime fit as HELM efficiency_data."),
    store: Path = o.StoreOption,
) -> None:
    """Export a run's points (CSV/Parquet/JSONL) or its fit (HELM efficiency_data)."""
    from infermeter.model.estimate import write_table
    from infermeter.model.fitted import fit_run
    from infermeter.model.helm import save_helm_efficiency
    from infermeter.store.db import Store
    from infermeter.store.outputs import check_output

    if output is None and helm is None:
        raise UserError("give --output FILE for points or --helm FILE for the fit")
    for path in (output, helm):
        if path is not None:
            check_output(path)
    with Store(store, read_only=True) as db:
        run_id = run if run is not None else db.latest_run_id()
        record = db.get_run(run_id)
        if output is not None:
            write_table(db.points(run_id), output)
            console.print(f"run {run_id} points written to {output}")
        if helm is not None:
            model = db.latest_fit(run_id) or fit_run(db, run_id)[0]
            save_helm_efficiency({record.model: model}, helm)
            out(
                f"run {run_id} fit written to {helm} (HELM efficiency_data; fitted with "
                f"{model.describe_fit()})"
            )
