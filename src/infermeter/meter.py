"""GPU energy, power and utilisation, the way Zeus measures: begin a window, end a window.

Energy comes from NVML's total-energy counter (millijoules since the driver loaded), read per
GPU at both edges of a window and summed over the GPUs of a run. A background thread samples
power and SM / memory utilisation (default every 100 ms) for timelines and, where the counter
is missing, for energy by integrating power over time. On recent GPUs the plain power reading
is a one-second average, so the sampler asks for the instantaneous power field where the
driver has it and records which field it used.

Written on nvidia-ml-py directly rather than on Zeus: infermeter needs utilisation samples
beside power, a choice of power field, a window that reports both the counter and the
integrated figure (to check one against the other), and an NVML seam that tests replace with
a fake; Zeus's monitors cover the first window API but not these. Without NVML (no GPU, no
driver, no permission) a Meter is inert: windows come back empty, with one note saying why.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from infermeter.errors import UserError

# NVML field ids (nvml.h): instantaneous and averaged board power, in milliwatts.
FI_DEV_POWER_AVERAGE = 185
FI_DEV_POWER_INSTANT = 186
# The energy counter moves in steps; windows shorter than this cannot be read from it.
COUNTER_UPDATE_PERIOD_S = 0.1


class Clock(Protocol):
    """Where a Meter reads time and how it schedules its sampler.

    The system clock in use; a fake one in tests, so that what is timed (windows, warm-ups,
    sampling) does not depend on how busy the machine is.
    """

    def now(self) -> float:
        """Seconds on a monotonic clock (time.perf_counter's scale for the system clock)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass."""
        ...

    def every(self, interval_s: float, tick: Callable[[], None]) -> Callable[[], None]:
        """Call `tick` every `interval_s` until the returned function is called."""
        ...


class SystemClock:
    """time.perf_counter, time.sleep and a daemon thread for the sampler."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def every(self, interval_s: float, tick: Callable[[], None]) -> Callable[[], None]:
        stop = threading.Event()

        def run() -> None:
            next_at = time.perf_counter()
            while not stop.is_set():
                tick()
                next_at += interval_s
                stop.wait(max(0.0, next_at - time.perf_counter()))

        thread = threading.Thread(target=run, name="infermeter-meter", daemon=True)
        thread.start()

        def cancel() -> None:
            stop.set()
            thread.join(timeout=5 * interval_s + 1)

        return cancel


def visible_gpus(count: int) -> list[int]:
    """NVML indices of the first `count` GPUs CUDA sees (NVML ignores CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        try:
            indices = [int(part) for part in visible.split(",") if part.strip()]
        except ValueError:  # UUIDs or MIG names: assume the natural order
            return list(range(count))
        return indices[:count]
    return list(range(count))


def load_nvml() -> tuple[Any | None, str | None]:
    """The initialised pynvml module, or None and the reason it cannot be used."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py): no energy data"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses: no driver, no GPU, no permission
        return None, f"NVML unavailable ({exc}): no energy data"
    return pynvml, None


@dataclass
class PowerSample:
    t: float  # time.perf_counter()
    gpu: int
    power_w: float
    sm_util: float | None
    mem_util: float | None


@dataclass
class EnergyWindow:
    """Energy of one window, per GPU and in total, with the integrated power beside it."""

    name: str
    start: float
    end: float
    energy_j: list[float] | None  # per GPU, from the counter (or integrated, see method)
    method: str  # "counter", "integrated" or "none"
    integrated_j: float | None  # ∫ sampled power dt over the same window, all GPUs
    idle_w: float | None  # summed idle power measured before the run
    mean_power_w: float | None
    sm_util: float | None
    mem_util: float | None
    short: bool  # shorter than the counter's update period: trust it less
    marks: dict[str, float] = field(default_factory=dict)  # energy (J) up to each mark

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def total_j(self) -> float | None:
        return float(sum(self.energy_j)) if self.energy_j is not None else None

    @property
    def above_idle_j(self) -> float | None:
        if self.total_j is None or self.idle_w is None:
            return None
        return self.total_j - self.idle_w * self.seconds

    def as_extra(self) -> dict[str, Any]:
        """The fields a Measurement's `extra` keeps, for the store."""
        return {
            "energy_method": self.method,
            "energy_window_s": self.seconds,
            "energy_per_gpu_j": self.energy_j,
            "energy_integrated_j": self.integrated_j,
            "energy_above_idle_j": self.above_idle_j,
            "idle_w": self.idle_w,
            "mean_power_w": self.mean_power_w,
            "sm_util": self.sm_util,
            "mem_util": self.mem_util,
            "energy_window_short": self.short,
            "energy_marks_j": self.marks or None,
        }


class Meter:
    """Energy windows and power/utilisation timelines for a set of GPUs."""

    def __init__(
        self,
        gpus: Sequence[int] | None = None,
        interval_s: float = 0.1,
        nvml: Any | None = None,
        power_field: str = "auto",
        align_ticks: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if power_field not in ("auto", "instant", "average"):
            raise ValueError("power_field must be auto, instant or average")
        self.interval_s = interval_s
        self.align_ticks = align_ticks
        self.clock: Clock = clock or SystemClock()
        self.note: str | None = None
        self._nvml, self.note = (nvml, None) if nvml is not None else load_nvml()
        self._handles: list[Any] = []
        self.gpus: list[int] = []
        self.counter_supported = False
        self.power_field_used = "none"
        self.idle_w: float | None = None
        self._samples: list[PowerSample] = []
        self._lock = threading.Lock()
        self._cancel_sampler: Callable[[], None] | None = None
        self._open: dict[str, tuple[float, list[float] | None, dict[str, float]]] = {}
        if self._nvml is not None:
            self._setup(gpus, power_field)

    # ---- set-up --------------------------------------------------------------------------
    def _setup(self, gpus: Sequence[int] | None, power_field: str) -> None:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        self.gpus = list(gpus) if gpus is not None else list(range(count))
        bad = [g for g in self.gpus if not 0 <= g < count]
        if bad:
            raise ValueError(f"GPU index {bad[0]} out of range (this machine has {count})")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(g) for g in self.gpus]
        try:
            for handle in self._handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.counter_supported = bool(self._handles)
        except Exception:
            self.counter_supported = False
            self.note = "this GPU has no energy counter: energy integrates sampled power"
        self.power_field_used = self._choose_power_field(power_field)

    def _choose_power_field(self, wanted: str) -> str:
        if not self._handles:
            return "none"
        if wanted in ("auto", "instant") and self._field_power(FI_DEV_POWER_INSTANT) is not None:
            return "instant"
        if wanted == "average" and self._field_power(FI_DEV_POWER_AVERAGE) is not None:
            return "average"
        return "usage"  # nvmlDeviceGetPowerUsage: a 1 s average on recent GPUs

    def _field_power(self, field_id: int, handle: Any = None) -> float | None:
        try:
            value = self._nvml.nvmlDeviceGetFieldValues(handle or self._handles[0], [field_id])[0]
        except Exception:
            return None
        if getattr(value, "nvmlReturn", 1) != 0:
            return None
        return float(value.value.uiVal) / 1000.0

    @property
    def available(self) -> bool:
        return bool(self._handles)

    # ---- readings ------------------------------------------------------------------------
    def _power_w(self, handle: Any) -> float:
        if self.power_field_used == "instant":
            watts = self._field_power(FI_DEV_POWER_INSTANT, handle)
        elif self.power_field_used == "average":
            watts = self._field_power(FI_DEV_POWER_AVERAGE, handle)
        else:
            watts = None
        return watts if watts is not None else self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0

    def _counters_j(self) -> list[float] | None:
        if not self.counter_supported:
            return None
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0 for h in self._handles]

    @property
    def _aligned(self) -> bool:
        return self.align_ticks and self.counter_supported

    def _tick_counters(self, at_begin: bool) -> tuple[list[float], float]:
        """Counters (J) exact at one moment, returned with it, though they move in steps.

        Polls each GPU until its counter steps (at most one update period), then moves the
        reading from the step's time to now with the instantaneous power polled meanwhile:
        forward at a window's start, backward at its end. The correction spans one period
        at most, so its error is a small share of the window's energy even when the step is
        ~100 ms and the window is not much longer.
        """
        now = self.clock.now()
        readings = []
        read = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        for handle in self._handles:
            before = self.clock.now()
            first = read(handle)
            last_old = (before + self.clock.now()) / 2  # when the old value was read
            polls = [(last_old, self._power_w(handle))]
            deadline = self.clock.now() + 3 * COUNTER_UPDATE_PERIOD_S
            value = first
            while value == first and self.clock.now() < deadline:
                before = self.clock.now()
                value = read(handle)
                at = (before + self.clock.now()) / 2
                polls.append((at, self._power_w(handle)))
                if value == first:
                    last_old = at
            # The step fell between the last read of the old value and the first of the new.
            tick = (last_old + polls[-1][0]) / 2
            readings.append((value / 1000.0, tick, polls))
        out = []
        # The moment the readings refer to: after the last step at a start, before the first
        # at an end, so that nothing between them and the window's edge goes unmetered.
        mark = max(r[1] for r in readings) if at_begin else now
        for joules, tick, polls in readings:
            t = np.array([p[0] for p in polls])
            w = np.array([p[1] for p in polls])
            lo, hi = sorted((tick, mark))
            grid = np.unique(np.concatenate([t[(t > lo) & (t < hi)], [lo, hi]]))
            power = np.interp(grid, t, w)
            between = float(np.sum((power[1:] + power[:-1]) / 2 * np.diff(grid)))
            # At the start the step came before `mark`: add what was spent since; at the end
            # the step came after the window closed: take off what was spent after it.
            out.append(joules + between if tick <= mark else joules - between)
        return out, mark

    def sample_once(self) -> None:
        now = self.clock.now()
        batch = []
        for gpu, handle in zip(self.gpus, self._handles, strict=True):
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                sm, mem = float(rates.gpu), float(rates.memory)
            except Exception:
                sm = mem = None
            batch.append(PowerSample(now, gpu, self._power_w(handle), sm, mem))
        with self._lock:
            self._samples.extend(batch)

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> Meter:
        """Start the sampler (idempotent; a no-op without NVML)."""
        if self.available and self._cancel_sampler is None:
            self._cancel_sampler = self.clock.every(self.interval_s, self.sample_once)
        return self

    def stop(self) -> None:
        if self._cancel_sampler is not None:
            self._cancel_sampler()
            self._cancel_sampler = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure_idle(self, seconds: float = 1.0) -> float | None:
        """Summed power of the GPUs at rest, before a run: subtracted for above-idle joules."""
        if not self.available:
            return None
        readings = []
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            readings.append(sum(self._power_w(h) for h in self._handles))
            self.clock.sleep(min(self.interval_s, seconds / 5))
        self.idle_w = float(np.median(readings))
        return self.idle_w

    # ---- windows -------------------------------------------------------------------------
    def begin(self, name: str, sync: Callable[[], None] | None = None) -> None:
        """Open a window; `sync` (e.g. torch.cuda.synchronize) makes its edge exact."""
        if name in self._open:
            raise ValueError(f"window {name!r} is already open")
        if sync:
            sync()
        if self._aligned:
            counters, start = self._tick_counters(at_begin=True)
        else:
            counters, start = self._counters_j(), self.clock.now()
        self._open[name] = (start, counters, {})

    def mark(self, name: str, label: str, sync: Callable[[], None] | None = None) -> None:
        """Record the energy spent since the window opened, e.g. at the end of prefill."""
        start, counters, marks = self._open[name]
        if sync:
            sync()
        now_counters = self._counters_j()
        if counters is not None and now_counters is not None:
            marks[label] = float(sum(now_counters) - sum(counters))
        else:
            marks[label] = float(self._integrate(start, self.clock.now()) or 0.0)

    def end(self, name: str, sync: Callable[[], None] | None = None) -> EnergyWindow:
        if name not in self._open:
            raise ValueError(f"window {name!r} was never begun")
        if sync:
            sync()
        if self._aligned:
            end_counters, end = self._tick_counters(at_begin=False)
        else:
            end, end_counters = self.clock.now(), self._counters_j()
        start, start_counters, marks = self._open.pop(name)
        if not self.available:
            return EnergyWindow(
                name,
                start,
                end,
                None,
                "none",
                None,
                None,
                None,
                None,
                None,
                end - start < COUNTER_UPDATE_PERIOD_S,
                marks,
            )
        # A sample at the closing edge keeps short windows integrable.
        self.sample_once()
        integrated = self._integrate(start, end)
        if start_counters is not None and end_counters is not None:
            energy = [b - a for a, b in zip(start_counters, end_counters, strict=True)]
            method = "counter"
        else:
            per_gpu = [self._integrate(start, end, gpu) for gpu in self.gpus]
            energy = [e or 0.0 for e in per_gpu]
            method = "integrated"
        window_samples = self.samples(start, end)
        return EnergyWindow(
            name=name,
            start=start,
            end=end,
            energy_j=energy,
            method=method,
            integrated_j=integrated,
            idle_w=self.idle_w,
            mean_power_w=float(sum(energy) / (end - start)) if end > start else None,
            sm_util=_mean(window_samples, "sm_util"),
            mem_util=_mean(window_samples, "mem_util"),
            short=end - start < COUNTER_UPDATE_PERIOD_S,
            marks=marks,
        )

    # ---- timelines -----------------------------------------------------------------------
    def samples(
        self, start: float | None = None, end: float | None = None, unix: bool = False
    ) -> pd.DataFrame:
        """Samples in [start, end] (perf_counter seconds); `unix=True` turns t into Unix time."""
        with self._lock:
            rows = list(self._samples)
        frame = pd.DataFrame(
            [(s.t, s.gpu, s.power_w, s.sm_util, s.mem_util) for s in rows],
            columns=["t", "gpu", "power_w", "sm_util", "mem_util"],
        )
        if start is not None:
            frame = frame[frame.t >= start]
        if end is not None:
            frame = frame[frame.t <= end]
        if unix:
            frame = frame.assign(t=frame.t + (time.time() - self.clock.now()))
        return frame.reset_index(drop=True)

    def _integrate(self, start: float, end: float, gpu: int | None = None) -> float | None:
        """Trapezoid ∫ power dt over [start, end], holding the edge samples flat to the edges."""
        frame = self.samples()
        if gpu is not None:
            frame = frame[frame.gpu == gpu]
        if frame.empty:
            return None
        total = 0.0
        for _, one in frame.groupby("gpu"):
            t = one.t.to_numpy()
            w = one.power_w.to_numpy()
            # Extend to the window's edges with the nearest readings, then clip to it.
            grid = np.unique(np.concatenate([t[(t > start) & (t < end)], [start, end]]))
            power = np.interp(grid, t, w)
            total += float(np.sum((power[1:] + power[:-1]) / 2 * np.diff(grid)))
        return total


def _mean(frame: pd.DataFrame, column: str) -> float | None:
    values = frame[column].dropna()
    return float(values.mean()) if not values.empty else None


def check_warmup_s(seconds: float) -> None:
    """Refuse a negative --warmup-s before anything runs."""
    if seconds < 0:
        raise UserError(f"--warmup-s must be 0 or more seconds, not {seconds:g}")


def warm_up(work: Callable[[], object], meter: Meter, seconds: float) -> dict[str, Any]:
    """Run `work` back to back for `seconds` (at least once) with the meter's sampler on.

    A card's power at the same work rises by a few percent as it heats (leakage grows with
    temperature), so a run that starts cold prices its first measurements low against those
    taken later. The mean power of the first and the last 2 s are returned, so the record
    shows how far the card drifted.
    """
    clock = meter.clock
    start = clock.now()
    runs = 0
    while runs == 0 or clock.now() - start < seconds:
        work()
        runs += 1
    end = clock.now()
    frame = meter.samples(start=start, end=end)

    def mean_power(lo: float, hi: float) -> float | None:
        part = frame[(frame.t >= lo) & (frame.t <= hi)]
        if part.empty:
            return None
        return float(part.groupby("t").power_w.sum().mean())  # summed over the run's GPUs

    return {
        "seconds": end - start,
        "queries": runs,
        "first_2s_w": mean_power(start, start + 2.0),
        "last_2s_w": mean_power(end - 2.0, end),
    }
