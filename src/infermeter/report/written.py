"""Figures and summaries of the report written for a caller outside the HTML page (the CLI's
`tradeoffs --figures`, `compare --figure`, `report`'s list of sections without data)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.report.plot import encode
from infermeter.store.outputs import writing


def write_tradeoff_figures(
    table: pd.DataFrame, ranks: pd.DataFrame, folder: Path, fmt: str
) -> list[Path]:
    """Fig. 9 (Pareto frontiers) and Fig. 10 (ranks) into `folder` as png or svg; the paths."""
    from infermeter.report.tradeoff_figs import fig_pareto, fig_ranks

    written = []
    for name, plot in (("fig9_pareto", fig_pareto(table)), ("fig10_ranks", fig_ranks(ranks))):
        with writing(folder / f"{name}.{fmt}", "figure") as path:
            path.write_bytes(encode(plot.figure, fmt))
        written.append(path)
    return written


def write_comparison_figure(result: Any, figure: Path) -> None:
    """Fig. 8 of a stack comparison (model.compare) to `figure`, svg by its suffix else png."""
    from infermeter.report.tradeoff_figs import fig_stack_comparison

    fmt = "svg" if figure.suffix.lower() == ".svg" else "png"
    with writing(figure, "figure") as path:
        path.write_bytes(encode(fig_stack_comparison(result).figure, fmt))


def missing_sections(sections: list[Any]) -> pd.DataFrame:
    """The report's sections without data and, in plain text, what to do to get each."""
    missing = [s for s in sections if s.plot is None and s.missing]
    plain = [html.unescape(re.sub(r"<[^>]+>", "", s.missing or "")) for s in missing]
    return pd.DataFrame({"section": [s.title for s in missing], "to get it": plain})
