"""`infermeter serve`, `load` and `variance`: black-box APIs — a local model served, load swept
on a server (infermeter.experiments.load), the noise of a run (infermeter.model.variance)."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import console as cli_console
from infermeter.cli import options as o
from infermeter.cli.console import console, out, print_notes, progress, say, show, user_errors
from infermeter.units import plural


def register(app: typer.Typer) -> None:
    """Add `serve`, `load` and `variance` to `app`."""
    for name, command in (("serve", serve), ("load", load), ("variance", variance)):
        app.command(name)(user_errors(command))


@o.request(rq.ServeRequest)
def serve(r: rq.ServeRequest) -> None:
    """Serve MODEL through an OpenAI-compatible API (completions, chat, streaming, usage)."""
    from infermeter.backends.serve import serve_model

    def ready(notes: list[str], line: str) -> None:
        print_notes(notes)
        console.print(line, highlight=False)

    serve_model(r, ready)


@o.request(rq.LoadRequest)
def load(r: rq.LoadRequest) -> None:
    """Load on an API at a fixed prompt size: bursts of c queries (the paper's Fig. 6), c kept
    in flight, or a request rate; p50/p90/p99 of latency, TTFT and inter-token latency."""
    from infermeter.backends.api.outcome import INCOMPLETE_EXIT
    from infermeter.backends.openai import api_spec
    from infermeter.backends.options import openai_backend
    from infermeter.experiments.plans import load_plan, load_title, run_load
    from infermeter.model.estimate import write_table
    from infermeter.store.db import Store

    spec = api_spec(r.model)
    grid = load_plan(r, spec)
    if r.mode != "burst" and "," in r.output_sizes:
        say(
            f"--mode {r.mode} measures one output length, o = {grid.output_tokens}: the "
            f"largest of --output-sizes {r.output_sizes}",
            "note:",
        )
    options, runner, warning = openai_backend(r.api)
    if warning:
        say(warning, "warning:", "yellow")
    runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    for note in runner.describe().get("notes") or []:  # e.g. the served model it names
        say(str(note), "note:", "yellow")
    with (
        Store(r.store) as db,
        progress(
            f"{'bursts' if r.mode == 'burst' else 'levels'} of load on {spec.name} ({r.mode})"
        ) as bar,
    ):
        result = run_load(db, spec, runner, options, grid, bar.load_start, bar.on_step)
    say(f"run {result.run.id} stored in {r.store}", err=False)
    title = load_title(grid)
    shown = result.summary
    if not r.output:  # the whole table fits no terminal: the p50s and p99s here, all in a file
        shown = shown[[c for c in shown.columns if not c.endswith("_p90_s")]]
    show(shown, title)
    if r.output:
        write_table(result.summary, r.output)
        say(f"summary written to {r.output}", err=False)
    else:
        say("p90s and every column: --output FILE (.csv, .jsonl, .json, .parquet)", err=False)
    outcome = result.outcome
    say(outcome.line(), *cli_console.outcome_label(outcome))
    if not outcome.complete:
        raise typer.Exit(code=INCOMPLETE_EXIT)


@o.request(rq.VarianceRequest)
def variance(r: rq.VarianceRequest) -> None:
    """Variation across trials (CV) and raw vs denoised vs idealized runtime (Figs. 5 and 7)."""
    from infermeter.model.estimate import check_table_output, write_table
    from infermeter.model.variance import run_noise
    from infermeter.store.db import Store

    check_table_output(r.output)
    with Store(r.store, read_only=True) as db:
        noise = run_noise(db, r.run, r.idealized)
    show(noise.variation, f"variation over trials, run {noise.run_id}")
    if noise.why is not None:
        say(noise.why, "no raw vs denoised:", "yellow")
        return
    for note in noise.denoised.fit.get("notes", []) if noise.denoised else []:
        say(str(note), "note:", "yellow")  # e.g. a poor fit, kept: the noise is the subject
    comparison, line = noise.compared()
    console.print(line, highlight=False)
    if r.output:
        write_table(comparison, r.output)
        out(f"{plural(len(comparison), 'row')} written to {r.output}")
