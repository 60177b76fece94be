"""Words-to-Watts figures from per-configuration energy rows, and power timelines.

The energy experiment stores one row per configuration it ran in the table `energy_configs`
(its schema and readers are infermeter.store.energy's); each row belongs to a run of the
`runs` table, which says the model, the device and when. The figures take a plain
DataFrame with ENERGY_COLUMNS, so rows from anywhere (a CSV, a notebook) draw the same:

    Fig. 2       words/s, tokens/s, responses/s by model and device
    Fig. 3       energy per second (W) by model and device
    Figs. 4–9    W, J per output token, J per response by batch size and shards, per length
    Table III    time, energy and token rate under a power cap, relative to the highest cap
    Tables IV–V  SM and memory utilisation by shards and length
    timelines    power (and SM utilisation) over a run, from `power_samples`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from infermeter.errors import UserError
from infermeter.model.fitted import StoredRun
from infermeter.report.plot import Plot, color, new_figure
from infermeter.units import to_pct

# What the figures need; model and device come from the run (or a column of their own).
ENERGY_COLUMNS = (
    "dataset", "batch", "max_len", "shards", "power_cap_w", "tokens_per_s", "words_per_s",
    "responses_per_s", "watts", "j_per_token", "j_per_response", "sm_util", "mem_util",
)  # fmt: skip
ENERGY_COMMAND = "infermeter energy MODEL --store STORE"
POWER_CAP_COMMAND = "infermeter energy MODEL --power-limit 250,175,150 --store STORE"


def usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that ran (status ok or unset) with the columns the figures need."""
    missing = [c for c in ENERGY_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"energy rows lack column(s) {', '.join(missing)}")
    frame = frame.copy()
    for column in ("model", "device"):
        if column not in frame:
            frame[column] = "-"
        frame[column] = frame[column].fillna("-")
    if "status" in frame:
        frame = frame[frame["status"].fillna("ok").eq("ok")]
    return frame.reset_index(drop=True)


def _grouped_bars(
    ax,
    table: pd.DataFrame,
    x: str,
    hue: str,
    value: str,
    err: str | None = None,
    log: bool = False,
    palette: dict[Any, str] | None = None,
) -> None:
    """Bars of `value` at each `x`, one colour per `hue` (from `palette` where given, so that
    panels agree), an error bar from `err`."""
    xs = list(dict.fromkeys(table[x]))
    hues = list(dict.fromkeys(table[hue]))
    width = 0.8 / max(len(hues), 1)
    for j, h in enumerate(hues):
        rows = table[table[hue] == h].set_index(x).reindex(xs)
        offsets = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(
            offsets,
            rows[value],
            width,
            yerr=rows[err] if err else None,
            capsize=2,
            color=palette[h] if palette else color(j),
            label=str(h),
        )
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
    values = table[value].to_numpy(dtype=float)
    # A log axis only where values span decades; otherwise it hides the differences.
    if log and (values > 0).all() and values.max() / values.min() > 10:
        ax.set_yscale("log")


def _palette(values: Sequence[Any] | pd.Series) -> dict[Any, str]:
    """One colour per distinct value, the same in every panel of a figure."""
    return {v: color(i) for i, v in enumerate(dict.fromkeys(values))}


def _legend(fig: Any, palette: dict[Any, str], title: str | None = None) -> None:
    """One legend for the figure, beside the panels rather than over a bar."""
    handles = [Patch(color=c, label=str(v)) for v, c in palette.items()]
    fig.legend(handles=handles, title=title, loc="outside right upper", fontsize=7,
               title_fontsize=7, frameon=False)  # fmt: skip


def fig_throughput(frame: pd.DataFrame) -> Plot:
    """Fig. 2: words/s, tokens/s, responses/s per model and dataset, a colour per device."""
    rows = usable(frame)
    rows["model · dataset"] = rows["model"] + " · " + rows["dataset"].astype(str)
    metrics = (
        ("words_per_s", "words / s"),
        ("tokens_per_s", "tokens / s"),
        ("responses_per_s", "responses / s"),
    )
    table = (
        rows.groupby(["model · dataset", "device"], sort=False)
        .agg(
            **{m: (m, "mean") for m, _ in metrics},
            **{f"{m}_std": (m, "std") for m, _ in metrics},
            configs=("watts", "size"),
        )
        .reset_index()
    )
    fig, axes = new_figure(1, 3, width=10.0, height=3.4)
    palette = _palette(table.device)
    for ax, (metric, label) in zip(axes.flat, metrics, strict=True):
        _grouped_bars(
            ax,
            table.fillna({f"{metric}_std": 0}),
            "model · dataset",
            "device",
            metric,
            f"{metric}_std",
            palette=palette,
        )
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=20)
    _legend(fig, palette)
    return Plot(fig, table)


def fig_watts_by_model(frame: pd.DataFrame) -> Plot:
    """Fig. 3: energy per second (W), mean and spread over configurations, log scale."""
    rows = usable(frame)
    table = (
        rows.groupby(["model", "dataset", "device"], sort=False)
        .agg(watts=("watts", "mean"), watts_std=("watts", "std"), configs=("watts", "size"))
        .reset_index()
    )
    datasets = list(dict.fromkeys(table.dataset))
    fig, axes = new_figure(1, len(datasets), width=3.4 * len(datasets) + 2.0, height=3.2)
    palette = _palette(table.device)
    for ax, dataset in zip(axes.flat, datasets, strict=True):
        part = table[table.dataset == dataset].fillna({"watts_std": 0})
        _grouped_bars(ax, part, "model", "device", "watts", "watts_std", log=True, palette=palette)
        ax.set_title(str(dataset), fontsize=9)
        ax.set_ylabel("energy per second (W)")
    _legend(fig, palette)
    return Plot(fig, table)


ENERGY_METRICS = {
    "watts": "energy per second (W)",
    "j_per_token": "energy per output token (J)",
    "j_per_response": "energy per response (J)",
}


def fig_energy_by_batch_shards(frame: pd.DataFrame, metric: str) -> Plot:
    """Figs. 4–9: `metric` by shards (x) and batch size (colour), a row of panels per model and
    dataset with a column per max generation length (a log scale where values span decades,
    as in the paper). Every configuration is drawn; a batch size has one colour throughout."""
    rows = usable(frame).dropna(subset=["model", "max_len", "dataset", "shards", "batch"])
    rows = rows.astype({"max_len": int, "shards": int, "batch": int})  # "64", never "64.0"
    table = (
        rows.groupby(["model", "max_len", "dataset", "shards", "batch"])
        .agg(**{metric: (metric, "mean")})
        .reset_index()
    )
    if table.empty:
        raise UserError("no energy configuration ran (all infeasible or not run): nothing to draw")
    lines = list(table.groupby(["model", "dataset"]).groups)
    lengths = sorted(table.max_len.unique())
    batches = sorted(table.batch.unique())
    palette = _palette(batches)
    fig, axes = new_figure(
        len(lines), len(lengths), width=3.2 * len(lengths) + 1.0, height=2.6 * len(lines)
    )
    for r, (model, dataset) in enumerate(lines):
        for c, max_len in enumerate(lengths):
            ax = axes[r, c]
            part = table[
                (table.model == model) & (table.dataset == dataset) & (table.max_len == max_len)
            ]
            if part.empty:  # said on the panel, so a gap is never read as a lost figure
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{model} · {dataset} · max length {max_len}:\nnot run, "
                        "or no batch fitted in memory", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes)  # fmt: skip
                continue
            _grouped_bars(ax, part, "shards", "batch", metric, log=True, palette=palette)
            ax.set_title(f"{model} · {dataset} · max length {max_len}", fontsize=8)
            ax.set_xlabel("shards (GPUs)", fontsize=8)
            ax.set_ylabel(ENERGY_METRICS[metric], fontsize=8)
    _legend(fig, palette, "batch")
    return Plot(fig, table)


def power_cap_changes(frame: pd.DataFrame) -> pd.DataFrame:
    """Table III: % change of time, energy and token rate at each cap vs the highest cap.

    An uncapped row (power_cap_w empty) is the highest "cap" there is, so it becomes the
    reference when present. For a fixed workload, inference time is inversely proportional
    to responses per second and total energy proportional to joules per response.
    """
    rows = usable(frame)
    rows = rows.assign(cap=rows["power_cap_w"].astype(float).fillna(np.inf))
    keys = ["model", "dataset", "batch", "max_len", "shards"]
    out = []
    for key, group in rows.groupby(keys):
        if group.cap.nunique() < 2:
            continue
        means = group.groupby("cap")[["responses_per_s", "j_per_response", "tokens_per_s"]].mean()
        ref_cap = means.index.max()
        ref = means.loc[ref_cap]
        for cap, row in means.drop(index=ref_cap).iterrows():
            out.append({
                **dict(zip(keys, key, strict=True)),
                "reference_cap_w": ref_cap if np.isfinite(ref_cap) else np.nan,
                "power_cap_w": cap,
                "time_pct": to_pct(ref.responses_per_s / row.responses_per_s - 1),
                "energy_pct": to_pct(row.j_per_response / ref.j_per_response - 1),
                "token_rate_pct": to_pct(row.tokens_per_s / ref.tokens_per_s - 1),
            })  # fmt: skip
    return pd.DataFrame(out)


def fig_power_cap(frame: pd.DataFrame) -> Plot:
    """Table III as bars: per max length, the three % changes at each lower cap."""
    table = power_cap_changes(frame)
    caps = sorted(table.power_cap_w.unique(), reverse=True)
    fig, axes = new_figure(1, len(caps), width=3.6 * len(caps) + 0.4, height=3.2)
    for ax, cap in zip(axes.flat, caps, strict=True):
        part = (
            table[table.power_cap_w == cap]
            .groupby("max_len")[["time_pct", "energy_pct", "token_rate_pct"]]
            .mean()
            .reset_index()
        )
        long = part.melt("max_len", var_name="change", value_name="pct")
        _grouped_bars(ax, long, "max_len", "change", "pct")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("max generation length")
        ax.set_ylabel("% change vs highest cap")
        ref = table.loc[table.power_cap_w == cap, "reference_cap_w"].max()
        versus = "no cap" if np.isnan(ref) else f"{ref:g} W"
        ax.set_title(f"cap {cap:g} W (vs {versus})", fontsize=9)
    axes[0, 0].legend(fontsize=7, frameon=False)
    return Plot(fig, table)


def fig_utilisation(frame: pd.DataFrame) -> Plot:
    """Tables IV–V: mean SM and memory utilisation by shards and max length."""
    rows = usable(frame).dropna(subset=["sm_util"])
    table = (
        rows.groupby(["model", "device", "shards", "max_len"])
        .agg(sm_util=("sm_util", "mean"), mem_util=("mem_util", "mean"))
        .reset_index()
    )
    table["config"] = table["shards"].astype(str) + " sh · " + table["max_len"].astype(str)
    fig, axes = new_figure(1, 2, width=8.0, height=3.0)
    for ax, metric, label in (
        (axes[0, 0], "sm_util", "SM utilisation (%)"),
        (axes[0, 1], "mem_util", "memory utilisation (%)"),
    ):
        _grouped_bars(ax, table, "config", "model", metric)
        ax.set_ylabel(label)
        ax.set_xlabel("shards · max length")
        ax.tick_params(axis="x", labelrotation=20)
    axes[0, 0].legend(fontsize=7, frameon=False, loc="lower right")
    return Plot(fig, table.drop(columns="config"))


def fig_power_timelines(runs: Sequence[StoredRun], max_runs: int = 4) -> Plot:
    """Power per GPU over each metered run (solid) and SM utilisation (dotted, right axis)."""
    runs = [r for r in runs if not r.samples.empty][:max_runs]
    fig, axes = new_figure(len(runs), 1, width=8.0, height=2.3 * len(runs) + 0.3)
    frames = []
    for ax, run in zip(axes.flat, runs, strict=True):
        samples = run.samples.assign(seconds=run.samples.t - run.samples.t.min())
        util_ax = None
        for j, (gpu, group) in enumerate(samples.groupby("gpu")):
            ax.plot(group.seconds, group.power_w, "-", lw=1, color=color(j), label=f"GPU {gpu}")
            if group.sm_util.notna().any():
                util_ax = util_ax or ax.twinx()
                util_ax.plot(group.seconds, group.sm_util, ":", lw=0.8, color=color(j))
        if util_ax is not None:
            util_ax.set_ylabel("SM util (%)", fontsize=7)
            util_ax.set_ylim(0, 105)
        ax.set_ylabel("power (W)")
        ax.set_title(f"{run.model} · {run.record.backend} · {run.label}", fontsize=8)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
        frames.append(samples.assign(run=run.label, model=run.model))
    axes[-1, 0].set_xlabel("seconds since the first sample")
    data = pd.concat(frames, ignore_index=True)
    return Plot(fig, data[["run", "model", "seconds", "gpu", "power_w", "sm_util", "mem_util"]])
