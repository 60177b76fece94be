"""A metered profile measures again the points its neighbours contradict
(infermeter.experiments.second_look)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fake_nvml import FakeClock, FakeGpu, FakeNvml
from infermeter.backends.base import Measurement, Point
from infermeter.backends.hf import HFBackend
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.experiments.second_look import suspects
from infermeter.measure.meter import Meter
from infermeter.model.fit import FitPolicy
from infermeter.model.fitted import fit_run
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store

CURVES = (1, 737, 1505)
OUTPUTS = (1, 2, 4, 8, 32)
KNOTS = (97, 225, 353, 481, 609, 865, 993, 1121, 1249, 1377, 1633)


def runtime_s(p: int, o: int) -> float:
    """A stack like LLaMA-7B on an H200: PE, then ~4 ms per decode step."""
    return 0.005 + 2.2e-5 * p + (o - 1) * (0.004 + 1e-7 * p)


def grid_points(slow: dict[tuple[int, int], float] | None = None, trials: int = 3) -> pd.DataFrame:
    slow = slow or {}
    shapes = [(p, o) for p in CURVES for o in OUTPUTS] + [(p, 1) for p in KNOTS]
    rows = [
        (p, o, 1, t, runtime_s(p, o) * slow.get((p, o), 1.0), "ok")
        for p, o in shapes
        for t in range(trials)
    ]
    return pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "batch_size", "trial",
                                       "runtime_s", "status"])  # fmt: skip


def test_a_clean_grid_needs_no_second_look() -> None:
    assert suspects(grid_points(), CURVES, 3) == []


def test_a_slow_prefill_under_a_curve_is_measured_again_with_its_first_decode_length() -> None:
    """PE(737) 7% slow (19.2 ms for 18.0, as an H200 at its power limit gave): the curve's
    first decode step came out at 2.6 ms against 4 ms for later ones."""
    found = suspects(grid_points({(737, 1): 1.07}), CURVES, 3)
    assert found == [Point(737, 1, 1, 0), Point(737, 2, 1, 0)]


def test_a_knot_above_its_neighbours_line_is_measured_again() -> None:
    assert suspects(grid_points({(993, 1): 1.06}), CURVES, 3) == [Point(993, 1, 1, 0)]
    # Within the prefill time's own roughness: left alone.
    assert suspects(grid_points({(993, 1): 1.02}), CURVES, 3) == []


def test_a_point_measured_again_is_never_suspected_twice() -> None:
    points = grid_points({(737, 1): 1.07, (993, 1): 1.06})
    again = points[points.prompt_tokens.isin([737, 993]) & (points.trial < 3)].copy()
    again["trial"] += 3
    assert suspects(pd.concat([points, again]), CURVES, 3) == []


class Scripted(HFBackend):
    """The hf backend on a tiny model whose runtimes follow `runtime_s` scaled down to its
    context, with the first `slow_calls` calls of each `slow` shape 8% slow (a power-capped
    clock); each call takes its runtime of the fake clock the meter reads."""

    def __init__(self, clock: FakeClock, slow: list[tuple[int, int]], slow_calls: int) -> None:
        super().__init__(device="cpu")
        self.clock, self.slow_left = clock, dict.fromkeys(slow, slow_calls)

    def measure(self, point: Point, window: Any = None) -> Measurement:
        measured = super().measure(point, window)
        seconds = runtime_s(point.prompt_tokens * 8, point.output_tokens)
        shape = (point.prompt_tokens, point.output_tokens)
        if self.slow_left.get(shape, 0) > 0:
            self.slow_left[shape] -= 1
            seconds *= 1.08
        measured.runtime_s = seconds
        self.clock.advance(seconds)
        return measured


def test_a_metered_profile_prices_the_second_look_not_the_slow_first(tmp_path: Path) -> None:
    clock = FakeClock()
    meter = Meter(interval_s=0.01, nvml=FakeNvml([FakeGpu()], clock=clock), clock=clock)
    # Curves at p = 1, 92, 188 (x8: 1, 737, 1505 of the stack), a head curve at 44 (353),
    # knots between; the o = 1 points under the curve at 92 and the head curve slow.
    grid = ProfileGrid((1, 92, 188), (1, 2, 4, 8), (1,), 3, (12, 28, 60, 76, 108, 124), (44,))
    backend = Scripted(clock, slow=[(92, 1), (44, 1)], slow_calls=4)  # pre-roll, 3 trials
    told = {"total": 0, "points": 0}

    def started(run: Any, done: int, total: int) -> None:
        told["total"] = total

    def more(trials: int) -> None:
        told["total"] += trials

    def measured(point: Any, measurement: Any) -> None:
        told["points"] += 1

    with Store(tmp_path / "s.sqlite") as store:
        run = run_profile(
            store, get_spec("tiny-llama"), {}, backend, {}, grid, on_start=started,
            on_point=measured, meter=meter, min_energy_window_s=0.05, second_look=True,
            on_more=more,
        )  # fmt: skip
        points = store.points(run.id)
        runtime = next(m for m in fit_run(store, run.id, FitPolicy()) if m.quantity == "runtime_s")
    again = points[points.trial >= 3]
    assert sorted({(r.prompt_tokens, r.output_tokens) for r in again.itertuples()}) == [
        (44, 1),
        (44, 2),
        (92, 1),
        (92, 2),
    ]
    assert run.backend_info["second_look"] == ["p=92 o=1", "p=92 o=2", "p=44 o=1", "p=44 o=2"]
    # The progress said the total it then reached (was 3 trials per looked point short).
    assert told["points"] == told["total"] == len(points)
    assert runtime.prompt_encoding_at(92) == pytest.approx(runtime_s(92 * 8, 1))  # the fast one
    # Resumed, the profile has nothing left to look at twice.
    with Store(tmp_path / "s.sqlite") as store:
        again_run = run_profile(
            store, get_spec("tiny-llama"), {}, Scripted(clock, [(92, 1)], 0), {}, grid,
            meter=meter, min_energy_window_s=0.05, second_look=True,
        )  # fmt: skip
        assert len(store.points(again_run.id)) == len(points)
