"""Energy under tensor parallelism: the real engine over two gloo ranks (CPU), metered on two
fake GPUs. A metered profile gets energy on both GPUs for every point; an energy window handed
to the engine's generate is opened and closed by its ranks, around exactly their timed work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_nvml import FakeClock, FakeGpu, FakeNvml
from infermeter.backends.base import Measurement, Point
from infermeter.backends.engine import EngineBackend
from infermeter.experiments.energy import generate_batch
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.measure.meter import Meter
from infermeter.model.fit import fit_cost_model
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store

SPEC = get_spec("tiny-llama")
WATTS = (300.0, 200.0)  # the two ranks' GPUs


class ClockedEngine(EngineBackend):
    """The real engine on two CPU ranks; each call takes 10 ms + 2 ms per new token of the
    fake clock, whatever it took on this machine."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(device="cpu", tp=2, timeout_s=120)
        self.clock = clock

    def measure(self, point: Point, window: Any = None) -> Measurement:
        measured = super().measure(point, window)
        self.clock.advance(0.01 + 0.002 * point.output_tokens)
        return measured


@pytest.mark.slow
def test_a_tp2_metered_profile_stores_energy_on_both_gpus(tmp_path: Path) -> None:
    clock = FakeClock()
    gpus = [FakeGpu(power=lambda t, w=w: w) for w in WATTS]
    meter = Meter(interval_s=0.005, nvml=FakeNvml(gpus, clock=clock), clock=clock)
    grid = ProfileGrid((1, 8), (1, 4), (1,), 2)
    with Store(tmp_path / "s.sqlite") as store:
        run = run_profile(
            store, SPEC, {}, ClockedEngine(clock), {"tp": 2}, grid, meter=meter,
            min_energy_window_s=0.05,
        )  # fmt: skip
        points = store.points(run.id)
    assert run.status == "complete" and len(points) == 8
    assert points.energy_j.notna().all() and (points.energy_j > 0).all()
    extra = points.extra_json.map(json.loads)
    per_gpu = np.array(extra.map(lambda e: e["energy_per_gpu_j"]).tolist())
    assert per_gpu.shape == (8, 2)
    assert per_gpu[:, 0] / per_gpu[:, 1] == pytest.approx([1.5] * 8, rel=0.02)
    window_s = extra.map(lambda e: e["energy_window_s"])
    runs = extra.map(lambda e: e["energy_window_runs"])
    assert np.allclose(points.energy_j, sum(WATTS) * window_s / runs, rtol=0.02)
    assert [g["nvml_index"] for g in run.backend_info["meter"]["gpus"]] == [0, 1]
    assert extra.map(lambda e: e["tp"]).eq(2).all()
    energy = fit_cost_model(points, quantity="energy_j")
    assert energy.per_output_token > 0


@pytest.mark.slow
def test_the_ranks_bracket_exactly_their_timed_generation() -> None:
    """A window given to generate() with tp = 2 opens once the ranks are ready and closes
    when both are done: inside the call (its first-visit warm-up stays out), around the
    timed generation, summed over both GPUs."""
    gpus = [FakeGpu(power=lambda t, w=w: w) for w in WATTS]
    meter = Meter(interval_s=0.01, nvml=FakeNvml(gpus))  # real time: the ranks' own
    edges: list[str] = []
    begin, end = meter.begin, meter.end
    meter.begin = lambda name, sync=None: (edges.append("begin"), begin(name, sync))[1]  # type: ignore[method-assign]
    meter.end = lambda name, sync=None: (edges.append("end"), end(name, sync))[1]  # type: ignore[method-assign]
    backend = EngineBackend(device="cpu", tp=2, timeout_s=120, sampling="top_p")
    backend.prepare(SPEC)
    try:
        with meter:
            prompts = [[1, 5, 9, 13, 2], [7, 3]]
            generation, window, wall = generate_batch(backend, prompts, 12, (), 0, meter)
            again, second, _ = generate_batch(backend, prompts, 12, (), 0, meter)
    finally:
        backend.close()
    assert edges == ["begin", "end", "begin", "end"]
    assert window is not None and second is not None
    assert len(window.energy_j or []) == 2 and window.method == "counter"
    assert window.energy_j == pytest.approx([w * window.seconds for w in WATTS], rel=0.05)
    # Within the call, around the timed work: the first call's warm-up is outside it.
    assert generation.runtime_s <= window.seconds < wall
    assert again.tokens == generation.tokens  # the same seed, the same answer
