"""The conversions are exact inverses where they should be, and use the documented constants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter import units

finite = st.floats(-1e12, 1e12, allow_nan=False)


@given(finite)
def test_round_trips(x: float) -> None:
    assert units.ms_to_s(units.s_to_ms(x)) == pytest.approx(x, rel=1e-12, abs=1e-12)
    per_second = units.per_hour_to_per_second(x)
    assert units.per_second_to_per_hour(per_second) == pytest.approx(x, rel=1e-12)


def test_constants_match_their_sources() -> None:
    assert units.mj_to_j(1500) == 1.5  # NVML total energy is in mJ
    assert units.mw_to_w(350_000) == 350.0  # NVML power in mW
    assert units.w_to_mw(249.9996) == 250_000 and isinstance(units.w_to_mw(1.0), int)
    assert units.j_to_wh(7200) == 2.0
    assert units.per_hour_to_per_second(3.6) == 0.001
    assert units.to_gib(3 * 2**30) == 3.0 and units.to_giga(7e9) == 7.0
    assert units.to_tera(989e12) == 989.0 and units.to_mega(2e6) == 2.0
    assert units.to_pct(0.0125) == 1.25
    assert list(units.to_pct(np.array([0.5, -0.02]))) == [50.0, -2.0]
    assert units.kib_to_bytes(16) == 16_384  # /proc/meminfo's kB are KiB


@given(st.lists(st.text("abcxyz", min_size=1, max_size=5), max_size=6))
def test_one_of_lists_values_as_a_person_does(values: list[str]) -> None:
    """Every value once, in order, no Python repr: "a, b or c"."""
    text = units.one_of(values)
    assert "[" not in text and "'" not in text
    if len(values) >= 2:
        assert text == ", ".join(values[:-1]) + " or " + values[-1]
    else:
        assert text == "".join(values)
    assert units.one_of(["a", "b", "c"], "and") == "a, b and c"
