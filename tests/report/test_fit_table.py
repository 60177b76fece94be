"""The fit table printed after a profile: its rows are the per-p lines (prompt sizes with
decode curves), so where PE was also read at other sizes from their o = 1 points the table
says so; a fresh-eyes run saw 3 rows beside "PE at 5 prompt sizes" and could not tell why."""

from __future__ import annotations

from rich.console import Console

from infermeter.model.cost_model import CostModel
from infermeter.report.tables import fit_table


def rendered(model: CostModel) -> str:
    console = Console(width=200, record=True)
    console.print(fit_table(model))
    return " ".join(console.export_text().split())  # the caption wraps at the table width


def lines_at(*sizes: int) -> list[dict[str, float]]:
    return [{"prompt_tokens": p, "slope": 0.01, "r2": 0.999, "n_points": 6} for p in sizes]


def test_pe_at_more_sizes_than_lines_is_said_under_the_table() -> None:
    model = CostModel([1, 97, 225, 353, 481], [0.1, 0.2, 0.3, 0.4, 0.5], 0.01)
    model.fit["per_prompt"] = lines_at(1, 97, 225)
    text = rendered(model)
    assert "PE at 2 more prompt sizes (5 in all) from their o = 1 points" in text


def test_no_caption_when_every_size_has_its_line() -> None:
    model = CostModel([1, 97], [0.1, 0.2], 0.01)
    model.fit["per_prompt"] = lines_at(1, 97)
    assert "more prompt sizes" not in rendered(model)
