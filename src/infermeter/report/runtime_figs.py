"""The idealized-runtime paper's runtime figures, drawn from stored runs.

    Fig. 3   runtime vs output tokens, one line per prompt size, with the fitted model
    Fig. 4   prompt-encoding time PE(p) vs prompt size, with a dotted best-fit line
    Fig. 5   each trial's runtime on an API against output tokens, at one prompt size
    Table 3  PE at three prompt sizes and g, idealized (reference stack) vs denoised (API)
    Fig. 7   (a) raw vs denoised, (b) denoised vs idealized, each with a y = x line

Raw is the mean over trials of an API run's points, denoised the model fitted to their
minimum (with the API's overhead), idealized the model of the same model's reference run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from infermeter.model.fit import coefficient_of_variation
from infermeter.model.fitted import StoredRun
from infermeter.report.plot import Plot, color, new_figure, small_multiples
from infermeter.units import to_pct

TABLE3_PROMPTS = (512, 1024, 1536)
FIG5_PROMPT = 512  # the paper's Fig. 5 shows queries of p = 512


def _smallest_batch(run: StoredRun) -> pd.DataFrame:
    """A run's usable points at its smallest batch size (the figures draw one batch)."""
    pts = run.ok_points
    return pts[pts["batch_size"] == pts["batch_size"].min()]


def _trial_stats(run: StoredRun) -> pd.DataFrame:
    pts = _smallest_batch(run)
    return (
        pts.groupby(["prompt_tokens", "output_tokens"])["runtime_s"]
        .agg(trials="count", min_s="min", mean_s="mean", max_s="max")
        .reset_index()
    )


def _runtime_panel(ax: Axes, run: StoredRun) -> pd.DataFrame:
    """A run's Fig. 3 panel: measured and fitted runtime against o, a line per p; its numbers."""
    stats = _trial_stats(run)
    model = run.fit()
    stats["fitted_s"] = model.predict(stats.prompt_tokens, stats.output_tokens)
    for i, (p, group) in enumerate(stats.groupby("prompt_tokens")):
        ax.plot(group.output_tokens, group.min_s, "o", ms=3.5, color=color(i), label=f"p={p}")
        o = np.linspace(1, group.output_tokens.max(), 50)
        ax.plot(o, model.predict(np.full_like(o, p), o), "-", lw=1, color=color(i))
    ax.set_title(f"{run.model} · {run.record.backend}", fontsize=9)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("runtime (s)")
    ax.legend(fontsize=7, frameon=False)
    return stats.assign(run=run.label, model=run.model, backend=run.record.backend)


def fig_runtime_vs_output(runs: Sequence[StoredRun]) -> Plot:
    """Fig. 3: small multiples, one panel per run (up to 6), a line per prompt size."""
    fig, data = small_multiples(list(runs)[:6], 3, 3.3, 2.8, _runtime_panel)
    columns = ["run", "model", "backend", "prompt_tokens", "output_tokens", "trials", "min_s"]
    return Plot(fig, data[[*columns, "mean_s", "max_s", "fitted_s"]])


def trials_at_one_prompt(run: StoredRun) -> pd.DataFrame:
    """A run's usable trials at its profiled prompt size closest to FIG5_PROMPT (its smallest
    batch size), for Fig. 5: run, model, prompt_tokens, output_tokens, batch_size, trial,
    runtime_s (s), and cv, the coefficient of variation of the trials of that (p, o) (NaN for
    one trial)."""
    pts = _smallest_batch(run)
    sizes = np.unique(pts["prompt_tokens"].to_numpy())
    p = int(sizes[np.argmin(np.abs(sizes - FIG5_PROMPT))])
    rows = pts[pts["prompt_tokens"] == p]
    stats = rows.groupby("output_tokens")["runtime_s"].agg(["std", "mean"])
    cv = coefficient_of_variation(stats["std"], stats["mean"])
    columns = ["prompt_tokens", "output_tokens", "batch_size", "trial", "runtime_s"]
    return rows[columns].assign(run=run.label, model=run.model, cv=rows.output_tokens.map(cv))


def _trials_panel(ax: Axes, run: StoredRun) -> pd.DataFrame:
    """A run's Fig. 5 panel: every trial's runtime against o at one prompt size."""
    data = trials_at_one_prompt(run)
    ax.plot(data.output_tokens, data.runtime_s, "o", ms=3, alpha=0.6, color=color(0))
    mean_cv = data.groupby("output_tokens")["cv"].first().mean()
    spread = "one trial a point" if np.isnan(mean_cv) else f"mean CV {mean_cv:.2f}"
    batch = int(data.batch_size.iloc[0])
    shape = f"p={data.prompt_tokens.iloc[0]}" + (f", batch {batch}" if batch != 1 else "")
    ax.set_title(f"{run.label} · {run.model} · {shape} · {spread}", fontsize=8)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("runtime of a trial (s)")
    return data


def fig_trials(runs: Sequence[StoredRun]) -> Plot:
    """Fig. 5: small multiples, one panel per run (up to 6), a dot per trial."""
    fig, data = small_multiples(list(runs)[:6], 3, 3.3, 2.8, _trials_panel)
    columns = ["run", "model", "prompt_tokens", "output_tokens", "batch_size", "trial"]
    columns += ["runtime_s", "cv"]
    return Plot(fig, data[columns])


def fig_prompt_encoding(runs: Sequence[StoredRun]) -> Plot:
    """Fig. 4: PE(p) at the profiled sizes, a dotted least-squares line per run."""
    fig, axes = new_figure(1, 1, width=6.4, height=3.6)
    ax = axes[0, 0]
    rows = []
    for i, run in enumerate(runs):
        model = run.fit()
        p = np.array(model.prompt_sizes, dtype=float)
        pe = np.array(model.prompt_encoding)
        label = f"{run.model} ({run.record.backend})"
        ax.plot(p, pe, "o", color=color(i), ms=4, label=label)
        if p.size >= 2:
            slope, intercept = np.polyfit(p, pe, 1)
            xs = np.linspace(0, p.max(), 50)
            ax.plot(xs, intercept + slope * xs, ":", color=color(i), lw=1.2)
        rows += [
            {
                "run": run.label,
                "model": run.model,
                "backend": run.record.backend,
                "prompt_tokens": int(k),
                "prompt_encoding_s": float(v),
            }
            for k, v in zip(p, pe, strict=True)
        ]
    ax.set_xlabel("prompt tokens p")
    ax.set_ylabel("prompt encoding time PE(p) (s)")
    ax.legend(fontsize=7, frameon=False, ncol=2 if len(runs) > 4 else 1)
    return Plot(fig, pd.DataFrame(rows))


def table3(pairs: Sequence[tuple[StoredRun, StoredRun | None]]) -> pd.DataFrame:
    """Table 3: PE at 512/1024/1536 (or the largest profiled sizes) and g, per model."""
    rows = []
    for api, ref in pairs:
        denoised = api.fit()
        sizes = _table3_sizes(denoised.prompt_sizes)
        for metric, model in (("idealized", ref.fit() if ref else None), ("denoised", denoised)):
            if model is None:
                continue
            row = {"model": api.model, "metric": metric}
            for p in sizes:
                row[f"PE({p}) s"] = float(model.prompt_encoding_at(p))
            row["g (s/token)"] = model.per_output_token
            row["overhead s"] = model.overhead
            row["run"] = (ref if metric == "idealized" else api).label  # type: ignore[union-attr]
            rows.append(row)
    return pd.DataFrame(rows)


def _table3_sizes(profiled: Sequence[int]) -> tuple[int, ...]:
    top = max(profiled)
    if top >= max(TABLE3_PROMPTS):
        return TABLE3_PROMPTS
    # A smaller context: the same three fractions of the largest profiled size.
    return tuple(sorted({max(1, int(top * f)) for f in (1 / 3, 2 / 3, 1.0)}))


def fig_table3(pairs: Sequence[tuple[StoredRun, StoredRun | None]]) -> Plot:
    """Table 3 as a picture: PE(p) lines and g bars, idealized (solid) vs denoised (dashed)."""
    data = table3(pairs)
    fig, axes = new_figure(1, 2, width=8.0, height=3.2)
    pe_ax, g_ax = axes[0, 0], axes[0, 1]
    models = list(dict.fromkeys(data["model"]))
    width = 0.3
    for i, model in enumerate(models):
        for metric, style, shift in (("idealized", "-", -width / 2), ("denoised", "--", width / 2)):
            row = data[(data.model == model) & (data.metric == metric)]
            if row.empty:
                continue
            pe_cols = [c for c in row.columns if c.startswith("PE(") and row[c].notna().all()]
            sizes = [int(c[3:].split(")")[0]) for c in pe_cols]
            pe_ax.plot(
                sizes,
                row[pe_cols].iloc[0].to_numpy(),
                style,
                marker="o",
                ms=3,
                color=color(i),
                label=f"{model} {metric}",
            )
            g_ax.bar(
                i + shift,
                row["g (s/token)"].iloc[0],
                width,
                color=color(i),
                hatch="" if metric == "idealized" else "//",
                edgecolor="white",
                label=metric if i == 0 else None,
            )
    pe_ax.set_xlabel("prompt tokens p")
    pe_ax.set_ylabel("PE(p) (s)")
    pe_ax.legend(fontsize=7, frameon=False)
    g_ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=7)
    g_ax.set_xlim(-0.8, len(models) - 0.2)
    g_ax.set_ylabel("g per output token (s)")
    g_ax.legend(fontsize=7, frameon=False, loc="upper left")
    return Plot(fig, data)


def raw_denoised_idealized(pairs: Sequence[tuple[StoredRun, StoredRun | None]]) -> pd.DataFrame:
    """Per API (p, o): raw (mean over trials), measured min, denoised and idealized model."""
    frames = []
    for api, ref in pairs:
        stats = _trial_stats(api)
        p, o = stats.prompt_tokens.to_numpy(float), stats.output_tokens.to_numpy(float)
        idealized = ref.fit() if ref is not None else None
        frames.append(
            pd.DataFrame(
                {
                    "model": api.model,
                    "api_run": api.label,
                    "reference_run": ref.label if ref is not None else "-",
                    "prompt_tokens": stats.prompt_tokens,
                    "output_tokens": stats.output_tokens,
                    "trials": stats.trials,
                    "raw_s": stats.mean_s,
                    "min_s": stats.min_s,
                    "denoised_s": api.fit().predict(p, o),
                    "idealized_s": idealized.predict(p, o) if idealized else np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def fig_raw_denoised_idealized(pairs: Sequence[tuple[StoredRun, StoredRun | None]]) -> Plot:
    """Fig. 7: (a) raw vs denoised, (b) denoised vs idealized; dotted y = x."""
    data = raw_denoised_idealized(pairs)
    fig, axes = new_figure(1, 2, width=8.0, height=3.6)
    panels = (
        (axes[0, 0], "raw_s", "denoised_s", "raw runtime (s)", "denoised runtime (s)", "(a)"),
        (
            axes[0, 1],
            "denoised_s",
            "idealized_s",
            "denoised runtime (s)",
            "idealized runtime (s)",
            "(b)",
        ),
    )
    for ax, x, y, xlabel, ylabel, tag in panels:
        shown = data[data[x].notna() & data[y].notna()]
        for i, (model, group) in enumerate(shown.groupby("model", sort=False)):
            ax.plot(group[x], group[y], "o", ms=3.5, alpha=0.8, color=color(i), label=model)
        if not shown.empty:
            top = float(np.nanmax(shown[[x, y]].to_numpy())) * 1.05
            ax.plot([0, top], [0, top], ":", color="black", lw=1, label="y = x")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
        else:
            ax.text(
                0.5,
                0.5,
                "no reference run of these models",
                ha="center",
                transform=ax.transAxes,
                fontsize=8,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(tag, loc="left", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    return Plot(fig, data)


def fig7_shares(data: pd.DataFrame) -> str:
    """The paper's headline numbers for Fig. 7, as a phrase for the caption."""
    share_raw = to_pct(float(np.mean(data.raw_s >= data.denoised_s)))
    text = f"raw ≥ denoised for {share_raw:.1f}% of {len(data)} (p, o) points"
    both = data[data.idealized_s.notna()]
    if not both.empty:
        share = to_pct(float(np.mean(both.idealized_s > both.denoised_s)))
        text += f"; idealized > denoised for {share:.1f}%"
    return text
