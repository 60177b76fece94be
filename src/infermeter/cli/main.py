"""The `infermeter` command: every verb is one call into the library, printed with rich."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from infermeter.backends.api.outcome import INCOMPLETE_EXIT
from infermeter.errors import UserError
from infermeter.experiments.profile import (
    DEFAULT_VALIDATE_CPU,
    DEFAULT_VALIDATE_GPU,
    ProfileGrid,
    default_grid,
    run_profile,
    trust_warning,
)
from infermeter.measure.meter import check_warmup_s
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import (
    describe_pricing,
    estimate_queries,
    profiled_sample,
    query_grid,
    range_notes,
    read_points,
    read_queries,
    summarize,
    write_table,
)
from infermeter.model.fit import FitPolicy, fit_profile
from infermeter.model.fitted import fit_run
from infermeter.model.helm import load_model_set, load_profile, save_helm_efficiency
from infermeter.spec.catalog import catalog_table, resolve_spec
from infermeter.spec.hardware import (
    Accelerator,
    accelerator_table,
    build_stack,
    load_hardware_config,
)
from infermeter.store.db import Store
from infermeter.store.outputs import check_output
from infermeter.store.provenance import device_description

app = typer.Typer(
    help="What LLM inference really costs: profile a model on a stack, fit the runtime model of "
    "the idealized-runtime paper, and price any query in seconds, dollars and joules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output keeps whole tables (rich would wrap at 80 columns without a terminal).
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

DEFAULT_STORE = os.environ.get("INFERMETER_STORE", "infermeter.sqlite")
StoreOption = typer.Option(DEFAULT_STORE, "--store", help="SQLite store of runs and points.")
AcceptPoorFitOption = typer.Option(
    False, help="Keep a fit that prices its own points worse than their mean (R² < 0)."
)
HardwareConfigOption = typer.Option(
    None, "--hardware-config", help="TOML/JSON file overriding or adding accelerators."
)


def _print_version(value: bool) -> None:
    """--version: the package version and, in a checkout, its commit."""
    if not value:
        return
    from infermeter import __version__
    from infermeter.store.provenance import git_commit

    commit = git_commit()
    console.print(
        f"infermeter {__version__}" + (f" (commit {commit[:10]})" if commit else ""),
        markup=False,
        highlight=False,
    )
    raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Options of the command itself (before the verb)."""


def hardware_catalog(path: Path | None) -> dict[str, Accelerator] | None:
    return load_hardware_config(path) if path else None


F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `timeout`'s stop), unwound like Ctrl-C so that every
    `finally` runs: runs are marked interrupted, meters stopped, power limits restored."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the unwinding
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if previous is not None:  # None: set from C, and Python cannot put it back
            signal.signal(signal.SIGTERM, previous)


def user_errors(func: F) -> F:
    """Turn a UserError into one red line and exit code 2, never a traceback; Ctrl-C and
    SIGTERM into one line and exit code 130 / 143 once everything measured is stored."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_unwinds():
                return func(*args, **kwargs)
        except UserError as exc:
            say(f"{exc}", "error:", "bold red")  # printed literally: it may quote a server
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            err_console.print(
                f"[yellow]{how}:[/] everything measured so far is stored; rerun the same "
                "command to resume"
            )
            raise typer.Exit(code=143 if isinstance(exc, Terminated) else 130) from None

    return wrapper  # type: ignore[return-value]


def say(text: str, label: str = "", style: str = "", err: bool = True) -> None:
    """Print `text` literally (never as rich markup: it may quote a server or a path), after
    an optional styled `label` such as "error:" or "note:"."""
    line = Text.assemble((label, style), " ", text) if label else Text(text)
    (err_console if err else console).print(line, highlight=False, soft_wrap=True)


def progress_bar() -> Progress:
    """The bar every long verb shows: description, bar, done/total, last item, time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeRemainingColumn(),
        console=console,
    )


def parse_sizes(text: str | None, label: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"{label} must be comma-separated whole numbers, e.g. 1,64,128") from None
    if not sizes:
        raise UserError(f"{label} is empty; give comma-separated whole numbers")
    return sizes


SetOption = typer.Option(
    None,
    "--set",
    help="Override any accelerator value, e.g. --set memory_bandwidth=3.0e12 (repeatable).",
)

# ---- options of OpenAI-compatible APIs (--backend openai, `load`) ---------------------------
BaseUrlOption = typer.Option(
    None, "--base-url", help="API base URL, e.g. http://127.0.0.1:8000/v1 (env OPENAI_BASE_URL)."
)
ApiModelOption = typer.Option(
    None, "--api-model", help="Model name the server serves (default: its only one)."
)
ApiKeyOption = typer.Option(
    None,
    "--api-key",
    help="API key (env OPENAI_API_KEY or INFERMETER_API_KEY); never stored or printed.",
    show_default=False,
)
EndpointOption = typer.Option("completions", "--endpoint", help="completions or chat.")
StreamOption = typer.Option(
    True, "--stream/--no-stream", help="Stream tokens (TTFT, inter-token latencies)."
)
TokenizerOption = typer.Option(
    None,
    "--tokenizer",
    help="The served model's tokenizer.json, SentencePiece .model or 'bytes' (default: "
    "calibrate from the server's usage counts).",
)
IdenticalPromptsOption = typer.Option(
    False, "--identical-prompts", help="Same prompt every trial (default: new words per trial)."
)
RequestTimeoutOption = typer.Option(600.0, "--timeout", help="Seconds per request attempt.")
RetriesOption = typer.Option(3, "--retries", help="Retries per request on faults (jittered).")
StallTimeoutOption = typer.Option(
    120.0, "--stall-timeout", help="Seconds without a byte before an attempt is given up."
)


def _api_spec(model: str) -> Any:
    """A catalog spec for MODEL, or a placeholder: a black-box API's shape is unknown."""
    from infermeter.backends.openai import api_spec

    return api_spec(model)


def openai_backend(
    base_url: str | None,
    api_model: str | None,
    api_key: str | None,
    endpoint: str,
    stream: bool,
    tokenizer: str | None,
    identical_prompts: bool,
    timeout: float,
    retries: int,
    stall_timeout: float = 120.0,
    size_option: str = "--prompt-sizes",
) -> tuple[dict[str, Any], Any]:
    """(options stored with the run, the backend); the key goes to the backend only."""
    from infermeter.backends import get_backend

    runner = get_backend(
        "openai",
        base_url=base_url,
        api_model=api_model,
        api_key=api_key,
        endpoint=endpoint,
        stream=stream,
        tokenizer=tokenizer,
        identical_prompts=identical_prompts,
        timeout_s=timeout,
        retries=retries,
        stall_timeout_s=stall_timeout,
        size_option=size_option,
    )
    if runner.url_had_credentials:
        say(
            "--base-url holds credentials (user:key@): they are sent as Basic auth and left "
            "out of everything stored and printed; prefer --api-key or OPENAI_API_KEY",
            "warning:",
            "yellow",
        )
    options = {
        "base_url": runner.config.base_url,
        "api_model": runner.api_model,
        "endpoint": endpoint,
        "stream": stream,
        "tokenizer": tokenizer,
        "identical_prompts": identical_prompts,
    }
    return options, runner


def parse_overrides(
    price_per_hour: float | None, power_watts: float | None, settings: list[str] | None = None
) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} must look like KEY=VALUE, e.g. tdp_watts=500")
        try:
            overrides[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a number") from None
    if price_per_hour is not None:
        overrides["price_per_hour_usd"] = price_per_hour
    if power_watts is not None:
        overrides["tdp_watts"] = power_watts
    return overrides


def frame_table(frame: pd.DataFrame, title: str | None = None, digits: int = 5) -> Table:
    """A rich table of `frame`; titles, headers and cells are literal text, never markup."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    for column in frame.columns:
        table.add_column(
            Text(str(column)), justify="right" if frame[column].dtype.kind in "fiu" else "left"
        )
    for row in frame.itertuples(index=False):
        table.add_row(*(Text(_cell(v, digits)) for v in row))
    return table


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}g}"  # NaN shows as "-"
    return str(value)


def print_notes(notes: list[str], kind: str = "note") -> None:
    """Notes and warnings on stderr, each one line, their text printed literally."""
    for note in notes:
        err_console.print(
            Text.assemble((f"{kind}:", "yellow"), " ", note), highlight=False, soft_wrap=True
        )


def fit_table(model: CostModel) -> Table:
    """The paper's per-prompt-size lines: PE as priced, the line's slope and R²."""
    per_p = pd.DataFrame(model.fit.get("per_prompt", []))
    unit = model.unit
    batch = f", batch {model.batch_size}" if model.batch_size != 1 else ""
    table = Table(title=f"{model.quantity} model of {model.model}{batch}", title_justify="left")
    for column in ("prompt tokens", f"PE ({unit})", f"g ({unit}/token)", "R²", "points"):
        table.add_column(column, justify="right")
    for row in per_p.itertuples(index=False):
        table.add_row(
            str(row.prompt_tokens),
            f"{float(model.prompt_encoding_at(row.prompt_tokens)):.6f}",
            f"{row.slope:.6g}",
            f"{row.r2:.6f}",
            str(row.n_points),
        )
    return table


def validation_line(model: CostModel) -> str:
    """The figure a profile reports about itself: its error on queries it never profiled."""
    check = model.fit.get("validation") or {}
    if not check.get("n"):
        return "not validated (no validation queries measured; profile with --validate N)"
    return (
        f"validated on {check['n']} queries never profiled: MAPE {check['mape_pct']:.2f}%, "
        f"max {check['max_error_pct']:.2f}%, mean error {check['bias_pct']:+.2f}%"
    )


def print_fit(model: CostModel) -> None:
    console.print(fit_table(model))
    sizes = model.prompt_sizes
    console.print(
        f"per output token g = {model.per_output_token:.6g} {model.unit}"
        + (f", overhead = {model.overhead:.6g} {model.unit}" if model.overhead else "")
        + f"; lines' R² overall = {model.fit.get('r2_overall', float('nan')):.6f}; PE at "
        f"{len(sizes)} prompt sizes ({sizes[0]}-{sizes[-1]}); fitted with "
        f"{model.describe_fit()}",
        markup=False,
        highlight=False,
    )
    console.print(f"{model.quantity}: {validation_line(model)}", markup=False, highlight=False)
    warning = trust_warning(model)
    if warning:
        print_notes([warning], "warning")
    for note in model.fit.get("notes") or []:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    cv = model.fit.get("cross_validation")
    if cv and cv.get("folds"):
        console.print(
            f"k-fold over the profiled points ({cv['folds']} folds; interpolation within the "
            f"grid, not new queries): MAPE {cv['mape']:.2f}%, max {cv['max_abs_pct_error']:.2f}%",
            markup=False,
            highlight=False,
        )


@app.command()
@user_errors
def models(
    family: str | None = typer.Option(None, help="Only this family (e.g. llama)."),
    show: str | None = typer.Option(
        None, "--show", help="One model (catalog name or config.json): the spec as read."
    ),
    context: int = typer.Option(2048, help="With --show: cached tokens of a decode step."),
    batch_sizes: str = typer.Option("1,8,64,256", help="With --show: decode batch sizes."),
    dtype: str | None = typer.Option(None, help="With --show: bytes at this dtype."),
) -> None:
    """The built-in model catalog, with derived parameter counts (or one model's spec)."""
    if show is not None:
        from infermeter.spec.catalog import spec_report

        batches = parse_sizes(batch_sizes, "--batch-sizes") or (1,)
        spec = resolve_spec(show)
        facts, per_batch = spec_report(spec.with_dtype(dtype) if dtype else spec, context, batches)
        console.print(frame_table(facts, "Spec as infermeter reads it"))
        console.print(frame_table(per_batch, f"One decode step at context {context}"))
        return
    table = catalog_table()
    if family:
        table = table[table["family"].str.lower() == family.lower()]
        if table.empty:
            raise UserError(f"no catalog model of family {family!r}; run `infermeter models`")
    short = table.rename(
        columns={
            "params_b": "params (B)",
            "hidden_size": "h",
            "num_layers": "l",
            "num_heads": "heads",
            "num_kv_heads": "kv",
            "ffn_size": "ffn",
            "vocab_size": "vocab",
            "max_context": "context",
        }
    ).drop(columns=["source"], errors="ignore")
    console.print(frame_table(short, "Model catalog (any Hugging Face config.json works too)"))


@app.command()
@user_errors
def hardware(hardware_config: Path | None = HardwareConfigOption) -> None:
    """The accelerator catalog: peak FLOP/s, bandwidth, memory, power and price."""
    console.print(frame_table(accelerator_table(hardware_catalog(hardware_config)), "Accelerators"))


@app.command()
@user_errors
def profile(
    model: str = typer.Argument(..., help="Catalog name (see `infermeter models`) or config.json."),
    backend: str = typer.Option(
        "engine", help="Stack to profile: engine (the reference) or hf (transformers)."
    ),
    device: str = typer.Option("auto", help="auto, cuda, cuda:N or cpu."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16."),
    prompt_sizes: str | None = typer.Option(None, help="e.g. 1,256,512,1024,1536."),
    output_sizes: str | None = typer.Option(None, help="e.g. 1,32,64,128,256."),
    batch_sizes: str = typer.Option("1", help="e.g. 1,8."),
    trials: int = typer.Option(3, help="Trials per point (the fit uses the minimum)."),
    tensor_parallel: int = typer.Option(1, "--tp", help="Tensor-parallel degree (engine)."),
    accelerator: str | None = typer.Option(None, help="Hardware entry (default: detected)."),
    num_accelerators: int = typer.Option(1, help="Accelerators the stack holds."),
    price_per_hour: float | None = typer.Option(None, help="Override $/accelerator-hour."),
    power_watts: float | None = typer.Option(None, help="Override rated W/accelerator."),
    output: Path | None = typer.Option(None, help="Write the fitted model JSON here."),
    hardware_config: Path | None = HardwareConfigOption,
    settings: list[str] | None = SetOption,
    energy: bool = typer.Option(True, help="Meter GPU energy through NVML where present."),
    sample_interval: float = typer.Option(0.1, help="Power/utilisation sampling period (s)."),
    warmup: float = typer.Option(
        10.0,
        "--warmup-s",
        help="Seconds of load before a metered profile (after its first call, which sets the "
        "shape up), so energy is measured on a warm card; the profile then keeps it busy.",
    ),
    accept_poor_fit: bool = AcceptPoorFitOption,
    validate: int | None = typer.Option(
        None,
        "--validate",
        help="Queries never profiled, measured after the grid to check the fit (default 16 on "
        "a GPU, 4 elsewhere; 0 skips).",
    ),
    base_url: str | None = BaseUrlOption,
    api_model: str | None = ApiModelOption,
    api_key: str | None = ApiKeyOption,
    endpoint: str = EndpointOption,
    stream: bool = StreamOption,
    tokenizer: str | None = TokenizerOption,
    identical_prompts: bool = IdenticalPromptsOption,
    timeout: float = RequestTimeoutOption,
    retries: int = RetriesOption,
    stall_timeout: float = StallTimeoutOption,
    store: Path = StoreOption,
) -> None:
    """Profile MODEL on a stack, fit the runtime model, validate it and price a few queries."""
    from infermeter.engine.launcher import serve_if_follower

    serve_if_follower()  # under torchrun/srun: ranks other than 0 serve rank 0, then exit
    if output:
        check_output(output, "model file")  # before minutes of profiling, not after
    is_api = backend == "openai"  # a black box: MODEL may be any name, nothing runs locally
    spec = _api_spec(model) if is_api else resolve_spec(model)
    overrides = parse_overrides(price_per_hour, power_watts, settings)
    catalog = hardware_catalog(hardware_config)
    stack, on_gpu = build_stack(
        backend,
        "cpu" if is_api else device,
        dtype,
        spec.dtype,
        accelerator,
        num_accelerators,
        tensor_parallel,
        overrides,
        catalog,
    )
    defaults = default_grid(spec, on_gpu, trials)
    chosen_p = parse_sizes(prompt_sizes, "--prompt-sizes")
    grid = ProfileGrid(
        chosen_p or defaults.prompt_sizes,
        parse_sizes(output_sizes, "--output-sizes") or defaults.output_sizes,
        parse_sizes(batch_sizes, "--batch-sizes") or (1,),
        trials,
        () if chosen_p else defaults.pe_sizes,  # PE knots go with the default prompt sizes
    )
    grid.validate(spec)
    check_warmup_s(warmup)
    if validate is None:
        validate = DEFAULT_VALIDATE_GPU if on_gpu else DEFAULT_VALIDATE_CPU
    if validate < 0:
        raise UserError(f"--validate must be 0 or more queries, not {validate}")
    from infermeter.backends import get_backend

    gpu = device if device.startswith("cuda") else "cuda"  # cuda:N: backend, meter and pricing
    options: dict[str, Any] = {"device": gpu if on_gpu else "cpu", "dtype": stack.dtype}
    if tensor_parallel > 1:
        options["tp"] = tensor_parallel
    if is_api:
        options, runner = openai_backend(
            base_url,
            api_model,
            api_key,
            endpoint,
            stream,
            tokenizer,
            identical_prompts,
            timeout,
            retries,
            stall_timeout,
        )
        runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    else:
        runner = get_backend(backend, **options)
    meter = None
    if energy and on_gpu:
        from infermeter.measure.meter import Meter

        meter = Meter.for_device(options["device"], tensor_parallel, interval_s=sample_interval)
        if meter.note:
            err_console.print(f"[yellow]note:[/] {meter.note}")
    with (
        Store(store) as db,
        progress_bar() as bar,
    ):
        task = bar.add_task(f"profiling {spec.name} ({backend})", total=None, last="")

        def on_start(run: Any, done: int, total: int) -> None:
            bar.update(task, total=total, completed=done)
            if done:
                bar.console.print(
                    f"resuming run {run.id}: {done}/{total} measurements already stored "
                    "(grid and validation)"
                )

        def on_point(point: Any, m: Any) -> None:
            last = f"p={point.prompt_tokens} o={point.output_tokens} {m.runtime_s:.3f}s"
            if m.status != "ok":
                last += f" {m.status}"
            bar.update(task, advance=1, last=last)

        run = run_profile(
            db,
            spec,
            stack.to_dict(),
            runner,
            options,
            grid,
            on_start,
            on_point,
            device=device_description(gpu=on_gpu, device=gpu),
            meter=meter,
            warmup_s=warmup,
            validate=validate,
        )
        say(f"run {run.id} stored in {store} ({run.device})", err=False)
        for note in run.backend_info.get("notes") or []:  # e.g. a feature the server refused
            say(str(note), "note:", "yellow")
        outcome = _api_outcome(db, run.id, len(grid.points())) if is_api else None
        # The policy by backend: an API's constant overhead (§3.5) too.
        policy = FitPolicy(api=is_api, accept_poor_fit=accept_poor_fit)
        fitted = _fit_or_note(db, run.id, outcome, policy)
        for model_fit in fitted:
            db.record_fit(run.id, model_fit)
    for model_fit in fitted:
        print_fit(model_fit)
    if outcome is not None and not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)
    runtime_models = [m for m in fitted if m.quantity == "runtime_s"]
    energy_models = [m for m in fitted if m.quantity == "energy_j"]
    if output:
        _save_fitted(fitted, output)
    runtime_model = runtime_models[0]
    energy = energy_models[0] if energy_models else None
    pricing, notes = describe_pricing(
        runtime_model,
        accelerator if is_api else None,
        num_accelerators if is_api and accelerator else None,
        overrides,
        catalog,
        measured_energy=energy is not None,
    )
    sample = profiled_sample(runtime_model, spec.max_context)
    estimates = estimate_queries(sample, runtime_model, pricing, energy)
    on = f"on {pricing.describe()}" if pricing else "(runtime only, not priced)"
    console.print(frame_table(estimates, f"estimates {on}, within the profiled range"))
    print_notes(notes)


def _api_outcome(db: Store, run_id: int, expected: int) -> Any:
    """Print how an API run ended (counts by cause); an incomplete run is marked so."""
    from infermeter.backends.api.outcome import run_outcome

    outcome = run_outcome(db.points(run_id), expected)
    say(outcome.line(), *(("", "") if outcome.complete else ("incomplete:", "yellow")))
    if not outcome.complete:
        db.set_run_status(run_id, "incomplete")
    return outcome


def _fit_or_note(db: Store, run_id: int, outcome: Any, policy: FitPolicy) -> list[CostModel]:
    """The run's models under `policy`; for an incomplete API run a fit that cannot be made
    is a note (the exit code says the rest), otherwise an error that says the run is stored."""
    try:
        return fit_run(db, run_id, policy)
    except UserError as error:
        if outcome is None or outcome.complete:
            raise UserError(f"run {run_id} is stored, but {error}") from error
        say(str(error), "not fitted:", "yellow")
        raise typer.Exit(code=INCOMPLETE_EXIT) from None


def _save_fitted(models: list[CostModel], output: Path) -> None:
    """The runtime model(s) to OUTPUT, the energy model(s) beside it as OUTPUT.energy.json."""
    from infermeter.model.cost_model import save_models

    runtime = [m for m in models if m.quantity == "runtime_s"]
    energy = [m for m in models if m.quantity == "energy_j"]
    try:
        save_models(runtime, output)
        console.print(f"runtime model written to {output}", markup=False)
        if energy:
            energy_path = output.with_name(output.stem + ".energy" + output.suffix)
            save_models(energy, energy_path)
            console.print(f"energy model written to {energy_path}", markup=False)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}; pass another path") from exc


def _parse_overhead(text: str) -> str | float:
    if text in ("none", "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError("--overhead must be none, auto or a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise UserError("--overhead must be none, auto or a finite number of seconds >= 0")
    return value


@app.command()
@user_errors
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
    accept_poor_fit: bool = AcceptPoorFitOption,
    save: bool | None = typer.Option(
        None,
        "--save/--no-save",
        help="Store this fit as the run's fit (default: only when every setting is the "
        "default, so an exploratory fit never replaces it).",
    ),
    output: Path | None = typer.Option(None, help="Write the fitted runtime model JSON here."),
    model_name: str = typer.Option("", "--model", help="Name recorded with --points."),
    store: Path = StoreOption,
) -> None:
    """Fit the runtime (and energy) model of a stored run or of a points file."""
    if output:
        check_output(output, "model file")
    if denoise not in (None, "min", "median", "mean"):
        raise UserError("--denoise must be min, median or mean")
    if decode not in (None, "line", "curve"):
        raise UserError("--decode must be line or curve")
    if slopes not in ("per-prompt", "global"):
        raise UserError("--slopes must be per-prompt or global")
    if folds < 0 or folds == 1:
        raise UserError("--folds must be 0 (none) or at least 2")
    settings: dict[str, Any] = {
        "denoise": denoise,
        "overhead": _parse_overhead(overhead) if overhead is not None else None,
        "decode": decode,
        "slopes": slopes.replace("-", "_"),
        "folds": folds,
        "accept_poor_fit": accept_poor_fit,
    }
    if points is not None:
        policy = FitPolicy(api=False, **{**settings, "decode": decode or "line"})
        fitted = fit_profile(
            read_points(points),
            policy,
            model=model_name or points.stem,
            provenance={"points_file": str(points)},
        )
    else:
        with Store(store) as db:
            run_id = run if run is not None else db.latest_run_id()
            record = db.get_run(run_id)
            policy = FitPolicy(api=record.backend == "openai", **settings)
            fitted = fit_run(db, run_id, policy)
            keep = policy.is_default if save is None else save
            if keep:
                for model in fitted:
                    db.record_fit(run_id, model)
    for model in fitted:
        print_fit(model)
    if points is None and not keep:
        console.print(
            "not stored as the run's fit (settings differ from the defaults); pass --save to "
            "store it",
            markup=False,
        )
    if output:
        _save_fitted(fitted, output)


@app.command()
@user_errors
def estimate(
    profile_path: Path = typer.Option(..., "--profile", help="Fitted model JSON or HELM file."),
    model: str | None = typer.Option(None, help="Entry of a HELM efficiency_data file."),
    queries: Path | None = typer.Option(None, help="CSV/JSONL of prompt_tokens, output_tokens."),
    prompt_tokens: str | None = typer.Option(None, help="Prompt sizes, e.g. 512 or 1,512."),
    output_tokens: str | None = typer.Option(None, help="Output lengths, e.g. 64 or 1,64."),
    energy_profile: Path | None = typer.Option(None, help="Fitted energy model JSON."),
    accelerator: str | None = typer.Option(None, help="Price on this hardware entry."),
    num_accelerators: int | None = typer.Option(None, help="Accelerators per query."),
    price_per_hour: float | None = typer.Option(None, help="Override $/accelerator-hour."),
    power_watts: float | None = typer.Option(None, help="Override rated W/accelerator."),
    grid_intensity: float | None = typer.Option(None, help="gCO2e per kWh, for CO2e."),
    output: Path | None = typer.Option(None, help="Write per-query rows (.csv/.jsonl/.parquet)."),
    hardware_config: Path | None = HardwareConfigOption,
    settings: list[str] | None = SetOption,
) -> None:
    """Price queries: idealized runtime, dollars and joules per query and in total."""
    if output:
        check_output(output)
    runtime_model = load_model_set(profile_path, model)
    energy_model = load_model_set(energy_profile) if energy_profile else None
    if queries is not None:
        frame = read_queries(queries)
    else:
        p = parse_sizes(prompt_tokens, "--prompt-tokens")
        o = parse_sizes(output_tokens, "--output-tokens")
        if p is None or o is None:
            raise UserError("give --queries FILE, or --prompt-tokens and --output-tokens")
        frame = query_grid(list(p), list(o))
    warnings = range_notes(frame, runtime_model)  # a query past the context stops here
    pricing, notes = describe_pricing(
        runtime_model.first(),
        accelerator,
        num_accelerators,
        parse_overrides(price_per_hour, power_watts, settings),
        hardware_catalog(hardware_config),
        measured_energy=energy_model is not None,
    )
    print_notes(notes)
    print_notes(warnings, "warning")
    estimates = estimate_queries(frame, runtime_model, pricing, energy_model, grid_intensity)
    if output:
        write_table(estimates, output)
        console.print(f"{len(estimates)} estimates written to {output}", markup=False)
    if len(estimates) <= 50:
        on = f" on {pricing.describe()}" if pricing else " (runtime only, not priced)"
        title = f"estimates for {runtime_model.first().model}{on}"
        console.print(frame_table(estimates, title))
    summary = summarize(estimates).reset_index(names="")
    console.print(frame_table(summary, f"{len(estimates)} queries"))


@app.command()
@user_errors
def runs(store: Path = StoreOption) -> None:
    """List the runs in the store."""
    with Store(store, read_only=True) as db:
        console.print(frame_table(db.runs(), f"runs in {store}"))


@app.command()
@user_errors
def show(
    run: int | None = typer.Argument(None, help="Run id (default: the latest)."),
    store: Path = StoreOption,
) -> None:
    """A run's setting, its points (min/mean over trials) and its latest fit."""
    with Store(store, read_only=True) as db:
        run_id = run if run is not None else db.latest_run_id()
        record = db.get_run(run_id)
        points = db.points(run_id)
        fits = db.latest_fits(run_id)
        fitted_now = False
        if not fits and not points.empty:
            try:
                fits, fitted_now = fit_run(db, run_id), True
            except UserError as error:
                console.print(f"cannot fit it yet: {error}", markup=False)
    console.print(
        f"run {record.id}: {record.model} on {record.backend} / {record.device}, "
        f"{record.status}, created {record.created_at}, commit {record.commit_sha or '-'}",
        highlight=False,
    )
    if points.empty:
        console.print("no points stored yet")
        return
    summary = (
        points[points.status == "ok"]
        .groupby(["prompt_tokens", "output_tokens", "batch_size"])
        .agg(
            trials=("trial", "count"),
            min_s=("runtime_s", "min"),
            mean_s=("runtime_s", "mean"),
            ttft_s=("ttft_s", "min"),
        )
        .reset_index()
    )
    console.print(frame_table(summary, "points"))
    bad = points[points.status != "ok"]
    if not bad.empty:
        console.print(
            frame_table(
                bad[["prompt_tokens", "output_tokens", "trial", "status", "detail"]],
                "points not used in fits",
            )
        )
    for model in fits:
        print_fit(model)
    if fitted_now:
        console.print("fitted now with the default settings; not stored (run `infermeter fit`)")


@app.command()
@user_errors
def export(
    run: int | None = typer.Argument(None, help="Run id (default: the latest)."),
    output: Path | None = typer.Option(None, help="Points as .csv, .jsonl or .parquet."),
    helm: Path | None = typer.Option(None, help="The run's runtime fit as HELM efficiency_data."),
    store: Path = StoreOption,
) -> None:
    """Export a run's points (CSV/Parquet/JSONL) or its fit (HELM efficiency_data)."""
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
            console.print(
                f"run {run_id} fit written to {helm} (HELM efficiency_data; fitted with "
                f"{model.describe_fit()})",
                markup=False,
                highlight=False,
            )


# ---- black-box APIs: serve a local model, sweep load, look at the noise ---------------------


@app.command("serve")
@user_errors
def serve_command(
    model: str = typer.Argument(..., help="Catalog name or config.json (random weights)."),
    backend: str = typer.Option("hf", help="hf or engine."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16."),
    checkpoint: Path | None = typer.Option(None, help="Local checkpoint folder (real weights)."),
    tokenizer: str = typer.Option(
        "bytes", help="tokenizer.json, SentencePiece .model or 'bytes': counts and detokenizes."
    ),
    name: str | None = typer.Option(None, help="Model name the API serves (default: MODEL)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="Require this bearer key.", show_default=False
    ),
) -> None:
    """Serve MODEL through an OpenAI-compatible API (completions, chat, streaming, usage)."""
    from infermeter.backends import get_backend
    from infermeter.backends.serve import bind, create_app, serve
    from infermeter.workloads.textgen import generator_for
    from infermeter.workloads.tokenizer import load_tokenizer

    if backend not in ("hf", "engine"):
        raise UserError(f"serve runs the hf or engine backend, not {backend!r}")
    spec = resolve_spec(model)
    tok = load_tokenizer(tokenizer)
    options: dict[str, Any] = {"device": device, "dtype": dtype}
    if checkpoint is not None:
        options["checkpoint"] = str(checkpoint)
    sock = bind(host, port)  # a busy port is said now, before the model loads
    try:
        runner = get_backend(backend, **options)
        runner.prepare(spec)
    except BaseException:
        sock.close()
        raise
    try:
        app_ = create_app(generator_for(runner), tok, name or spec.name, api_key=api_key)
        if tok.vocab_size > spec.vocab_size:
            err_console.print(
                f"[yellow]note:[/] tokenizer {tok.name} has {tok.vocab_size} ids, the model "
                f"{spec.vocab_size}: prompt ids wrap around"
            )
        console.print(
            f"serving {name or spec.name} ({backend}, tokenizer {tok.name}) at "
            f"http://{host}:{port}/v1",
            highlight=False,
        )
        serve(app_, host, port, log_level="warning", sock=sock)
    finally:
        sock.close()
        runner.close()


@app.command("load")
@user_errors
def load_command(
    model: str = typer.Argument(..., help="The served model: catalog name or any name."),
    prompt_tokens: int = typer.Option(512, help="Fixed prompt size p."),
    output_sizes: str = typer.Option("1,32", help="Output lengths, e.g. 1,32,128."),
    concurrency: str = typer.Option("1,2,4,8,16", help="Queries in flight, e.g. 1,2,4,8."),
    trials: int = typer.Option(3, help="Trials per (output length, concurrency) burst."),
    mode: str = typer.Option(
        "burst",
        help="burst: c queries sent at once, `trials` times (the paper's Fig. 6); concurrent: "
        "c kept in flight for --duration-s; rate: --rate requests/s for --duration-s.",
    ),
    rate: str | None = typer.Option(None, help="Requests per second for --mode rate, e.g. 1,2,5."),
    arrival: str = typer.Option("poisson", help="Arrivals of --mode rate: constant or poisson."),
    duration: float = typer.Option(30.0, "--duration-s", help="Seconds per level (timed modes)."),
    warmup: float = typer.Option(
        5.0, "--warmup-s", help="Seconds of load before each timed level (stored, not summarised)."
    ),
    base_url: str | None = BaseUrlOption,
    api_model: str | None = ApiModelOption,
    api_key: str | None = ApiKeyOption,
    endpoint: str = EndpointOption,
    stream: bool = StreamOption,
    tokenizer: str | None = TokenizerOption,
    identical_prompts: bool = IdenticalPromptsOption,
    timeout: float = RequestTimeoutOption,
    retries: int = RetriesOption,
    stall_timeout: float = StallTimeoutOption,
    output: Path | None = typer.Option(None, help="Write the summary (.csv/.jsonl/.parquet)."),
    store: Path = StoreOption,
) -> None:
    """Load on an API at a fixed prompt size: bursts of c queries (the paper's Fig. 6), c kept
    in flight, or a request rate; p50/p90/p99 of latency, TTFT and inter-token latency."""
    from infermeter.backends.api.outcome import run_outcome
    from infermeter.experiments.load import (
        LoadGrid,
        TimedLoad,
        load_summary,
        run_load_sweep,
        run_timed_load,
        timed_summary,
    )

    spec = _api_spec(model)
    sizes = parse_sizes(output_sizes, "--output-sizes") or (1,)
    if mode == "burst":
        grid: Any = LoadGrid(
            prompt_tokens, sizes, parse_sizes(concurrency, "--concurrency") or (1,), trials
        )
    elif mode in ("concurrent", "rate"):
        levels = (
            parse_rates(rate, "--rate")
            if mode == "rate"
            else parse_sizes(concurrency, "--concurrency")
        )
        if not levels:
            raise UserError("--mode rate needs --rate, e.g. --rate 1,2,5 (requests per second)")
        grid = TimedLoad(
            prompt_tokens, sizes[0], mode, tuple(float(v) for v in levels), duration, warmup,
            arrival,  # type: ignore[arg-type]
        )  # fmt: skip
    else:
        raise UserError(f"--mode must be burst, concurrent or rate, got {mode!r}")
    grid.validate(spec)
    options, runner = openai_backend(
        base_url, api_model, api_key, endpoint, stream, tokenizer, identical_prompts, timeout,
        retries, stall_timeout, "--prompt-tokens",
    )  # fmt: skip
    runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    with (
        Store(store) as db,
        progress_bar() as bar,
    ):
        task = bar.add_task(f"load on {spec.name} ({mode})", total=None, last="")

        def on_start(run: Any, done: int, total: int) -> None:
            bar.update(task, total=total, completed=done)
            if done:
                bar.console.print(f"resuming run {run.id}: {done}/{total} steps already stored")

        def on_step(o: int, c: int, t: int, ms: list[Any]) -> None:
            bad = sum(m.status != "ok" for m in ms)
            last = f"o={o} c={c} max {max(m.runtime_s for m in ms):.3f}s"
            bar.update(task, advance=1, last=last + (f" [red]{bad} not ok[/]" if bad else ""))

        def on_level(level: float, ms: list[Any]) -> None:
            bad = sum(m.status != "ok" for m in ms)
            last = f"level {level:g}: {len(ms)} requests"
            bar.update(task, advance=1, last=last + (f" [red]{bad} not ok[/]" if bad else ""))

        device = f"api: {options['base_url']}"
        if mode == "burst":
            run = run_load_sweep(
                db, spec, {"backend": "openai"}, runner, options, grid, on_start, on_step, device
            )
            points = db.points(run.id)
            summary = load_summary(points)
            expected = sum(c for _, c, _ in grid.steps())
        else:
            bar.update(task, total=len(grid.levels))
            run = run_timed_load(
                db, spec, {"backend": "openai"}, runner, options, grid, on_level, device
            )
            points = db.points(run.id)
            summary = timed_summary(points, grid.duration_s)
            expected = len(points)  # a timed level has no fixed count: its failures count
        outcome = run_outcome(points, expected)
        if not outcome.complete:
            db.set_run_status(run.id, "incomplete")
    say(f"run {run.id} stored in {store}", err=False)
    title = (
        f"runtime vs queries in flight (p = {prompt_tokens})"
        if mode == "burst"
        else f"{mode} load (p = {prompt_tokens}, o = {sizes[0]}, {grid.duration_s:g} s a level)"
    )
    console.print(frame_table(summary, title))
    if output:
        write_table(summary, output)
        say(f"summary written to {output}", err=False)
    say(outcome.line(), *(("", "") if outcome.complete else ("incomplete:", "yellow")))
    if not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)


def parse_rates(text: str | None, label: str) -> tuple[float, ...] | None:
    """Comma-separated positive numbers (requests per second), or a UserError."""
    if text is None:
        return None
    try:
        rates = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"{label} must be comma-separated numbers, e.g. 0.5,1,2") from None
    if not rates or min(rates) <= 0:
        raise UserError(f"{label} must be positive numbers, e.g. 0.5,1,2")
    return rates


@app.command("variance")
@user_errors
def variance_command(
    run: int | None = typer.Argument(None, help="Run id (default: the latest)."),
    idealized: Path | None = typer.Option(
        None, help="Fitted model JSON of a reference stack, for idealized vs denoised."
    ),
    output: Path | None = typer.Option(None, help="Per-request raw/denoised/idealized rows."),
    store: Path = StoreOption,
) -> None:
    """Variation across trials (CV) and raw vs denoised vs idealized runtime (Figs. 5 and 7)."""
    from infermeter.model.variance import noise_summary, raw_vs_models, trial_variation

    with Store(store, read_only=True) as db:
        run_id = run if run is not None else db.latest_run_id()
        db.get_run(run_id)  # refuses an unknown run with its message
        points = db.points(run_id)
        console.print(frame_table(trial_variation(points), f"variation over trials, run {run_id}"))
        try:  # the spread above needs no fit; raw vs denoised does
            denoised = fit_run(db, run_id)[0]
        except UserError as error:
            say(f"{error}", "no raw vs denoised:", "yellow")
            return
    reference = load_profile(idealized) if idealized else None
    comparison = raw_vs_models(points, denoised, reference)
    stats = noise_summary(points, comparison)
    line = (
        f"mean CV {stats['mean_cv']:.3f}, max CV {stats['max_cv']:.3f}, worst max/min "
        f"{stats['max_over_min']:.2f}; raw >= denoised for "
        f"{100 * stats.get('share_raw_above_denoised', float('nan')):.1f}% of "
        f"{stats['requests']} requests"
    )
    if "share_idealized_above_denoised" in stats:
        line += f"; idealized > denoised for {100 * stats['share_idealized_above_denoised']:.1f}%"
    console.print(line, highlight=False)
    if output:
        write_table(comparison, output)
        console.print(f"{len(comparison)} rows written to {output}")


from infermeter.cli.energy import register as _register_energy  # noqa: E402

_register_energy(app)

from infermeter.cli.report import register as _register_report  # noqa: E402

_register_report(app)

from infermeter.cli.sweep import register as _register_sweep  # noqa: E402

_register_sweep(app)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
