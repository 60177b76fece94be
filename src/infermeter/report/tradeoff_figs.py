"""Figures of comparisons: stack vs stack (Fig. 8), capability vs efficiency with Pareto
frontiers (Fig. 9) and ranks under objectives (Fig. 10)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from infermeter.model.compare import StackComparison
from infermeter.model.tradeoffs import METRICS
from infermeter.report.plot import Plot, color, new_figure

# Fig. 9 shows cost in cents; the table keeps dollars.
_DISPLAY_SCALE = {"idealized_cost_usd": (100.0, "idealized cost (cents)")}


def fig_stack_comparison(comparison: StackComparison) -> Plot:
    """Fig. 8: (a) totals relative to the baseline, (b) each query's runtime and cost ratio."""
    fig, axes = new_figure(1, 2, width=8.4, height=3.6)
    bars, scatter = axes[0, 0], axes[0, 1]
    summary = comparison.summary
    others = summary[summary["stack"] != comparison.baseline].reset_index(drop=True)
    quantities = (
        ("runtime", 1 / others.speedup),
        ("cost", others.cost_ratio),
        ("energy (rated)", others.energy_ratio),
    )
    width = 0.8 / max(len(others), 1)
    for i, row in others.iterrows():
        values = [float(q[1].iloc[i]) for q in quantities]
        xs = np.arange(len(quantities)) + (i - (len(others) - 1) / 2) * width
        bars.bar(xs, values, width, color=color(i + 1), label=row["stack"])
    bars.axhline(1.0, color="black", lw=1, ls=":")
    bars.set_xticks(range(len(quantities)), [q[0] for q in quantities])
    bars.set_ylabel(f"relative to {comparison.baseline}")
    bars.set_title("(a) whole benchmark", loc="left", fontsize=9)
    bars.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    per_query = comparison.per_query
    for i, stack in enumerate(others["stack"]):
        rows = per_query[per_query["stack"] == stack]
        scatter.plot(
            1 / rows.speedup,
            rows.cost_ratio,
            "o",
            ms=3.5,
            alpha=0.8,
            color=color(i + 1),
            label=stack,
        )
    scatter.axhline(1.0, color="black", lw=1, ls=":")
    scatter.axvline(1.0, color="black", lw=1, ls=":")
    scatter.set_xlabel("runtime ratio (> 1: slower than baseline)")
    scatter.set_ylabel("cost ratio (< 1: cheaper)")
    scatter.set_title("(b) per query", loc="left", fontsize=9)
    scatter.text(
        0.98,
        0.02,
        "slower but cheaper",
        transform=scatter.transAxes,
        ha="right",
        fontsize=7,
        color="#555555",
    )
    scatter.legend(fontsize=7, frameon=False)
    return Plot(fig, summary)


def metrics_with_data(table: pd.DataFrame) -> list[str]:
    """The efficiency metrics (tradeoffs.METRICS, in Fig. 9's order) that have a value for some
    row of `table`."""
    return [m for m in METRICS if m in table and table[m].notna().any()]


MAX_SCENARIOS = 5  # columns of Fig. 9; the report notes any scenario beyond them


def fig_pareto(table: pd.DataFrame, max_scenarios: int = MAX_SCENARIOS) -> Plot:
    """Fig. 9: a row per efficiency metric with data, a column per scenario; squares mark the
    Pareto frontier (lower metric, higher score), joined by a dotted line."""
    metrics = metrics_with_data(table)
    scenarios = list(dict.fromkeys(table.scenario))[:max_scenarios]
    models = list(dict.fromkeys(table.model))
    fig, axes = new_figure(
        len(metrics),
        len(scenarios),
        width=2.6 * len(scenarios) + 1.6,
        height=2.1 * len(metrics) + 0.6,
    )
    for r, metric in enumerate(metrics):
        scale, label = _DISPLAY_SCALE.get(metric, (1.0, METRICS[metric]))
        for c, scenario in enumerate(scenarios):
            ax = axes[r, c]
            rows = table[(table.scenario == scenario) & table[metric].notna()]
            for _, row in rows.iterrows():
                on_front = bool(row[f"pareto_{metric}"])
                ax.plot(
                    row[metric] * scale,
                    row.accuracy,
                    "s" if on_front else "o",
                    ms=6 if on_front else 4.5,
                    color=color(models.index(row.model)),
                    markeredgecolor="black" if on_front else "none",
                )
            front = rows[rows[f"pareto_{metric}"]].sort_values(metric)
            if len(front) > 1:
                ax.plot(front[metric] * scale, front.accuracy, ":", color="black", lw=1)
            values = rows[metric].to_numpy(dtype=float) * scale
            if values.size and values.min() > 0 and values.max() / values.min() > 30:
                ax.set_xscale("log")
            else:
                ax.xaxis.set_major_locator(MaxNLocator(4))
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4))
            ax.margins(x=0.15)
            if r == 0:
                ax.set_title(scenario, fontsize=9)
            if c == 0:
                ax.set_ylabel("accuracy", fontsize=8)
            ax.set_xlabel(label, fontsize=8)
    handles = [
        axes[0, 0].plot([], [], "o", color=color(i), label=m)[0] for i, m in enumerate(models)
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    columns = ["scenario", "model", "accuracy", *metrics, *(f"pareto_{m}" for m in metrics)]
    return Plot(fig, table[columns])


def fig_ranks(ranks: pd.DataFrame) -> Plot:
    """Fig. 10: each model's rank per scenario, a panel per objective (rank 1 at the top)."""
    objectives = list(dict.fromkeys(ranks.objective))
    fig, axes = new_figure(1, len(objectives), width=3.6 * len(objectives) + 1.6, height=3.4)
    models = list(dict.fromkeys(ranks.model))
    scenarios = list(dict.fromkeys(ranks.scenario))
    for ax, objective in zip(axes.flat, objectives, strict=True):
        rows = ranks[ranks.objective == objective]
        for i, model in enumerate(models):
            mine = rows[rows.model == model].set_index("scenario").reindex(scenarios)
            ax.plot(
                range(len(scenarios)), mine["rank"], "o-", ms=4, lw=1, color=color(i), label=model
            )
        ax.set_xticks(range(len(scenarios)), scenarios, rotation=20, ha="right", fontsize=7)
        ax.set_ylim(len(models) + 0.5, 0.5)
        ax.set_yticks(range(1, len(models) + 1))
        ax.set_ylabel("rank (1 = best)")
        ax.set_title(objective, fontsize=9)
    handles = [
        axes[0, 0].plot([], [], "o-", color=color(i), label=m)[0] for i, m in enumerate(models)
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    return Plot(fig, ranks)
