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


def test_knots_read_from_one_sweep_price_the_other_at_every_placement(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.array([*range(100, 141, 4), *range(200, 241, 4)])  # two stretches, a gap between
    first = 1e-3 + 2e-5 * sizes  # a straight PE ...
    second = 1.02 * first  # ... that the second sweep read 2 % higher everywhere
    rows = {
        r["spacing_tokens"]: r for r in script.knot_spacing(sizes, first, second)["knot_spacing"]
    }
    assert set(rows) == {32, 16, 8}  # 64 and 128 leave no size between two knots of a stretch
    eight = rows[8]
    assert eight["placements"] == 2  # knots on p = 4 mod 8 (100, 108, ...) or 0 mod 8 (104, ...)
    assert eight["sizes_between"] == 18  # 104 .. 136 and 204 .. 236: each stretch but its ends
    # first's knots against second: -1.96 %; second's against first: +2 %; never their own sweep
    assert eight["max_error_pct"] == pytest.approx(2.0, abs=1e-6)
    assert eight["mape_pct"] == pytest.approx((2.0 + 100 * (1 / 1.02 - 1) * -1) / 2, abs=1e-6)
    assert eight["share_off_by_more_pct"] == 0  # 2 % is within 3 %
    rows = script.knot_spacing(sizes, first, 1.05 * first)["knot_spacing"]
    assert all(r["share_off_by_more_pct"] == 100 for r in rows)
    assert all(r["max_error_pct"] == pytest.approx(5.0, abs=1e-6) for r in rows)  # signed: + high
    bumped = first.copy()
    bumped[sizes == 120] *= 1.10  # the second sweep read 120 10 % slow: priced 9.1 % low there
    rows = {
        r["spacing_tokens"]: r for r in script.knot_spacing(sizes, first, bumped)["knot_spacing"]
    }
    assert rows[8]["max_error_pct"] == pytest.approx(100 * (1 / 1.1 - 1), abs=1e-6)  # signed
    # spacings the sweep's spacing does not divide are skipped: none of 128 .. 8 at 12 apart
    twelve = np.arange(100, 400, 12)
    assert script.knot_spacing(twelve, 1e-3 * twelve, 1e-3 * twelve) == {}


def test_stretches_split_at_gaps_only(script) -> None:  # type: ignore[no-untyped-def]
    def ends(sizes: np.ndarray) -> list[tuple[int, int]]:
        return [(int(sizes[r[0]]), int(sizes[r[-1]])) for r in script._segments(sizes)]

    assert ends(np.array([0, 4, 8, 16, 24, 32])) == [(0, 32)]
    lone = np.array([*range(449, 642, 4), 700, *range(737, 1122, 4)])  # a size between gaps
    assert ends(lone) == [(449, 641), (737, 1121)]
    coarser = np.array([*range(449, 642, 4), *range(737, 1122, 16)])  # the coarser range kept
    assert ends(coarser) == [(449, 641), (737, 1121)]
    assert ends(np.array([*range(449, 642, 4), *range(645, 1122, 12)])) == [(449, 1113)]
    cluster = np.unique([*range(449, 642, 16), 511, 512, 513])
    assert ends(cluster) == [(449, 641)]  # 497 -> 511 and 513 -> 529 are neighbours, no gap
    assert ends(np.array([100, 104, 108, 300])) == [(100, 108)]
    assert script._segments(np.array([5])) == []


def test_each_placement_of_the_knots_has_its_share(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.array([*range(100, 197, 4), *range(304, 401, 4)])  # two stretches
    first = 1e-3 * (1000 + sizes)
    second = first.copy()
    second[sizes == 120] *= 1.10  # one size the second sweep read 10 % slow
    (eight,) = [
        r for r in script.knot_spacing(sizes, first, second)["knot_spacing"]
        if r["spacing_tokens"] == 8
    ]  # fmt: skip
    # Knots on p = 4 mod 8 (100, 108, ... and 308, 316, ...): 120 between them, priced 9.1 %
    # low from the first sweep's knots: 1 of (12 + 11) sizes x 2 ways off. Knots on 0 mod 8
    # (104, 112, 120, ... and 304, 312, ...): the second sweep's knot at 120 lifts its lines at
    # 116 and 124 about 5 %: 2 of (11 + 12) x 2 off.
    assert eight["placements"] == 2
    assert eight["share_least_pct"] == pytest.approx(100 / 46)
    assert eight["share_most_pct"] == pytest.approx(200 / 46)
    assert eight["share_off_by_more_pct"] == pytest.approx(300 / 92)
    uneven = np.array([100, 104, 112, 116, 124, 128, 136])  # one stretch, spaced 4 and 8
    assert script.knot_spacing(uneven, 1e-3 * uneven, 1e-3 * uneven) == {}


def test_a_staircase_defeats_close_knots_and_the_table_says_so(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.arange(449, 1122, 4)
    stairs = 0.04 * 1.08 ** (sizes // 48)  # flat treads, a rise of 8 % every 48 tokens
    summary = script.sweep_summary(sizes.tolist(), stairs.tolist(), stairs.tolist(), set())
    rows = {r["spacing_tokens"]: r for r in summary["knot_spacing"]}
    # A line between knots that straddle a rise misses by up to nearly all of it, and by half at
    # the midpoint between knots 8 apart (the only size between them in a sweep 4 apart).
    assert rows[8]["max_error_pct"] == pytest.approx(4.0, abs=0.01)
    assert 4.0 < abs(rows[32]["max_error_pct"]) < 8.0
    assert (
        rows[8]["share_least_pct"] < rows[8]["share_off_by_more_pct"] <= rows[8]["share_most_pct"]
    )
    assert 0 < rows[8]["share_off_by_more_pct"] < 100
    table = script.table({"pe_repeatability": summary})
    assert any(
        figure.startswith("knots 8 tokens apart, at each of 2 placements (p mod 8")
        and value.endswith("%)")
        for figure, value, _ in table
    )


def test_a_gap_between_two_runs_is_no_step(script) -> None:  # type: ignore[no-untyped-def]
    sizes = np.array([*range(100, 141, 4), 200, *range(300, 341, 4)])
    pe = 1e-3 * (1000 + sizes)  # 0.3-0.4 % a size within each stretch; 140 -> 200 -> 300 is more
    pe[sizes >= 324] *= 1.05  # a real step: 320 -> 324
    found = script.knot_interpolation(sizes, pe, {100, 140, 300, 340})
    assert [s["after_prompt_tokens"] for s in found["steps"]] == [320]
