"""`infermeter models`, `hardware` and `profile`: the catalogs, and a stack profiled, fitted,
validated and priced (infermeter.experiments.profile, infermeter.model)."""

from __future__ import annotations

from pathlib import Path

import typer

from infermeter.backends.config import OpenAIConfig
from infermeter.cli import console as cli_console
from infermeter.cli import options as o
from infermeter.cli.console import out, print_fit, print_notes, progress, say, show, user_errors


def register(app: typer.Typer) -> None:
    """Add `models`, `hardware` and `profile` to `app`."""
    for command in (models, hardware, profile):
        app.command()(user_errors(command))


def models(
    family: str | None = typer.Option(None, help="Only this family (e.g. llama)."),
    show_: str | None = typer.Option(
        None, "--show", help="One model (catalog name or config.json): the spec as read."
    ),
    context: int = typer.Option(2048, help="With --show: cached tokens of a decode step."),
    batch_sizes: str = typer.Option("1,8,64,256", help="With --show: decode batch sizes."),
    dtype: str | None = typer.Option(None, help="With --show: bytes at this dtype."),
) -> None:
    """The built-in model catalog, with derived parameter counts (or one model's spec)."""
    from infermeter.spec.catalog import resolve_spec, spec_report
    from infermeter.tables import catalog_view

    if show_ is not None:
        batches = o.parse_sizes(batch_sizes, "--batch-sizes") or (1,)
        spec = resolve_spec(show_)
        facts, per_batch = spec_report(spec.with_dtype(dtype) if dtype else spec, context, batches)
        show(facts, "Spec as infermeter reads it")
        show(per_batch, f"One decode step at context {context}")
    else:
        show(catalog_view(family), "Model catalog (any Hugging Face config.json works too)")


def hardware(hardware_config: Path | None = o.HardwareConfigOption) -> None:
    """The accelerator catalog: peak FLOP/s, bandwidth, memory, power and price."""
    from infermeter.spec.hardware import accelerator_table, load_hardware_config

    catalog = load_hardware_config(hardware_config) if hardware_config else None
    show(accelerator_table(catalog), "Accelerators")


@o.api_options()
def profile(
    model: str = typer.Argument(..., help="Catalog name (see `infermeter models`) or config.json."),
    backend: str = typer.Option(
        "engine", help="Stack to profile: engine (the reference) or hf (transformers)."
    ),
    device: str = o.DeviceOption,
    dtype: str | None = o.DtypeOption,
    prompt_sizes: str | None = typer.Option(None, help="e.g. 1,256,512,1024,1536."),
    output_sizes: str | None = typer.Option(None, help="e.g. 1,32,64,128,256."),
    batch_sizes: str = typer.Option("1", help="e.g. 1,8."),
    trials: int = typer.Option(3, help="Trials per point (the fit uses the minimum)."),
    tensor_parallel: int = typer.Option(1, "--tp", help="Tensor-parallel degree (engine)."),
    accelerator: str | None = typer.Option(None, help="Hardware entry (default: detected)."),
    num_accelerators: int = typer.Option(1, help="Accelerators the stack holds."),
    price_per_hour: float | None = o.PriceOption,
    power_watts: float | None = o.PowerOption,
    output: Path | None = typer.Option(None, help="Write the fitted model JSON here."),
    hardware_config: Path | None = o.HardwareConfigOption,
    settings: list[str] | None = o.SetOption,
    energy: bool = typer.Option(True, help="Meter GPU energy through NVML where present."),
    sample_interval: float = o.IntervalOption,
    warmup: float = typer.Option(
        10.0,
        "--warmup-s",
        help="Seconds of load before a metered profile (after its first call, which sets the "
        "shape up), so energy is measured on a warm card; the profile then keeps it busy.",
    ),
    accept_poor_fit: bool = o.AcceptPoorFitOption,
    validate: int | None = typer.Option(
        None,
        "--validate",
        help="Queries never profiled, measured after the grid to check the fit (default 16 on "
        "a GPU, 4 elsewhere; 0 skips).",
    ),
    api: OpenAIConfig = o.API,
    store: Path = o.StoreOption,
) -> None:
    """Profile MODEL on a stack, fit the runtime model, validate it and price a few queries."""
    from infermeter.backends.api.outcome import INCOMPLETE_EXIT
    from infermeter.engine.launcher import serve_if_follower
    from infermeter.experiments.profile import run_profile
    from infermeter.model.pricing import parse_overrides, price_profile
    from infermeter.model.runfit import save_fitted
    from infermeter.plans import fit_profiled, profile_setup
    from infermeter.spec.hardware import load_hardware_config
    from infermeter.store.db import Store
    from infermeter.store.outputs import check_output
    from infermeter.store.provenance import device_description

    serve_if_follower()  # under torchrun/srun: ranks other than 0 serve rank 0, then exit
    if output:
        check_output(output, "model file")  # before minutes of profiling, not after
    is_api = backend == "openai"
    overrides = parse_overrides(price_per_hour, power_watts, settings)
    catalog = load_hardware_config(hardware_config) if hardware_config else None
    setup = profile_setup(
        model, backend, device, dtype, (prompt_sizes, output_sizes, batch_sizes), trials,
        tensor_parallel, (accelerator, num_accelerators, overrides, catalog), warmup, validate,
        api, energy, sample_interval, lambda line: say(line, "warning:", "yellow"),
    )  # fmt: skip
    print_notes(setup.notes)
    spec, grid = setup.spec, setup.grid
    with Store(store) as db, progress(f"profiling {spec.name} ({backend})") as bar:
        run = run_profile(
            db, spec, setup.stack.to_dict(), setup.runner, setup.options, grid, bar.profile_start,
            bar.on_point, device=device_description(gpu=setup.on_gpu, device=setup.gpu),
            meter=setup.meter, warmup_s=warmup, validate=setup.validate,
        )  # fmt: skip
        say(f"run {run.id} stored in {store} ({run.device})", err=False)
        for note in run.backend_info.get("notes") or []:  # e.g. a feature the server refused
            say(str(note), "note:", "yellow")
        outcome, fitted, why = fit_profiled(
            db, run.id, len(grid.points()), is_api, accept_poor_fit,
            lambda outcome: say(outcome.line(), *cli_console.outcome_label(outcome)),
        )  # fmt: skip
    if why is not None:
        say(why, "not fitted:", "yellow")
        raise typer.Exit(code=INCOMPLETE_EXIT)
    for model_fit in fitted:
        print_fit(model_fit)
    if outcome is not None and not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)
    for line in save_fitted(fitted, output) if output else []:
        out(line)
    priced = price_profile(
        fitted, spec.max_context, accelerator if is_api else None,
        num_accelerators if is_api and accelerator else None, overrides, catalog,
    )  # fmt: skip
    show(priced.estimates, f"estimates {priced.on()}, within the profiled range")
    print_notes(priced.notes)
