"""`infermeter models`, `hardware` and `profile`: the catalogs, and a stack profiled, fitted,
validated and priced (infermeter.experiments.profile, infermeter.model)."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import console as cli_console
from infermeter.cli import options as o
from infermeter.cli.console import out, print_fit, print_notes, progress, say, show, user_errors
from infermeter.errors import UserError
from infermeter.workloads.queries import parse_list


def register(app: typer.Typer) -> None:
    """Add `models`, `hardware` and `profile` to `app`."""
    for command in (models, hardware, profile):
        app.command()(user_errors(command))


@o.request(rq.ModelsRequest)
def models(r: rq.ModelsRequest) -> None:
    """The built-in model catalog, with derived parameter counts (or one model's spec)."""
    from infermeter.report.tables import catalog_view
    from infermeter.spec.catalog import decode_context, resolve_spec, spec_report

    if r.show is not None:
        batches = parse_list(r.batch_sizes, "--batch-sizes") or (1,)
        spec = resolve_spec(r.show)
        spec = spec.with_dtype(r.dtype) if r.dtype else spec
        context = decode_context(spec, r.context)  # the model's own where shorter than 2048
        facts, per_batch = spec_report(spec, context, batches)
        show(facts, "Spec as infermeter reads it")
        show(per_batch, f"One decode step at context {context}")
    else:
        with_show = {
            "--context": r.context is not None,
            "--dtype": r.dtype is not None,
            "--batch-sizes": r.batch_sizes != rq.SHOW_BATCH_SIZES,
        }
        given = [flag for flag, set_here in with_show.items() if set_here]
        if given:  # never silently ignored
            raise UserError(
                f"{', '.join(given)} only apply to --show MODEL; add --show or drop them"
            )
        show(catalog_view(r.family), "Model catalog (any Hugging Face config.json works too)")


@o.request(rq.HardwareRequest)
def hardware(r: rq.HardwareRequest) -> None:
    """The accelerator catalog: peak FLOP/s, bandwidth, memory, power and price."""
    from infermeter.spec.hardware import accelerator_table, load_hardware_config

    catalog = load_hardware_config(r.hardware_config) if r.hardware_config else None
    show(accelerator_table(catalog), "Accelerators")


@o.request(rq.ProfileRequest)
def profile(r: rq.ProfileRequest) -> None:
    """Profile MODEL on a stack, fit the runtime model, validate it and price a few queries."""
    from infermeter.backends.api.outcome import INCOMPLETE_EXIT
    from infermeter.engine.launcher import serve_if_follower
    from infermeter.experiments.plans import (
        fit_profiled,
        profile_prices,
        profile_setup,
        profiled_sustained,
    )
    from infermeter.model.runfit import save_fitted, sustained_lines
    from infermeter.store.db import Store

    serve_if_follower(r.tensor_parallel)  # torchrun/srun: ranks other than 0 serve rank 0
    setup = profile_setup(r, lambda line: say(line, "warning:", "yellow"))
    print_notes(setup.notes)
    spec, grid = setup.spec, setup.grid
    with Store(r.store) as db, progress(f"profiling {spec.name} ({r.backend})") as bar:
        run = setup.run(db, r, bar)
        say(f"run {run.id} stored in {r.store} ({run.device})", err=False)
        for note in run.backend_info.get("notes") or []:  # e.g. a feature the server refused
            say(str(note), "note:", "yellow")
        outcome, fitted, why = fit_profiled(
            db, run.id, len(grid.points()), r.backend == "openai", r.accept_poor_fit,
            lambda outcome: say(outcome.line(), *cli_console.outcome_label(outcome)),
        )  # fmt: skip
    if why is not None:
        say(why, "not fitted:", "yellow")
        raise typer.Exit(code=INCOMPLETE_EXIT)
    for model_fit in fitted:
        print_fit(model_fit)
    if outcome is not None and not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)
    sustained, note = profiled_sustained(r.store, run.id, r.backend, r.accept_poor_fit)
    for line in sustained_lines(sustained, note):
        out(line)
    for line in save_fitted(fitted, r.output, sustained) if r.output else []:
        out(line)
    priced = profile_prices(r, setup, fitted, sustained)
    show(priced.estimates, f"estimates {priced.on()}, within the profiled range")
    print_notes(priced.notes)
