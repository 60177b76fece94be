"""The meter against a fake NVML on a fake clock: counters, integration, fallbacks, windows
and marks. Time moves only when a test moves it, so no figure depends on the machine's load."""

from __future__ import annotations

import threading

import pytest

from fake_nvml import NVML_ERROR_NOT_SUPPORTED, FakeClock, FakeGpu, FakeNvml, NVMLError
from infermeter.measure.meter import Meter

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
    import infermeter.measure.meter as meter_module

    monkeypatch.setattr(meter_module, "load_nvml", lambda: (None, "NVML unavailable (test)"))
    with Meter() as meter:
        assert not meter.available and "unavailable" in (meter.note or "")
        meter.begin("w")
        window = meter.end("w")
    assert window.energy_j is None and window.total_j is None and window.method == "none"
    assert meter.measure_idle(0.01) is None


def test_short_windows_are_flagged() -> None:
    nvml = fake([FakeGpu(power=lambda t: 300.0)])
    meter = Meter(interval_s=0.01, nvml=nvml, clock=CLOCK)
    meter.begin("q")
    busy(0.17)
    window = meter.end("q")
    assert window.short is False
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


def test_window_edges_take_off_idle_power_not_the_lagging_instant_field() -> None:
    """As on an H200 (benchmarks/edge_diagnosis.py): the counter steps every 100 ms and is
    exact, the POWER_INSTANT field lags it by 80 ms. After synchronised work the GPU rests,
    so a window closed before the counter's next step takes off idle power for the wait;
    taking off the lagging field's reading put 1 s windows several percent low."""
    t0 = CLOCK.now()
    work: list[float] = []  # [start, end] of the one burst of work

    def power(t: float) -> float:
        return 650.0 if len(work) == 2 and work[0] <= t < work[1] else 125.0

    gpu = FakeGpu(power=power, counter_step_s=0.1, instant_lag_s=0.08)
    nvml = fake([gpu], t0)
    errors = {}
    for idle_known in (True, False):
        work.clear()
        meter = Meter(interval_s=0.01, nvml=nvml, clock=CLOCK)
        if idle_known:
            assert meter.measure_idle(0.5) == pytest.approx(125.0)
        busy(0.037)  # the window opens at no particular phase of the counter
        meter.begin("w")
        work[:] = [CLOCK.now(), CLOCK.now() + 1.0]
        busy(1.0)
        window = meter.end("w")
        truth = nvml.energy_between(gpu, window.start, window.end)
        errors[idle_known] = window.total_j / truth - 1
    assert abs(errors[True]) < 0.005
    assert errors[False] < -0.01  # what the lagging field costs: the test can fail


def test_a_window_records_the_cards_state_as_the_work_ended() -> None:
    """The hottest GPU's temperature and the slowest SM clock: what sets a power-capped
    card's speed and joules. A GPU without either sensor leaves it out."""
    nvml = fake([FakeGpu(temperature_c=61, sm_clock_mhz=1650), FakeGpu(temperature_c=48)])
    with Meter(interval_s=0.01, nvml=nvml, clock=CLOCK) as meter:
        meter.begin("w")
        busy(0.2)
        window = meter.end("w")
    assert window.temperature_c == 61 and window.sm_clock_mhz == 1650
    extra = window.as_extra()
    assert extra["gpu_temperature_c"] == 61 and extra["sm_clock_mhz"] == 1650
    blind = fake([FakeGpu(temperature_c=None, sm_clock_mhz=None)])
    with Meter(interval_s=0.01, nvml=blind, clock=CLOCK) as meter:
        meter.begin("w")
        busy(0.2)
        window = meter.end("w")
    assert window.temperature_c is None and window.sm_clock_mhz is None
    assert window.total_j is not None


# ---- every sensor optional, on its own ------------------------------------------------------


def test_no_power_reading_leaves_the_counter_and_utilisation_working() -> None:
    """nvmlDeviceGetPowerUsage NotSupported (and no power field): the counter still meters,
    the sampler keeps utilisation, idle power is unknown; nothing raises."""
    gpu = FakeGpu(power=lambda t: 200.0, has_power=False, has_instant_field=False)
    with Meter(interval_s=0.01, nvml=fake([gpu]), clock=CLOCK) as meter:
        assert meter.power_field_used == "none" and meter.energy_method == "counter"
        assert "no power reading on this GPU" in (meter.note or "")  # the user is told
        assert meter.measure_idle(0.05) is None
        meter.begin("w")
        busy(0.3)
        window = meter.end("w")
    assert window.method == "counter" and window.integrated_j is None
    assert window.total_j == pytest.approx(200 * window.seconds, rel=0.02)
    assert window.sm_util == 90 and meter.read_errors == 0


def test_no_utilisation_leaves_energy_whole() -> None:
    gpu = FakeGpu(power=lambda t: 200.0, has_utilization=False)
    with Meter(interval_s=0.01, nvml=fake([gpu]), clock=CLOCK) as meter:
        meter.begin("w")
        busy(0.2)
        window = meter.end("w")
    assert window.method == "counter" and window.sm_util is None and window.mem_util is None
    assert window.integrated_j == pytest.approx(window.total_j, rel=0.03)
    assert "no utilisation reading" in (meter.note or "")


def test_no_sensor_at_all_is_runtime_only_with_a_note() -> None:
    gpu = FakeGpu(has_power=False, has_instant_field=False, has_counter=False)
    gpu.has_utilization = False
    with Meter(interval_s=0.01, nvml=fake([gpu]), clock=CLOCK) as meter:
        assert meter.available and not meter.measures_energy
        assert meter.energy_method == "none" and "runtime only" in (meter.note or "")
        meter.begin("w")
        busy(0.1)
        window = meter.end("w")
    assert window.method == "none" and window.energy_j is None and window.mean_power_w is None
    assert meter.describe()["energy_method"] == "none"


class FailingLater(FakeNvml):
    """An NVML whose readings start failing mid-run (a GPU fallen off the bus)."""

    def __init__(self, gpus: list[FakeGpu], fail_after: int, clock: FakeClock | None) -> None:
        super().__init__(gpus, clock=clock)
        self.left, self.failed = fail_after, threading.Event()

    def _maybe_fail(self) -> None:
        self.left -= 1
        if self.left < 0:
            self.failed.set()
            raise NVMLError(15)  # NVML_ERROR_GPU_IS_LOST

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._maybe_fail()
        return super().nvmlDeviceGetPowerUsage(gpu)

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        self._maybe_fail()
        return super().nvmlDeviceGetTotalEnergyConsumption(gpu)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu):  # type: ignore[no-untyped-def]
        self._maybe_fail()
        return super().nvmlDeviceGetUtilizationRates(gpu)


def test_readings_that_fail_mid_window_degrade_the_window_and_never_raise() -> None:
    gpu = FakeGpu(power=lambda t: 300.0, has_instant_field=False)
    nvml = FailingLater([gpu], fail_after=10**9, clock=CLOCK)
    with Meter(interval_s=0.01, nvml=nvml, clock=CLOCK) as meter:
        meter.begin("w")
        busy(0.2)
        nvml.left = 0  # from here every reading fails: at the closing edge too
        busy(0.05)
        window = meter.end("w")
        busy(0.05)  # the sampler goes on ticking through failures
    # The counter failed at the edge: the samples taken before the failure integrate.
    assert window.method == "integrated" and meter.read_errors > 0
    assert window.total_j == pytest.approx(300 * window.seconds, rel=0.05)


def test_no_nvml_exception_leaves_the_sampler_thread() -> None:
    """On the system clock the sampler is a thread: a reading that raises mid-run is
    skipped there, and the thread never dies of it (threading.excepthook is never called)."""
    nvml = FailingLater([FakeGpu(has_instant_field=False)], fail_after=20, clock=None)
    escaped: list[object] = []
    previous = threading.excepthook
    threading.excepthook = escaped.append
    try:
        with Meter(interval_s=0.001, nvml=nvml) as meter:
            assert nvml.failed.wait(timeout=60), "the sampler never reached the failure"
            meter.begin("w")
            window = meter.end("w")
    finally:
        threading.excepthook = previous
    assert escaped == [] and window.method != "counter" and meter.read_errors > 0


def test_power_field_falls_back_per_sensor() -> None:
    """No instant field: the plain reading; a counter that raises at set-up: integration."""
    gpus = [FakeGpu(has_instant_field=False), FakeGpu(has_counter=False)]
    meter = Meter(interval_s=0.01, nvml=fake(gpus), clock=CLOCK)
    assert meter.power_field_used == "usage" and meter.energy_method == "integrated"
    with pytest.raises(NVMLError) as raised:  # what the fake raises, as pynvml does
        meter._nvml.nvmlDeviceGetTotalEnergyConsumption(gpus[1])
    assert raised.value.value == NVML_ERROR_NOT_SUPPORTED


# ---- bounded memory ---------------------------------------------------------------------------


@pytest.mark.parametrize("drained", [True, False])
def test_ten_thousand_windows_keep_the_samples_held_flat(drained: bool) -> None:
    """A sweep of 10,000 windows holds as many samples at its end as early on: those of the
    open window, the last keep_s seconds, and (when the store drains) the undrained."""
    gpus = [FakeGpu(power=lambda t: 300.0, energy=lambda a, b: 300.0 * (b - a)) for _ in range(2)]
    meter = Meter(interval_s=0.01, nvml=fake(gpus), clock=CLOCK, keep_s=1.0)
    held: list[int] = []
    drained_rows = 0
    with meter:
        for n in range(10_000):
            meter.begin("w")
            busy(0.02)
            window = meter.end("w")
            held.append(meter.samples_held)
            if drained and n % 10 == 9:
                drained_rows += len(meter.drain())
    assert window.total_j == pytest.approx(600 * window.seconds, rel=0.02)
    # 2 GPUs at 100 Hz plus a sample at each window's end: about keep_s = 1 s of them at
    # most, against the 2 × 10,000 × 3 taken.
    assert max(held) <= 2 * 1.0 * (100 + 1 / 0.02)
    assert max(held[-1000:]) <= max(held[1000:2000]) + 4
    if drained:  # every sample reached the store once
        assert drained_rows + len(meter.drain()) >= 2 * 10_000 * 0.02 / 0.01
