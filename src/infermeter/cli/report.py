"""`infermeter tradeoffs`, `compare` and `report`: each one call into the library
(infermeter.model.tradeoffs, infermeter.model.compare, infermeter.report) plus printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import console, err_console, print_notes, show, user_errors
from infermeter.errors import UserError
from infermeter.store.outputs import check_output, check_output_folder


def _check_outputs(*paths: Path | None) -> None:
    """Each output path given can be written: said before any work, in one line."""
    for path in paths:
        if path is not None:
            check_output(path)


def _format(fmt: str) -> Any:
    if fmt not in ("png", "svg"):
        raise UserError(f"--format must be png or svg, not {fmt!r}")
    return fmt


@o.request(rq.TradeoffsRequest)
def tradeoffs_command(r: rq.TradeoffsRequest) -> None:
    """Capability vs efficiency per model and scenario: Pareto frontiers and ranks (Figs. 9, 10)."""
    from infermeter.model.estimate import write_table
    from infermeter.model.fitted import load_runs
    from infermeter.model.sources import profiles_from_files, stores_or_default
    from infermeter.model.tradeoffs import (
        DEFAULT_OBJECTIVES,
        METRICS,
        parse_objectives,
        rank_models,
        read_capabilities,
        read_scenario_queries,
        tradeoff_table,
    )
    from infermeter.report.build import model_profiles
    from infermeter.report.written import write_tradeoff_figures
    from infermeter.tables import tradeoff_view

    image = _format(r.fmt)
    _check_outputs(r.output, r.ranks_output)
    if r.figures:
        check_output_folder(r.figures, "--figures folder")
    caps = read_capabilities(r.capabilities, r.metric)
    scenario_queries = read_scenario_queries(r.queries)
    profiles = profiles_from_files(list(r.profile or []))
    paths = stores_or_default(r.store, required=not profiles)
    if paths:
        profiles += model_profiles(load_runs(paths, with_samples=False))
    if not profiles:
        raise UserError("no profiles: profile models into --store, or pass --profile FILE")
    objectives = {**DEFAULT_OBJECTIVES, **parse_objectives(r.objective or [])}
    result = tradeoff_table(profiles, caps, scenario_queries)
    ranks = rank_models(result.table, objectives)  # before printing: a bad objective fails first
    table = result.table
    show(tradeoff_view(table, list(METRICS)), "capability vs efficiency (means per query)", 4)
    pivot = ranks.pivot_table(index=["objective", "model"], columns="scenario", values="rank")
    show(pivot.reset_index(), "ranks (1 = best)", digits=3)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if r.output:
        write_table(table, r.output)
        console.print(f"{len(table)} rows written to {r.output}")
    if r.ranks_output:
        write_table(ranks, r.ranks_output)
        console.print(f"{len(ranks)} ranks written to {r.ranks_output}")
    for path in write_tradeoff_figures(table, ranks, r.figures, image) if r.figures else []:
        console.print(f"figure written to {path}", markup=False)


@o.request(rq.CompareRequest)
def compare_command(r: rq.CompareRequest) -> None:
    """One model on two or more stacks: speedup, cost and energy ratios (Fig. 8, §5.3)."""
    from infermeter.model.compare import compare_stacks, default_queries
    from infermeter.model.estimate import read_queries, write_table
    from infermeter.model.sources import baseline_index, stacks_for
    from infermeter.tables import comparison_view

    _check_outputs(r.output, r.figure)
    stacks = stacks_for(r.runs, r.model, r.profile, r.store)
    frame = read_queries(r.queries) if r.queries else default_queries([s.runtime for s in stacks])
    base = baseline_index(stacks, r.baseline)
    result = compare_stacks(stacks, frame, base, r.allow_different_models)
    if (result.summary["verdict"] == "different model").any():
        print_notes(["the stacks run different models: each ratio is the models' difference as "
                     "much as the stacks'"])  # fmt: skip
    show(comparison_view(result.summary), f"{len(frame)} queries, relative to {result.baseline}", 4)
    if r.output:
        write_table(result.per_query, r.output)
        console.print(f"{len(result.per_query)} rows written to {r.output}")
    if r.figure:
        from infermeter.report.written import write_comparison_figure

        write_comparison_figure(result, r.figure)
        console.print(f"figure written to {r.figure}", markup=False)


@o.request(rq.ReportRequest)
def report_command(r: rq.ReportRequest) -> None:
    """One self-contained HTML page with every figure the store(s) hold data for."""
    from infermeter.model.sources import stores_or_default
    from infermeter.model.tradeoffs import parse_objectives
    from infermeter.report import ReportInputs, build_report
    from infermeter.report.written import missing_sections

    if bool(r.capabilities) != bool(r.queries):
        raise UserError("Figs. 9 and 10 need both --capabilities FILE and --queries SCENARIO=FILE")
    if str(r.output.parent) and not r.output.parent.exists():
        check_output_folder(r.output.parent, "report folder")  # made, as report.write does
    check_output(r.output, "report")
    inputs = ReportInputs(
        stores=stores_or_default(r.store),
        capabilities=r.capabilities,
        metric=r.metric,
        queries=list(r.queries or []),
        objectives=parse_objectives(r.objective or []),
        title=r.title,
        image_format=_format(r.fmt),
    )
    report = build_report(inputs)
    report.write(r.output)
    drawn = [s for s in report.sections if s.plot is not None]
    console.print(f"report written to {r.output}: {len(drawn)} figure(s)", highlight=False)
    missing = missing_sections(report.sections)
    if not missing.empty:
        show(missing, "sections without data")


def register(app: typer.Typer) -> None:
    """Add `tradeoffs`, `compare` and `report` to `app`."""

    app.command("tradeoffs")(user_errors(tradeoffs_command))
    app.command("compare")(user_errors(compare_command))
    app.command("report")(user_errors(report_command))
