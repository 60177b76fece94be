"""bias_diagnosis.py's sweep summary: the odd-over-even parity figure (a GPU script; its
arithmetic is checked here on made-up sweeps)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from paths import REPO


@pytest.fixture(scope="module")
def script():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bias_diagnosis", REPO / "benchmarks" / "bias_diagnosis.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_odd_penalty_is_found_and_a_smooth_sweep_reads_zero(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.arange(100, 121)
    smooth = 1e-3 * sizes
    odd_slow = smooth * np.where(sizes % 2, 1.10, 1.0)
    found = script.parity(sizes, odd_slow)
    assert found["odd_sizes"] == 10  # 101 .. 119: both neighbours in the sweep
    assert found["odd_over_even_neighbours_pct"] == pytest.approx(10.0, abs=0.01)
    assert script.parity(sizes, smooth)["odd_over_even_neighbours_pct"] == pytest.approx(
        0, abs=1e-9
    )
    assert script.parity(np.arange(100, 140, 4), 1e-3 * np.arange(100, 140, 4)) == {}  # no odd p


def test_the_summary_carries_parity_and_the_table_shows_it(script) -> None:  # type: ignore[no-untyped-def]
    sizes = list(range(200, 211))
    first = [1e-3 * p * (1.2 if p % 2 else 1.0) for p in sizes]
    summary = script.sweep_summary(sizes, first, first, set())
    assert summary["odd_over_even_neighbours_pct"] == pytest.approx(20.0, abs=0.01)
    rows = script.table({"pe_repeatability": summary})
    assert any("odd p" in figure and "+20.00 %" in value for figure, value, _ in rows)


def test_knots_on_a_straight_pe_price_it_exactly_and_runs_split_at_gaps(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.array([*range(100, 141, 4), *range(200, 241, 4)])  # two runs, a gap between
    pe = 1e-3 + 2e-5 * sizes
    rows = {r["spacing_tokens"]: r for r in script.knot_spacing(sizes, pe, pe)["knot_spacing"]}
    assert set(rows) == {128, 64, 32, 16, 8}
    assert rows[8]["knots"] == 12  # 100, 108, ..., 140 and 200, ..., 240
    assert rows[8]["sizes_priced"] == 2 * 10  # 5 sizes between knots per run, both ways
    assert rows[128]["knots"] == 4  # each run's ends
    for row in rows.values():
        assert row["mape_pct"] == pytest.approx(0, abs=1e-9)
        assert row["share_off_by_more_pct"] == 0
    # a spacing that is no multiple of the sweep's is skipped, and so is one with no size between
    coarse = np.arange(100, 400, 16)
    spaced = script.knot_spacing(coarse, 1e-3 * coarse, 1e-3 * coarse)["knot_spacing"]
    assert [r["spacing_tokens"] for r in spaced] == [128, 64, 32]


def test_a_staircase_defeats_close_knots_and_the_table_says_so(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.arange(449, 1122, 4)
    stairs = 0.04 * 1.08 ** (sizes // 48)  # flat treads, a rise of 8 % every 48 tokens
    first, second = stairs, stairs * 1.001
    summary = script.sweep_summary(sizes.tolist(), first.tolist(), second.tolist(), set())
    rows = {r["spacing_tokens"]: r for r in summary["knot_spacing"]}
    # A line between knots that straddle a rise misses by up to half of it, however close.
    assert rows[8]["share_off_by_more_pct"] > 0
    assert 3 < abs(rows[8]["max_error_pct"]) < 8
    assert rows[128]["mape_pct"] > rows[8]["mape_pct"]
    table = script.table({"pe_repeatability": summary})
    assert any(
        figure.startswith("knots 8 tokens apart") and value.endswith("%")
        for figure, value, _ in table
    )


def test_a_gap_between_two_runs_is_no_step(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.array([*range(100, 141, 4), *range(300, 341, 4)])
    pe = 1e-3 * (1000 + sizes)  # 0.3-0.4 % a size within each run; 140 -> 300 is +14 %
    pe[sizes >= 324] *= 1.05  # a real step: 320 -> 324
    found = script.knot_interpolation(sizes, pe, {100, 140, 300, 340})
    assert [s["after_prompt_tokens"] for s in found["steps"]] == [320]
