"""Figures without pyplot: every figure function returns a Plot (a matplotlib Figure and the
DataFrame of the numbers it draws), and `encode` turns a figure into PNG or SVG bytes.

matplotlib.figure.Figure is used directly with an Agg canvas, never pyplot: no global state, no
GUI backend, safe in threads and servers, and a notebook's own backend is left alone. SVG keeps
its text as paths, so a page that embeds it needs no fonts.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ImageFormat = Literal["png", "svg"]

T = TypeVar("T")  # what small_multiples draws a panel of

# Okabe-Ito (safe for colour-blindness), then brown and grey: ten series before a repeat.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
    "#8C564B",
    "#999999",
)
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "path",
}


@dataclass
class Plot:
    """A figure with the table of numbers it draws."""

    figure: Figure
    data: pd.DataFrame


def new_figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 3.6):
    """A figure and a 2-D array of axes (always 2-D, so callers index [r, c])."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        _apply_style(ax)
    return fig, axes


def small_multiples(
    items: Sequence[T],
    most_cols: int,
    panel_w: float,
    panel_h: float,
    draw: Callable[[Axes, T], pd.DataFrame],
) -> tuple[Figure, pd.DataFrame]:
    """One panel per item (at least one) in rows of up to `most_cols`, each panel_w x
    panel_h inches: `draw(ax, item)` draws a panel and returns its numbers. The figure
    (spare axes hidden) and every panel's numbers, one frame."""
    cols = min(most_cols, len(items))
    rows = -(-len(items) // cols)
    fig, axes = new_figure(rows, cols, width=panel_w * cols, height=panel_h * rows)
    frames = [draw(ax, item) for ax, item in zip(axes.flat, items, strict=False)]
    for ax in list(axes.flat)[len(items) :]:
        ax.set_visible(False)
    return fig, pd.concat(frames, ignore_index=True)


def _apply_style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)


def color(i: int) -> str:
    """The i-th colour of the report's palette, cycling."""
    return PALETTE[i % len(PALETTE)]


def encode(fig: Figure, fmt: ImageFormat = "png", dpi: int = 110) -> bytes:
    """The figure as PNG or SVG bytes in the report's style, without a creation date (a rebuilt
    report differs only where the numbers do)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
    return buffer.getvalue()


def _metadata(fmt: ImageFormat) -> dict[str, str | None]:
    # No creation date in the file: a rebuilt report differs only where the numbers do.
    return {"Date": None} if fmt == "svg" else {"Software": "infermeter (matplotlib)"}
