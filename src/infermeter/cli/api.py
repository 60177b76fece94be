"""`infermeter serve`, `load` and `variance`: black-box APIs — a local model served, load swept
on a server (infermeter.experiments.load), the noise of a run (infermeter.model.variance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from infermeter.backends.config import OpenAIConfig
from infermeter.cli import console as cli_console
from infermeter.cli import options as o
from infermeter.cli.console import console, out, print_notes, progress, say, show, user_errors


def register(app: typer.Typer) -> None:
    """Add `serve`, `load` and `variance` to `app`."""
    for name, command in (("serve", serve), ("load", load), ("variance", variance)):
        app.command(name)(user_errors(command))


def serve(
    model: str = typer.Argument(..., help="Catalog name or config.json (random weights)."),
    backend: str = typer.Option("hf", help="hf or engine."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    dtype: str | None = o.DtypeOption,
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
    from infermeter.backends.config import build_backend, config_for
    from infermeter.backends.serve import bind, create_app, serve
    from infermeter.errors import UserError
    from infermeter.spec.catalog import resolve_spec
    from infermeter.workloads.textgen import generator_for
    from infermeter.workloads.tokenizer import load_tokenizer

    if backend not in ("hf", "engine"):
        raise UserError(f"serve runs the hf or engine backend, not {backend!r}")
    spec = resolve_spec(model)
    tok = load_tokenizer(tokenizer)
    options: dict[str, Any] = {"device": device, "dtype": dtype}
    if checkpoint is not None:
        options["checkpoint"] = str(checkpoint)
    config = config_for(backend, **options)
    sock = bind(host, port)  # a busy port is said now, before the model loads
    try:
        runner = build_backend(config)
        runner.prepare(spec)
    except BaseException:
        sock.close()
        raise
    try:
        app_ = create_app(generator_for(runner), tok, name or spec.name, api_key=api_key)
        if tok.vocab_size > spec.vocab_size:
            print_notes([f"tokenizer {tok.name} has {tok.vocab_size} ids, the model "
                         f"{spec.vocab_size}: prompt ids wrap around"])  # fmt: skip
        console.print(
            f"serving {name or spec.name} ({backend}, tokenizer {tok.name}) at "
            f"http://{host}:{port}/v1",
            highlight=False,
        )
        serve(app_, host, port, log_level="warning", sock=sock)
    finally:
        sock.close()
        runner.close()


@o.api_options("--prompt-tokens")
def load(
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
    api: OpenAIConfig = o.API,
    output: Path | None = typer.Option(None, help="Write the summary (.csv/.jsonl/.parquet)."),
    store: Path = o.StoreOption,
) -> None:
    """Load on an API at a fixed prompt size: bursts of c queries (the paper's Fig. 6), c kept
    in flight, or a request rate; p50/p90/p99 of latency, TTFT and inter-token latency."""
    from infermeter.backends.api.outcome import INCOMPLETE_EXIT
    from infermeter.backends.openai import api_spec
    from infermeter.backends.options import openai_backend
    from infermeter.model.estimate import write_table
    from infermeter.plans import load_grid, run_load
    from infermeter.store.db import Store

    spec = api_spec(model)
    sizes = o.parse_sizes(output_sizes, "--output-sizes") or (1,)
    levels = None if mode == "rate" else o.parse_sizes(concurrency, "--concurrency")
    rates = o.parse_rates(rate, "--rate") if mode == "rate" else None
    grid = load_grid(spec, mode, prompt_tokens, sizes, levels, rates, trials, duration, warmup,
                     arrival)  # fmt: skip
    options, runner, warning = openai_backend(api)
    if warning:
        say(warning, "warning:", "yellow")
    runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    with Store(store) as db, progress(f"load on {spec.name} ({mode})") as bar:
        result = run_load(db, spec, runner, options, grid, bar.load_start, bar.on_step)
    say(f"run {result.run.id} stored in {store}", err=False)
    title = (
        f"runtime vs queries in flight (p = {prompt_tokens})"
        if mode == "burst"
        else f"{mode} load (p = {prompt_tokens}, o = {sizes[0]}, {grid.duration_s:g} s a level)"
    )
    show(result.summary, title)
    if output:
        write_table(result.summary, output)
        say(f"summary written to {output}", err=False)
    outcome = result.outcome
    say(outcome.line(), *cli_console.outcome_label(outcome))
    if not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)


def variance(
    run: int | None = o.RunArgument,
    idealized: Path | None = typer.Option(
        None, help="Fitted model JSON of a reference stack, for idealized vs denoised."
    ),
    output: Path | None = typer.Option(None, help="Per-request raw/denoised/idealized rows."),
    store: Path = o.StoreOption,
) -> None:
    """Variation across trials (CV) and raw vs denoised vs idealized runtime (Figs. 5 and 7)."""
    from infermeter.errors import UserError
    from infermeter.model.estimate import write_table
    from infermeter.model.fitted import fit_run
    from infermeter.model.helm import load_profile
    from infermeter.model.runfit import noise_line
    from infermeter.model.variance import noise_summary, raw_vs_models, trial_variation
    from infermeter.store.db import Store

    with Store(store, read_only=True) as db:
        run_id = run if run is not None else db.latest_run_id()
        db.get_run(run_id)  # refuses an unknown run with its message
        points = db.points(run_id)
        show(trial_variation(points), f"variation over trials, run {run_id}")
        try:  # the spread above needs no fit; raw vs denoised does
            denoised = fit_run(db, run_id)[0]
        except UserError as error:
            say(f"{error}", "no raw vs denoised:", "yellow")
            return
    reference = load_profile(idealized) if idealized else None
    comparison = raw_vs_models(points, denoised, reference)
    console.print(noise_line(noise_summary(points, comparison)), highlight=False)
    if output:
        write_table(comparison, output)
        out(f"{len(comparison)} rows written to {output}")
