"""The report: every figure of both papers that the stores hold data for, in one HTML page.

`build_report` reads the stores once, decides section by section whether there is data, draws
the figure or names the command that would produce its data, and renders the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from infermeter.errors import UserError
from infermeter.model.compare import compare_stacks, default_queries
from infermeter.model.fitted import (
    StoredRun,
    api_runs,
    describe_runs,
    load_runs,
    model_key,
    reference_for,
    reference_runs,
    run_summary,
)
from infermeter.model.sources import (
    model_profiles,
    newer_runs_stand,
    stack_profiles,
    stores_or_default,
    tradeoff_notes,
)
from infermeter.model.tradeoffs import (
    DEFAULT_OBJECTIVES,
    rank_models,
    read_capabilities,
    read_scenario_queries,
    tradeoff_table,
)
from infermeter.report import energy as en
from infermeter.report import load_figs as lf
from infermeter.report import runtime_figs as rt
from infermeter.report import tradeoff_figs as tf
from infermeter.report.html import Section, missing_html, render
from infermeter.report.plot import ImageFormat, Plot
from infermeter.store.energy import read_energy_configs
from infermeter.store.provenance import git_commit, package_version, utc_date
from infermeter.units import plural

if TYPE_CHECKING:
    from infermeter.requests import ReportRequest

PROFILE_CMD = "infermeter profile MODEL --backend engine --store STORE"
API_CMD = "infermeter profile MODEL --backend openai --base-url http://HOST:PORT/v1 --store STORE"
SECOND_STACK_CMD = "infermeter profile MODEL --backend hf --store STORE (or another GPU)"
CAPABILITY_CMD = "infermeter report --capabilities accuracies.csv --queries SCENARIO=queries.jsonl"
GPU_PROFILE_CMD = "infermeter profile MODEL --store STORE (on a GPU with NVML)"

RUNTIME, TRADEOFFS, ENERGY = (
    "Runtime (idealized-runtime paper)",
    "Trade-offs and comparisons",
    "Energy (Words to Watts)",
)


@dataclass
class ReportInputs:
    """What a report is built from: the stores, and for Figs. 9-10 a capability table (with its
    score column), scenario queries and objectives; the page's title, image format and
    extra provenance lines."""

    stores: Sequence[Path]
    capabilities: Path | None = None
    metric: str | None = None
    queries: Sequence[str] = ()
    objectives: dict[str, str] = field(default_factory=dict)
    title: str = "infermeter report"
    image_format: ImageFormat = "png"
    extra_provenance: Sequence[str] = ()


@dataclass
class Report:
    """A built report: its sections (figures, captions and the numbers behind them) and the
    page's HTML."""

    sections: list[Section]
    html: str

    def write(self, path: str | Path) -> Path:
        """Write the HTML to `path` in one step and return it. Raises UserError where the
        folder or file cannot be written."""
        from infermeter.store.outputs import check_output_folder, writing

        path = Path(path)
        check_output_folder(path.parent if str(path.parent) else ".", "report folder")
        with writing(path, "report") as target:
            target.write_text(self.html, encoding="utf-8")
        return target


def _safe(section: Section, draw: Callable[[], Plot]) -> Section:
    """Draw a figure; data too thin to draw becomes a note rather than a broken report."""
    try:
        section.plot = draw()
    except (ValueError, KeyError, IndexError, ZeroDivisionError) as exc:
        section.missing = f"Could not draw this figure from the stored data ({exc})."
    return section


def _all_missing(sections: list[Section], why: str, command: str) -> list[Section]:
    """`sections`, each marked missing for the same reason, with the command that fills it."""
    for section in sections:
        section.missing = missing_html(why, command)
    return sections


def runtime_sections(runs: list[StoredRun]) -> list[Section]:
    """Figs. 3-4 of paper 1 (runtime vs output tokens, prompt-encoding time vs prompt size)
    from up to six reference runs, or the command that makes them."""
    refs = [r for r in reference_runs(runs) if r.fit() is not None]
    fig3 = Section("fig3", RUNTIME, "Fig. 3 · Runtime vs output tokens, per prompt size")
    fig4 = Section("fig4", RUNTIME, "Fig. 4 · Prompt-encoding time vs prompt size")
    if not refs:
        return _all_missing([fig3, fig4], "no profiled runs of a local stack", PROFILE_CMD)
    shown = refs[:6]
    fig3.caption = (
        f"Measured end-to-end runtime (min over trials, dots) and the fitted t(p, o) (lines) of "
        f"{len(shown)} run(s) {describe_runs(shown)}."
    )
    fig3.note = (
        f"{len(refs) - 6} more run(s) not drawn; see `infermeter show RUN`."
        if len(refs) > 6
        else ""
    )
    fig4.caption = (
        f"Fitted PE(p) at the profiled prompt sizes with a dotted least-squares line, "
        f"{min(len(refs), 8)} run(s) {describe_runs(refs[:8])}."
    )
    return [
        _safe(fig3, lambda: rt.fig_runtime_vs_output(shown)),
        _safe(fig4, lambda: rt.fig_prompt_encoding(refs[:8])),
    ]


def trial_sections(runs: list[StoredRun]) -> list[Section]:
    """Fig. 5 of paper 1: each trial's runtime on an API (up to six profiles of API runs;
    load runs are Fig. 6's), or the command that makes one."""
    apis = [r for r in api_runs(runs) if lf.load_kind(r) is None]
    fig5 = Section("fig5", RUNTIME, "Fig. 5 · Runtime of each trial on an API")
    if not apis:
        fig5.missing = missing_html("no API (openai backend) runs", API_CMD)
        return [fig5]
    shown = apis[:6]
    fig5.caption = (
        f"Every usable trial (dots) of {len(shown)} API run(s) {describe_runs(shown)}, at the "
        f"profiled prompt size closest to {rt.FIG5_PROMPT}; CV is the coefficient of "
        "variation of a query's trials, averaged over output lengths (`infermeter variance "
        "RUN` gives it per point)."
    )
    return [_safe(fig5, lambda: rt.fig_trials(shown))]


def load_sections(runs: list[StoredRun]) -> list[Section]:
    """Fig. 6: runtime vs load on an API, from `infermeter load` runs."""
    loads = lf.load_runs(runs)
    fig6 = Section("fig6", RUNTIME, "Fig. 6 · Runtime vs load on an API")
    if not loads:
        fig6.missing = missing_html("no load runs of an API", lf.LOAD_CMD)
        return [fig6]
    fig6.caption = (
        f"{min(len(loads), 4)} load run(s) {describe_runs(loads[:4])}: bursts show the mean "
        "runtime of whole steps (min over trials) and the p90 latency of every request; "
        "timed runs show p50 and p99 latency over all attempts."
    )
    return [_safe(fig6, lambda: lf.fig_load(loads))]


def api_sections(runs: list[StoredRun]) -> list[Section]:
    """Table 3 and Fig. 7 of paper 1 (idealized vs denoised PE(p) and g; raw, denoised and
    idealized runtime) from API runs and the reference runs they stand for."""
    apis = [r for r in api_runs(runs) if lf.load_kind(r) is None and r.fit() is not None]
    table3 = Section("table3", RUNTIME, "Table 3 · Idealized vs denoised PE(p) and g")
    fig7 = Section("fig7", RUNTIME, "Fig. 7 · Raw vs denoised, and idealized vs denoised runtime")
    if not apis:
        return _all_missing([table3, fig7], "no API (openai backend) runs", API_CMD)
    pairs = [(api, reference_for(api.stands_for, runs)) for api in apis]
    with_ref = [ref for _, ref in pairs if ref is not None]
    table3.caption = (
        f"Denoised parameters of {len(apis)} API run(s) {describe_runs(apis)}; idealized from "
        + (f"reference runs {describe_runs(with_ref)}." if with_ref else "no reference run.")
    )
    fig7_caption = (
        f"Raw = mean over trials of API points, denoised = fit of their minimum, idealized = "
        f"reference-stack fit; {len(apis)} API run(s) {describe_runs(apis)}"
    )
    _safe(table3, lambda: rt.fig_table3(pairs))
    _safe(fig7, lambda: rt.fig_raw_denoised_idealized(pairs))
    if fig7.plot is not None:
        fig7.caption = f"{fig7_caption}: {rt.fig7_shares(fig7.plot.data)}."
    if not with_ref:
        table3.note = fig7.note = (
            f"No idealized runtime: no reference run of these models; run `{PROFILE_CMD}`."
        )
    return [table3, fig7]


def comparison_sections(runs: list[StoredRun]) -> list[Section]:
    """Fig. 8 of paper 1 (one model on two stacks: speedup, cost and energy ratios), one
    section for each of up to four models profiled on several stacks."""
    groups = stack_profiles(runs)
    members_of, left_out = newer_runs_stand(runs)
    if not groups:
        return [
            Section(
                "fig8",
                TRADEOFFS,
                "Fig. 8 · One model on two stacks",
                missing=missing_html("no model profiled on two stacks", SECOND_STACK_CMD),
            )
        ]
    sections = []
    for i, (model, profiles) in enumerate(list(groups.items())[:4]):
        queries = default_queries([p.runtime for p in profiles])
        comparison = compare_stacks(profiles, queries)
        members = members_of[model]
        outputs = ", ".join(str(o) for o in sorted(set(queries.output_tokens)))
        verdicts = [f"{r.stack}: {r.verdict}" for r in comparison.summary.itertuples()]
        # The grid stays within every stack's profile unless their prompt ranges share none.
        within = "" if comparison.warnings else ", within every stack's profile"
        section = Section(
            f"fig8-{i}",
            TRADEOFFS,
            f"Fig. 8 · {model} on {len(profiles)} stacks",
            caption=(
                f"Idealized runtime, cost and rated energy of {plural(len(queries), 'query')} (the "
                f"profiled prompt sizes × {outputs} output tokens{within}) relative to "
                f"{comparison.baseline}; fits of runs {describe_runs(members)}."
            ),
            note="; ".join(
                [
                    *verdicts,
                    *(f"warning: {w}" for w in comparison.warnings),
                    *(f"note: {n}" for n in left_out.get(model_key(model), [])),
                ]
            ),
        )
        sections.append(_safe(section, lambda c=comparison: tf.fig_stack_comparison(c)))
    if len(groups) > 4:
        more = f"{len(groups) - 4} more model(s) on several stacks, not drawn: " + ", ".join(
            list(groups)[4:]
        )
        sections[-1].note = "; ".join(n for n in (sections[-1].note, more) if n)
    return sections


def tradeoff_sections(runs: list[StoredRun], inputs: ReportInputs) -> list[Section]:
    """Figs. 9-10 of paper 1 (capability vs efficiency with Pareto frontiers; ranks under
    accuracy/efficiency objectives), where a capability table and scenario queries were
    given."""
    fig9 = Section("fig9", TRADEOFFS, "Fig. 9 · Capability vs efficiency, Pareto frontiers")
    fig10 = Section("fig10", TRADEOFFS, "Fig. 10 · Ranks under accuracy/efficiency objectives")
    if inputs.capabilities is None or not inputs.queries:
        return _all_missing(
            [fig9, fig10], "no capability table and scenario queries given", CAPABILITY_CMD
        )
    capabilities = read_capabilities(inputs.capabilities, inputs.metric)
    queries = read_scenario_queries(inputs.queries)
    profiles = model_profiles(runs)
    try:
        result = tradeoff_table(profiles, capabilities, queries)
    except UserError as exc:
        return _all_missing([fig9, fig10], str(exc), PROFILE_CMD)
    result.notes += tradeoff_notes([], profiles, list(capabilities["model"]), runs)
    table = result.table
    used = [r for r in runs if any(r.label in s for s in table.source)]
    needs = {
        "raw_runtime_s": f"`{API_CMD}`",
        "denoised_runtime_s": f"`{API_CMD}`",
        "measured_energy_j": f"`{GPU_PROFILE_CMD}`",
    }
    missing_metrics = [m for m in needs if table[m].isna().all()]
    fig9.caption = (
        f"Score from {inputs.capabilities.name} vs efficiency per query, averaged over each "
        f"scenario's instances; squares are Pareto-optimal; fits of runs {describe_runs(used)}."
    )
    notes = [*result.notes, *(f"warning: {w}" for w in result.warnings)]
    if missing_metrics:
        notes.append(
            "not drawn for lack of data: "
            + ", ".join(f"{m} (run {needs[m]})" for m in missing_metrics)
        )
    scenarios = list(dict.fromkeys(table.scenario))
    if len(scenarios) > tf.MAX_SCENARIOS:
        notes.append(
            f"{len(scenarios) - tf.MAX_SCENARIOS} more scenario(s) in the numbers below, not "
            f"drawn: {', '.join(map(str, scenarios[tf.MAX_SCENARIOS :]))}"
        )
    fig9.note = "; ".join(notes)
    fig9.table = table
    _safe(fig9, lambda: tf.fig_pareto(table))
    objectives = {**DEFAULT_OBJECTIVES, **inputs.objectives}
    ranks = rank_models(table, objectives)
    fig10.caption = (
        f"Rank of each model per scenario under {len(objectives)} objective(s) "
        f"({'; '.join(objectives.values())}), from the table of Fig. 9."
    )
    return [fig9, _safe(fig10, lambda: tf.fig_ranks(ranks))]


def energy_sections(stores: Sequence[Path], runs: list[StoredRun]) -> list[Section]:
    """Paper 2's (Words to Watts) figures and tables from the stores' energy configs, plus the
    power and utilisation timelines of metered runs."""
    frames = [read_energy_configs(path) for path in stores]
    frames = [f for f in frames if not f.empty]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # (id, title, drawing, the column it cannot do without)
    specs = [
        ("w2w-fig2", "Fig. 2 · Throughput by model and GPU", en.fig_throughput, "tokens_per_s"),
        ("w2w-fig3", "Fig. 3 · Energy per second by model and GPU", en.fig_watts_by_model,
         "watts"),
        *[(f"w2w-{m}", f"Figs. 4–9 · {label[0].upper()}{label[1:]} by batch size and shards",
           lambda f, m=m: en.fig_energy_by_batch_shards(f, m), m)
          for m, label in en.ENERGY_METRICS.items()],
        ("w2w-table3", "Table III · Power-cap trade-offs", en.fig_power_cap, "j_per_response"),
        ("w2w-util", "Tables IV–V · GPU utilisation", en.fig_utilisation, "sm_util"),
    ]  # fmt: skip
    sections = []
    ok = en.usable(rows) if not rows.empty else rows
    for sid, title, draw, needed in specs:
        section = Section(sid, ENERGY, title)
        have = ok.dropna(subset=[needed]) if not ok.empty else ok
        if ok.empty:
            section.missing = missing_html(
                "no energy_configs rows in the store(s)", en.ENERGY_COMMAND
            )
        elif have.empty:
            section.missing = missing_html(
                f"the energy rows have no {needed} (measured without NVML?)",
                en.ENERGY_COMMAND + " on a GPU with NVML",
            )
        elif sid == "w2w-table3" and en.power_cap_changes(have).empty:
            section.missing = missing_html(
                "no configuration was run under two power caps", en.POWER_CAP_COMMAND
            )
        else:
            devices = sorted(set(have["device"].dropna()))
            dates = sorted(set(have["date"].dropna())) if "date" in have else []
            when = f", {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "") if dates else ""
            section.caption = (
                f"{len(have)} configuration(s) of {', '.join(sorted(set(have['model'])))} "
                f"measured on {'; '.join(devices) or 'unknown device'}{when}"
                + (
                    "; energy from NVML."
                    if have["watts"].notna().any()
                    else "; no energy (no NVML)."
                )
            )
            _safe(section, lambda d=draw, h=have: d(h))
        sections.append(section)
    metered = [r for r in runs if not r.samples.empty]
    timeline = Section("power-timeline", ENERGY, "Power and utilisation over metered runs")
    if metered:
        timeline.caption = (
            f"Power per GPU sampled during {min(len(metered), 4)} metered run(s) "
            f"{describe_runs(metered[:4])}; SM utilisation dotted."
        )
        _safe(timeline, lambda: en.fig_power_timelines(metered))
    else:
        timeline.missing = missing_html("no power samples", GPU_PROFILE_CMD)
    return [*sections, timeline]


def build_report(inputs: ReportInputs) -> Report:
    """The report of every figure both papers' stores allow, each with its caption and numbers,
    or the command that fills it; provenance in the header. Raises UserError without a
    store, or for a store or input that cannot be read."""
    stores = [Path(s) for s in inputs.stores]
    if not stores:
        raise UserError("no store given; pass --store PATH (repeatable)")
    runs = load_runs(stores)
    sections = [
        *runtime_sections(runs),
        *trial_sections(runs),
        *api_sections(runs),
        *load_sections(runs),
        *comparison_sections(runs),
        *tradeoff_sections(runs, inputs),
        *energy_sections(stores, runs),
    ]
    summary = pd.DataFrame([run_summary(r) for r in runs])
    sections.append(
        Section(
            "runs",
            "Provenance",
            "Runs in the store(s)",
            caption=f"{len(runs)} run(s) read from {len(stores)} store(s); where a run "
            "measured validation queries, its estimates' error on them (percent: MAPE, largest, "
            "mean; negative means low) is how far to trust it.",
            table=summary if not summary.empty else None,
            missing=None if runs else missing_html("no runs", PROFILE_CMD),
        )
    )
    commit = git_commit()
    provenance = [
        f"Built {utc_date()} by infermeter {package_version('infermeter') or '?'} "
        f"(commit {commit[:10] if commit else 'unknown'}) from "
        + ", ".join(s.name for s in stores),
        *inputs.extra_provenance,
    ]
    html = render(sections, inputs.title, provenance, inputs.image_format)
    for section in sections:  # the figures are encoded; free their memory
        if section.plot is not None:
            section.plot.figure.clear()
    return Report(sections, html)


def report_for(r: ReportRequest) -> Report:
    """`infermeter report`'s page, its output checked (its folder made) before any work."""
    from infermeter.model.tradeoffs import parse_objectives
    from infermeter.store.outputs import check_output, check_output_folder, image_format

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
        image_format=image_format(r.fmt),  # type: ignore[arg-type]
    )
    return build_report(inputs)
