"""The meter against a fake NVML on a fake clock: counters, integration, fallbacks, windows
and marks. Time moves only when a test moves it, so no figure depends on the machine's load."""

from __future__ import annotations

import pytest

from fake_nvml import FakeClock, FakeGpu, FakeNvml
from infermeter.meter import Meter

CLOCK = FakeClock()


def fake(gpus: list[FakeGpu], t0: float | None = None) -> FakeNvml:
    """A fake NVML on this module's clock (each test's readings start where the last left)."""
    return FakeNvml(gpus, t0, clock=CLOCK)


def busy(seconds: float) -> None:
    """Work for `seconds` of the fake clock (the meter's sampler ticks meanwhile)."""
    CLOCK.advance(seconds)


def test_counter_window_matches_constant_power() -> None:
    nvml = fake([FakeGpu(power=lambda t: 250.0), FakeGpu(power=lambda t: 150.0)])
    with Meter(interval_s=0.01, nvml=nvml, clock=CLOCK) as meter:
        meter.begin("w")
        busy(0.3)
        window = meter.end("w")
    assert window.method == "counter" and not window.short
    assert window.energy_j == pytest.approx([250 * window.seconds, 150 * window.seconds], rel=0.02)
    assert window.total_j == pytest.approx(400 * window.seconds, rel=0.02)
    assert window.integrated_j == pytest.approx(window.total_j, rel=0.03)
    assert window.sm_util == 90 and window.mem_util == 40
    assert meter.power_field_used == "instant"


def test_integrated_agrees_with_counter_on_varying_power() -> None:
    """Counter-based and integrated-sampled energy over the same window within 3%."""
    t0 = CLOCK.now()
    nvml = fake([FakeGpu(power=lambda t: 200.0 + 100.0 * min(1.0, (t - t0) / 0.3))], t0)
    with Meter(interval_s=0.005, nvml=nvml, clock=CLOCK) as meter:
        meter.begin("ramp")
        busy(0.5)
        window = meter.end("ramp")
    assert window.integrated_j == pytest.approx(window.total_j, rel=0.03)


def test_no_counter_falls_back_to_integration() -> None:
    nvml = fake([FakeGpu(power=lambda t: 100.0, has_counter=False, has_instant_field=False)])
    with Meter(interval_s=0.01, nvml=nvml, clock=CLOCK) as meter:
        assert meter.power_field_used == "usage"
        assert meter.note and "no energy counter" in meter.note
        meter.begin("w")
        busy(0.2)
        window = meter.end("w")
    assert window.method == "integrated"
    assert window.total_j == pytest.approx(100 * window.seconds, rel=0.05)


def test_without_nvml_windows_are_empty_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import infermeter.meter as meter_module

    monkeypatch.setattr(meter_module, "load_nvml", lambda: (None, "NVML unavailable (test)"))
    with Meter() as meter:
        assert not meter.available and "unavailable" in (meter.note or "")
        meter.begin("w")
        window = meter.end("w")
    assert window.energy_j is None and window.total_j is None and window.method == "none"
    assert meter.measure_idle(0.01) is None


def test_short_windows_are_flagged_and_marks_split_phases() -> None:
    nvml = fake([FakeGpu(power=lambda t: 300.0)])
    meter = Meter(interval_s=0.01, nvml=nvml, clock=CLOCK)
    meter.begin("q")
    busy(0.02)
    meter.mark("q", "prefill")
    busy(0.15)
    window = meter.end("q")
    assert window.short is False
    assert 0 < window.marks["prefill"] < window.total_j
    meter.begin("tiny")
    assert meter.end("tiny").short


def test_idle_power_and_above_idle_energy() -> None:
    nvml = fake([FakeGpu(power=lambda t: 80.0)])
    meter = Meter(interval_s=0.01, nvml=nvml, clock=CLOCK)
    assert meter.measure_idle(0.05) == pytest.approx(80.0)
    meter.begin("w")
    busy(0.2)
    window = meter.end("w")
    assert window.above_idle_j == pytest.approx(0.0, abs=2.0)


def test_window_misuse_and_bad_options() -> None:
    meter = Meter(nvml=fake([FakeGpu()]), clock=CLOCK)
    with pytest.raises(ValueError, match="never begun"):
        meter.end("x")
    meter.begin("x")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("x")
    with pytest.raises(ValueError, match="out of range"):
        Meter(gpus=[3], nvml=fake([FakeGpu()]))
    with pytest.raises(ValueError):
        Meter(interval_s=0, nvml=fake([FakeGpu()]))


def test_sampler_timeline() -> None:
    nvml = fake([FakeGpu(power=lambda t: 123.0)])
    with Meter(interval_s=0.01, nvml=nvml, clock=CLOCK) as meter:
        busy(0.1)
    timeline = meter.samples()
    assert len(timeline) >= 5 and (timeline.power_w == 123.0).all()
    assert list(timeline.columns) == ["t", "gpu", "power_w", "sm_util", "mem_util"]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from infermeter.meter import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus(2) == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert visible_gpus(1) == [0]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(2) == [0, 1]


def test_tick_alignment_recovers_windows_shorter_than_the_counter_step() -> None:
    """A counter that moves every 100 ms (as on an H100) still meters 150 ms windows within 3%."""
    import math

    t0 = CLOCK.now()
    gpu = FakeGpu(power=lambda t: 300.0 + 100.0 * math.sin(20 * (t - t0)), counter_step_s=0.1)
    nvml = fake([gpu], t0)
    aligned = Meter(interval_s=0.01, nvml=nvml, clock=CLOCK)
    naive = Meter(interval_s=0.01, nvml=nvml, align_ticks=False, clock=CLOCK)
    aligned_errors, naive_errors = [], []
    for _ in range(4):
        for meter, errors in ((aligned, aligned_errors), (naive, naive_errors)):
            meter.begin("w")
            busy(0.15)
            window = meter.end("w")
            truth = nvml.energy_between(gpu, window.start, window.end)
            errors.append(abs(window.total_j - truth) / truth)
    assert max(aligned_errors) < 0.03
    # What plain readings at the edges get: off by a share of a step each time.
    assert sum(naive_errors) > 3 * sum(aligned_errors)
