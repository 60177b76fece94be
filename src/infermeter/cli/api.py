"""`infermeter serve`, `load` and `variance`: black-box APIs — a local model served, load swept
on a server (infermeter.experiments.load), the noise of a run (infermeter.model.variance)."""

from __future__ import annotations

from typing import Any

import typer

from infermeter import requests as rq
from infermeter.cli import console as cli_console
from infermeter.cli import options as o
from infermeter.cli.console import console, out, print_notes, progress, say, show, user_errors


def register(app: typer.Typer) -> None:
    """Add `serve`, `load` and `variance` to `app`."""
    for name, command in (("serve", serve), ("load", load), ("variance", variance)):
        app.command(name)(user_errors(command))


@o.request(rq.ServeRequest)
def serve(r: rq.ServeRequest) -> None:
    """Serve MODEL through an OpenAI-compatible API (completions, chat, streaming, usage)."""
    from infermeter.backends.config import build_backend, config_for
    from infermeter.backends.serve import bind, create_app, serve
    from infermeter.errors import UserError
    from infermeter.spec.catalog import resolve_spec
    from infermeter.workloads.textgen import generator_for
    from infermeter.workloads.tokenizer import load_tokenizer

    if r.backend not in ("hf", "engine"):
        raise UserError(f"serve runs the hf or engine backend, not {r.backend!r}")
    spec = resolve_spec(r.model)
    tok = load_tokenizer(r.tokenizer)
    options: dict[str, Any] = {"device": r.device, "dtype": r.dtype}
    if r.checkpoint is not None:
        options["checkpoint"] = str(r.checkpoint)
    config = config_for(r.backend, **options)
    sock = bind(r.host, r.port)  # a busy port is said now, before the model loads
    try:
        runner = build_backend(config)
        runner.prepare(spec)
    except BaseException:
        sock.close()
        raise
    try:
        app_ = create_app(generator_for(runner), tok, r.name or spec.name, api_key=r.api_key)
        if tok.vocab_size > spec.vocab_size:
            print_notes([f"tokenizer {tok.name} has {tok.vocab_size} ids, the model "
                         f"{spec.vocab_size}: prompt ids wrap around"])  # fmt: skip
        console.print(
            f"serving {r.name or spec.name} ({r.backend}, tokenizer {tok.name}) at "
            f"http://{r.host}:{r.port}/v1",
            highlight=False,
        )
        serve(app_, r.host, r.port, log_level="warning", sock=sock)
    finally:
        sock.close()
        runner.close()


@o.request(rq.LoadRequest)
def load(r: rq.LoadRequest) -> None:
    """Load on an API at a fixed prompt size: bursts of c queries (the paper's Fig. 6), c kept
    in flight, or a request rate; p50/p90/p99 of latency, TTFT and inter-token latency."""
    from infermeter.backends.api.outcome import INCOMPLETE_EXIT
    from infermeter.backends.openai import api_spec
    from infermeter.backends.options import openai_backend
    from infermeter.model.estimate import write_table
    from infermeter.plans import load_grid, run_load
    from infermeter.store.db import Store

    spec = api_spec(r.model)
    sizes = o.parse_sizes(r.output_sizes, "--output-sizes") or (1,)
    levels = None if r.mode == "rate" else o.parse_sizes(r.concurrency, "--concurrency")
    rates = o.parse_rates(r.rate, "--rate") if r.mode == "rate" else None
    grid = load_grid(spec, r.mode, r.prompt_tokens, sizes, levels, rates, r.trials, r.duration_s,
                     r.warmup_s, r.arrival)  # fmt: skip
    options, runner, warning = openai_backend(r.api)
    if warning:
        say(warning, "warning:", "yellow")
    runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    with Store(r.store) as db, progress(f"load on {spec.name} ({r.mode})") as bar:
        result = run_load(db, spec, runner, options, grid, bar.load_start, bar.on_step)
    say(f"run {result.run.id} stored in {r.store}", err=False)
    title = (
        f"runtime vs queries in flight (p = {r.prompt_tokens})"
        if r.mode == "burst"
        else f"{r.mode} load (p = {r.prompt_tokens}, o = {sizes[0]}, {grid.duration_s:g} s a level)"
    )
    show(result.summary, title)
    if r.output:
        write_table(result.summary, r.output)
        say(f"summary written to {r.output}", err=False)
    outcome = result.outcome
    say(outcome.line(), *cli_console.outcome_label(outcome))
    if not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)


@o.request(rq.VarianceRequest)
def variance(r: rq.VarianceRequest) -> None:
    """Variation across trials (CV) and raw vs denoised vs idealized runtime (Figs. 5 and 7)."""
    from infermeter.errors import UserError
    from infermeter.model.estimate import write_table
    from infermeter.model.fitted import fit_run
    from infermeter.model.helm import load_profile
    from infermeter.model.runfit import noise_line
    from infermeter.model.variance import noise_summary, raw_vs_models, trial_variation
    from infermeter.store.db import Store

    with Store(r.store, read_only=True) as db:
        run_id = r.run if r.run is not None else db.latest_run_id()
        db.get_run(run_id)  # refuses an unknown run with its message
        points = db.points(run_id)
        show(trial_variation(points), f"variation over trials, run {run_id}")
        try:  # the spread above needs no fit; raw vs denoised does
            denoised = fit_run(db, run_id)[0]
        except UserError as error:
            say(f"{error}", "no raw vs denoised:", "yellow")
            return
    reference = load_profile(r.idealized) if r.idealized else None
    comparison = raw_vs_models(points, denoised, reference)
    console.print(noise_line(noise_summary(points, comparison)), highlight=False)
    if r.output:
        write_table(comparison, r.output)
        out(f"{len(comparison)} rows written to {r.output}")
