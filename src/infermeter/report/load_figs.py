"""The load figure: runtime vs load on an API (the paper's Fig. 6, and the timed modes).

Burst runs (`infermeter load`, the paper's Fig. 6) draw, per output length, the minimum over
trials of the mean runtime of steps whose requests all succeeded against the number of
queries in flight, with the p90 latency of every request dashed. Timed runs (`--mode
concurrent` or `rate`) draw p50 and p99 latency against the level. Failed requests are
counted in the data table beside the figure, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes

from infermeter.experiments.load import load_summary, timed_summary
from infermeter.model.fitted import StoredRun
from infermeter.report.plot import Plot, color, small_multiples

LOAD_CMD = "infermeter load MODEL --base-url http://HOST:PORT/v1 --store STORE"


def load_kind(run: StoredRun) -> str | None:
    """ "load" (bursts), "load-concurrent", "load-rate", or None for other runs."""
    kind = run.record.kind
    return kind if kind.startswith("load") else None


def load_runs(runs: Sequence[StoredRun]) -> list[StoredRun]:
    """The runs of `infermeter load` (bursts, concurrency, request rates)."""
    return [r for r in runs if load_kind(r) is not None]


def _load_panel(ax: Axes, run: StoredRun) -> pd.DataFrame:
    """A load run's panel: runtime or latency against the load level; its numbers."""
    kind = load_kind(run)
    if kind == "load":
        summary = load_summary(run.points).rename(columns={"errors": "failed"})
        for i, (o, group) in enumerate(summary.groupby("output_tokens")):
            ax.plot(group.concurrency, group.min_step_mean_s, "o-", ms=3.5, color=color(i),
                    label=f"o={o}")  # fmt: skip
            ax.plot(group.concurrency, group.latency_p90_s, "--", lw=1, color=color(i))
        ax.set_xlabel("queries in flight (burst)")
        ax.set_ylabel("runtime (s); p90 dashed")
        level = "concurrency"
    else:
        grid = run.record.grid
        summary = timed_summary(run.points, float(grid.get("duration_s", 1.0)))
        ax.plot(summary.level, summary.latency_p50_s, "o-", ms=3.5, color=color(0),
                label="p50")  # fmt: skip
        ax.plot(summary.level, summary.latency_p99_s, "s--", ms=3, color=color(1),
                label="p99")  # fmt: skip
        mode = grid.get("mode")
        ax.set_xlabel("requests in flight" if mode == "concurrent" else "requests/s")
        ax.set_ylabel("latency (s)")
        level = "level"
    failed = int(summary["failed"].sum())
    title = f"{run.model} · p={run.points.prompt_tokens.iloc[0]}"
    ax.set_title(title + (f" · {failed} failed" if failed else ""), fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return summary.rename(columns={level: "load_level"}).assign(run=run.label, kind=kind)


def fig_load(runs: Sequence[StoredRun]) -> Plot:
    """One panel per load run (up to 4): runtime or latency against the load level."""
    fig, data = small_multiples(list(runs)[:4], 2, 3.6, 2.9, _load_panel)
    first = ["run", "kind", "load_level"]
    return Plot(fig, data[first + [c for c in data.columns if c not in first]])
