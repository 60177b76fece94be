"""`infermeter tradeoffs`, `compare` and `report`: each one call into the library
(infermeter.model.tradeoffs, infermeter.model.compare, infermeter.report) plus printing."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import console, err_console, print_notes, show, user_errors
from infermeter.units import plural


@o.request(rq.TradeoffsRequest)
def tradeoffs_command(r: rq.TradeoffsRequest) -> None:
    """Capability vs efficiency per model and scenario: Pareto frontiers and ranks (Figs. 9, 10)."""
    from infermeter.model.estimate import write_table
    from infermeter.model.sources import tradeoffs_for
    from infermeter.model.tradeoffs import METRICS
    from infermeter.report.tables import tradeoff_view
    from infermeter.report.written import write_tradeoff_figures

    result, ranks = tradeoffs_for(r)
    table = result.table
    show(tradeoff_view(table, list(METRICS)), "capability vs efficiency (means per query)", 4)
    pivot = ranks.pivot_table(index=["objective", "model"], columns="scenario", values="rank")
    show(pivot.reset_index(), "ranks (1 = best)", digits=3)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    print_notes(result.warnings, "warning")  # estimate's, on queries priced by extrapolation
    if r.output:
        write_table(table, r.output)
        console.print(f"{plural(len(table), 'row')} written to {r.output}")
    if r.ranks_output:
        write_table(ranks, r.ranks_output)
        console.print(f"{plural(len(ranks), 'rank')} written to {r.ranks_output}")
    figures = write_tradeoff_figures(table, ranks, r.figures, r.fmt) if r.figures else []  # type: ignore[arg-type]
    for path in figures:
        console.print(f"figure written to {path}", markup=False)


@o.request(rq.CompareRequest)
def compare_command(r: rq.CompareRequest) -> None:
    """One model on two or more stacks: speedup, cost and energy ratios (Fig. 8, §5.3)."""
    from infermeter.model.estimate import write_table
    from infermeter.model.sources import compare_request
    from infermeter.report.tables import comparison_view

    result, queries = compare_request(r)
    print_notes(result.notes)  # e.g. a run left out for a newer one of its stack
    print_notes(result.warnings, "warning")  # estimate's, on queries priced by extrapolation
    if (result.summary["verdict"] == "different model").any():
        print_notes(["the stacks run different models: each ratio is the models' difference as "
                     "much as the stacks'"])  # fmt: skip
    show(
        comparison_view(result.summary),
        f"{plural(queries, 'query')}, relative to {result.baseline}",
        4,
    )
    if r.output:
        write_table(result.per_query, r.output)
        console.print(f"{plural(len(result.per_query), 'row')} written to {r.output}")
    if r.figure:
        from infermeter.report.written import write_comparison_figure

        write_comparison_figure(result, r.figure)
        console.print(f"figure written to {r.figure}", markup=False)


@o.request(rq.ReportRequest)
def report_command(r: rq.ReportRequest) -> None:
    """One self-contained HTML page with every figure the store(s) hold data for."""
    from infermeter.report.build import report_for
    from infermeter.report.written import missing_sections

    report = report_for(r)
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
