"""Terminal tables (rich) of the library's frames and fits, for the CLI or a notebook.

Titles, headers and cells are literal text, never rich markup: they may quote a server or a path.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from infermeter.model.cost_model import CostModel
from infermeter.units import to_giga

# Column headers of the trade-off table short enough for a terminal; the first word names
# the frontier.
SHORT = {
    "params_b": "params B",
    "flops_per_query": "GFLOPs",
    "raw_runtime_s": "raw s",
    "denoised_runtime_s": "denoised s",
    "idealized_runtime_s": "idealized s",
    "idealized_cost_usd": "cost $",
    "idealized_energy_j": "energy J",
    "measured_energy_j": "measured J",
}


def frame_table(frame: pd.DataFrame, title: str | None = None, digits: int = 5) -> Table:
    """A rich table of `frame`: numbers right-aligned to `digits` significant digits, NaN as
    "-"."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    for column in frame.columns:
        table.add_column(
            Text(str(column)), justify="right" if frame[column].dtype.kind in "fiu" else "left"
        )
    for row in frame.itertuples(index=False):
        table.add_row(*(Text(_cell(v, digits)) for v in row))
    return table


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}g}"  # NaN shows as "-"
    return str(value)


def fit_table(model: CostModel) -> Table:
    """The paper's per-prompt-size lines: PE as priced (in the model's unit), the line's slope
    (unit per output token), its R² and its number of points."""
    per_p = pd.DataFrame(model.fit.get("per_prompt", []))
    unit = model.unit
    batch = f", batch {model.batch_size}" if model.batch_size != 1 else ""
    table = Table(title=f"{model.quantity} model of {model.model}{batch}", title_justify="left")
    for column in ("prompt tokens", f"PE ({unit})", f"g ({unit}/token)", "R²", "points"):
        table.add_column(column, justify="right")
    for row in per_p.itertuples(index=False):
        table.add_row(
            str(row.prompt_tokens),
            f"{float(model.prompt_encoding_at(row.prompt_tokens)):.6f}",
            f"{row.slope:.6g}",
            f"{row.r2:.6f}",
            str(row.n_points),
        )
    others = len(model.prompt_sizes) - len(per_p)
    if others > 0:  # the CPU and GPU grids measure decode curves at a few sizes only
        table.caption = (
            f"lines where decode curves were measured; PE at {others} more prompt sizes "
            f"({len(model.prompt_sizes)} in all) from their o = 1 points"
        )
    return table


def tradeoff_view(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The trade-off table as the terminal shows it: short headers, FLOPs in GFLOPs and a
    `frontier` column naming each Pareto frontier (of `metrics`) a row lies on."""
    frontier = [m for m in metrics if f"pareto_{m}" in table and table[m].notna().any()]
    shown = table[["model", "scenario", "accuracy", *frontier]].rename(columns=SHORT)
    shown["flops"] = to_giga(shown.pop("GFLOPs")) if "GFLOPs" in shown else None
    shown = shown.rename(columns={"flops": "GFLOPs"})
    shown["frontier"] = [
        ", ".join(SHORT[m].split(" ")[0] for m in frontier if row[f"pareto_{m}"])
        for _, row in table.iterrows()
    ]
    return shown


def catalog_view(family: str | None = None) -> pd.DataFrame:
    """The model catalog (spec.catalog.catalog_table) with short headers, of one `family` when
    given (UserError when it has no model)."""
    from infermeter.errors import UserError
    from infermeter.spec.catalog import catalog_table

    table = catalog_table()
    if family:
        table = table[table["family"].str.lower() == family.lower()]
        if table.empty:
            raise UserError(f"no catalog model of family {family!r}; run `infermeter models`")
    return table.rename(
        columns={
            "params_b": "params (B)",
            "active_b": "active (B)",
            "hidden_size": "h",
            "num_layers": "l",
            "num_heads": "heads",
            "num_kv_heads": "kv",
            "ffn_size": "ffn",
            "vocab_size": "vocab",
            "max_context": "context",
        }
    ).drop(columns=["source"], errors="ignore")


COMPARISON_COLUMNS = [
    "stack",
    "accelerators",
    "usd_per_hour",
    "total_runtime_s",
    "total_cost_usd",
    "speedup",
    "cost_ratio",
    "energy_ratio",
    "share_queries_cheaper",
    "verdict",
]


def comparison_view(summary: pd.DataFrame) -> pd.DataFrame:
    """A stack comparison's summary (model.compare) as the terminal shows it: per stack its
    accelerators, $ per hour, total runtime (s) and cost ($), and the ratios to the baseline."""
    return summary[COMPARISON_COLUMNS]
