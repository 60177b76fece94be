"""`infermeter tradeoffs`, `compare` and `report`: each one call into the library
(infermeter.model.tradeoffs, infermeter.model.compare, infermeter.report) plus printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from infermeter.cli.console import console, err_console, print_notes, show, user_errors
from infermeter.errors import UserError
from infermeter.store.outputs import check_output, check_output_folder

StoresOption = typer.Option(
    None,
    "--store",
    help="SQLite store(s) to read (repeatable; default: $INFERMETER_STORE or infermeter.sqlite).",
)
CapabilitiesOption = typer.Option(
    None,
    "--capabilities",
    help="CSV/JSON of model, scenario and a score (accuracy), or HELM-style per-scenario JSON.",
)
MetricOption = typer.Option(None, "--metric", help="Score column to use (default: accuracy).")
QueriesOption = typer.Option(
    None,
    "--queries",
    help="SCENARIO=FILE of per-instance prompt_tokens, output_tokens (or their mean sizes); "
    "or FILE with a scenario column. Repeatable.",
)
ObjectiveOption = typer.Option(
    None,
    "--objective",
    help="NAME=EXPR ranking objective over the table's columns, e.g. "
    "'acc/cost=accuracy / idealized_cost_usd' (repeatable; higher is better).",
)
FormatOption = typer.Option("png", "--format", help="Figure format: png or svg.")


def _check_outputs(*paths: Path | None) -> None:
    """Each output path given can be written: said before any work, in one line."""
    for path in paths:
        if path is not None:
            check_output(path)


def _format(fmt: str) -> Any:
    if fmt not in ("png", "svg"):
        raise UserError(f"--format must be png or svg, not {fmt!r}")
    return fmt


def tradeoffs_command(
    capabilities: Path = typer.Option(..., "--capabilities", help=CapabilitiesOption.help),
    queries: list[str] = typer.Option(..., "--queries", help=QueriesOption.help),
    metric: str | None = MetricOption,
    objective: list[str] | None = ObjectiveOption,
    profile: list[Path] | None = typer.Option(
        None, "--profile", help="Fitted model JSON or HELM efficiency_data (repeatable)."
    ),
    output: Path | None = typer.Option(None, help="Write the table (.csv/.json/.jsonl/.parquet)."),
    ranks_output: Path | None = typer.Option(None, help="Write the ranks (.csv/.json/...)."),
    figures: Path | None = typer.Option(None, help="Write Fig. 9 and Fig. 10 into this folder."),
    fmt: str = FormatOption,
    store: list[Path] | None = StoresOption,
) -> None:
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

    image = _format(fmt)
    _check_outputs(output, ranks_output)
    if figures:
        check_output_folder(figures, "--figures folder")
    caps = read_capabilities(capabilities, metric)
    scenario_queries = read_scenario_queries(queries)
    profiles = profiles_from_files(list(profile or []))
    paths = stores_or_default(store, required=not profiles)
    if paths:
        profiles += model_profiles(load_runs(paths, with_samples=False))
    if not profiles:
        raise UserError("no profiles: profile models into --store, or pass --profile FILE")
    objectives = {**DEFAULT_OBJECTIVES, **parse_objectives(objective or [])}
    result = tradeoff_table(profiles, caps, scenario_queries)
    ranks = rank_models(result.table, objectives)  # before printing: a bad objective fails first
    table = result.table
    show(tradeoff_view(table, list(METRICS)), "capability vs efficiency (means per query)", 4)
    pivot = ranks.pivot_table(index=["objective", "model"], columns="scenario", values="rank")
    show(pivot.reset_index(), "ranks (1 = best)", digits=3)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if output:
        write_table(table, output)
        console.print(f"{len(table)} rows written to {output}")
    if ranks_output:
        write_table(ranks, ranks_output)
        console.print(f"{len(ranks)} ranks written to {ranks_output}")
    for path in write_tradeoff_figures(table, ranks, figures, image) if figures else []:
        console.print(f"figure written to {path}", markup=False)


def compare_command(
    runs: list[int] | None = typer.Argument(None, help="Run ids of one model on several stacks."),
    model: str | None = typer.Option(None, help="Compare every stack that profiled MODEL."),
    profile: list[Path] | None = typer.Option(
        None, "--profile", help="Fitted model JSON files instead of runs (repeatable)."
    ),
    queries: Path | None = typer.Option(
        None, help="Benchmark queries (prompt_tokens, output_tokens); default: a grid."
    ),
    baseline: str | None = typer.Option(None, help="Baseline stack: its label or run id."),
    output: Path | None = typer.Option(None, help="Write per-query rows (.csv/.jsonl/...)."),
    figure: Path | None = typer.Option(None, help="Write the Fig. 8 picture (.png or .svg)."),
    allow_different_models: bool = typer.Option(
        False,
        "--allow-different-models",
        help="Compare stacks that ran different models (ratios without a verdict).",
    ),
    store: list[Path] | None = StoresOption,
) -> None:
    """One model on two or more stacks: speedup, cost and energy ratios (Fig. 8, §5.3)."""
    from infermeter.model.compare import compare_stacks, default_queries
    from infermeter.model.estimate import read_queries, write_table
    from infermeter.model.sources import baseline_index, stacks_for
    from infermeter.tables import comparison_view

    _check_outputs(output, figure)
    stacks = stacks_for(runs, model, profile, store)
    frame = read_queries(queries) if queries else default_queries([s.runtime for s in stacks])
    base = baseline_index(stacks, baseline)
    result = compare_stacks(stacks, frame, base, allow_different_models)
    if (result.summary["verdict"] == "different model").any():
        print_notes(["the stacks run different models: each ratio is the models' difference as "
                     "much as the stacks'"])  # fmt: skip
    show(comparison_view(result.summary), f"{len(frame)} queries, relative to {result.baseline}", 4)
    if output:
        write_table(result.per_query, output)
        console.print(f"{len(result.per_query)} rows written to {output}")
    if figure:
        from infermeter.report.written import write_comparison_figure

        write_comparison_figure(result, figure)
        console.print(f"figure written to {figure}", markup=False)


def report_command(
    output: Path = typer.Option(Path("report.html"), help="Where to write the HTML page."),
    capabilities: Path | None = CapabilitiesOption,
    metric: str | None = MetricOption,
    queries: list[str] | None = QueriesOption,
    objective: list[str] | None = ObjectiveOption,
    title: str = typer.Option("infermeter report", help="Page title."),
    fmt: str = FormatOption,
    store: list[Path] | None = StoresOption,
) -> None:
    """One self-contained HTML page with every figure the store(s) hold data for."""
    from infermeter.model.sources import stores_or_default
    from infermeter.model.tradeoffs import parse_objectives
    from infermeter.report import ReportInputs, build_report
    from infermeter.report.written import missing_sections

    if bool(capabilities) != bool(queries):
        raise UserError("Figs. 9 and 10 need both --capabilities FILE and --queries SCENARIO=FILE")
    if str(output.parent) and not output.parent.exists():
        check_output_folder(output.parent, "report folder")  # made, as report.write does
    check_output(output, "report")
    inputs = ReportInputs(
        stores=stores_or_default(store),
        capabilities=capabilities,
        metric=metric,
        queries=list(queries or []),
        objectives=parse_objectives(objective or []),
        title=title,
        image_format=_format(fmt),
    )
    report = build_report(inputs)
    report.write(output)
    drawn = [s for s in report.sections if s.plot is not None]
    console.print(f"report written to {output}: {len(drawn)} figure(s)", highlight=False)
    missing = missing_sections(report.sections)
    if not missing.empty:
        show(missing, "sections without data")


def register(app: typer.Typer) -> None:
    """Add `tradeoffs`, `compare` and `report` to `app`."""

    app.command("tradeoffs")(user_errors(tradeoffs_command))
    app.command("compare")(user_errors(compare_command))
    app.command("report")(user_errors(report_command))
