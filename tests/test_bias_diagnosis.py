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
