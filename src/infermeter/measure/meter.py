"""GPU energy, power and utilisation, the way Zeus measures: begin a window, end a window.

Energy comes from NVML's total-energy counter (millijoules since the driver loaded), read per
GPU at both edges of a window and summed over the GPUs of a run. A background thread samples
power and SM / memory utilisation (default every 100 ms) for timelines and, where the counter
is missing, for energy by integrating power over time. On recent GPUs the plain power reading
is a one-second average, so the sampler asks for the instantaneous power field where the
driver has it and records which field it used.

One contract with the work it meters: `meter.window()` gives a Window whose begin() and end()
the timed work calls (a backend's measure or dataset generate takes it as an argument, and
its engine ranks reach it through their parent under tensor parallelism), or that a caller
holds around whole calls (`with meter.window(): ...`). The GPUs are those `resolve_gpus`
found for the run (infermeter.measure.gpus): indices, UUIDs and MIG instances name the same cards
for
the backend, the meter, pricing and power caps.

Every sensor is optional on its own, probed once per GPU: the energy counter
(nvmlDeviceGetTotalEnergyConsumption), the power reading (the instant or average field of
nvmlDeviceGetFieldValues, else nvmlDeviceGetPowerUsage) and utilisation
(nvmlDeviceGetUtilizationRates). Energy uses the counter, else integrated power, else none
(`energy_method`, with a note); a missing utilisation leaves SM/memory % empty. A reading that
fails later (NVMLError) is skipped: no NVML exception leaves the sampler thread or a window
edge. Samples are kept only while something needs them (an open window, the last `keep_s`
seconds, or a `drain` to the store), so a long sweep holds as many as a short one.

Written on nvidia-ml-py directly rather than on Zeus: infermeter needs utilisation samples
beside power, a choice of power field, a window that reports both the counter and the
integrated figure (to check one against the other), and an NVML seam that tests replace with
a fake; Zeus's monitors cover the first window API but not these. Without NVML (no GPU, no
driver, no permission) a Meter is inert: windows come back empty, with one note saying why.
NVML reference: https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from infermeter.errors import UserError
from infermeter.measure.cluster import ClusterMeter
from infermeter.measure.gpus import GpuRef, nvml_error, resolve_gpus
from infermeter.measure.window import EnergyWindow, Window
from infermeter.units import mj_to_j, mw_to_w, to_giga

# NVML field ids (nvml.h): instantaneous and averaged board power, in milliwatts.
NVML_TEMPERATURE_GPU = 0  # nvmlTemperatureSensors_t
NVML_CLOCK_SM = 1  # nvmlClockType_t
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
        """time.perf_counter(): seconds on a monotonic clock."""
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        """time.sleep(seconds)."""
        time.sleep(seconds)

    def every(self, interval_s: float, tick: Callable[[], None]) -> Callable[[], None]:
        """Call `tick` every `interval_s` seconds on a daemon thread (fixed rate, not drifting
        with tick's own time); returns the function that stops it."""
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
    """One sampler reading of one GPU: power (W) and SM / memory utilisation (%), from
    nvmlDeviceGetFieldValues or nvmlDeviceGetPowerUsage and
    nvmlDeviceGetUtilizationRates."""

    t: float  # on the meter's clock (time.perf_counter for the system clock)
    gpu: int  # NVML index
    power_w: float | None  # None: the reading failed or this GPU has none
    sm_util: float | None
    mem_util: float | None


class Meter:
    """Energy windows and power/utilisation timelines for a set of GPUs.

    `gpus`: GpuRefs from infermeter.measure.gpus.resolve_gpus (what `Meter.for_device` passes), or
    NVML indices; default every GPU. `keep_s`: seconds of samples kept for `samples()` beyond
    what open windows and an undrained store need. Raises UserError for a MIG instance NVML
    cannot meter, ValueError for an NVML index out of range.
    """

    def __init__(
        self,
        gpus: Sequence[int | GpuRef] | None = None,
        interval_s: float = 0.1,
        nvml: Any | None = None,
        power_field: str = "auto",
        align_ticks: bool = True,
        clock: Clock | None = None,
        keep_s: float = 60.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if power_field not in ("auto", "instant", "average"):
            raise ValueError("power_field must be auto, instant or average")
        self.interval_s = interval_s
        self.align_ticks = align_ticks
        self.keep_s = keep_s
        self.clock: Clock = clock or SystemClock()
        self.notes: list[str] = []
        self._nvml, note = (nvml, None) if nvml is not None else load_nvml()
        if note:
            self.notes.append(note)
        self._error: type[BaseException] = nvml_error(self._nvml)
        self._handles: list[Any] = []
        self.gpus: list[int] = []
        self.refs: list[GpuRef] = []
        self.counter_supported = False
        self.power_field_used = "none"
        self.utilisation_supported = False
        self.read_errors = 0  # NVML readings that failed after set-up (skipped)
        self.idle_w: float | None = None
        self.idle_per_gpu_w: list[float] | None = None  # each GPU's, by measure_idle()
        self._t: list[float] = []  # sample times, ascending, beside _rows
        self._rows: list[PowerSample] = []
        self._draining = False
        self._drained_to = -np.inf
        self._lock = threading.Lock()
        self._cancel_sampler: Callable[[], None] | None = None
        self._open: dict[str, tuple[float, list[float] | None]] = {}
        self._windows = 0
        if self._nvml is not None:
            self._setup(gpus, power_field)

    @classmethod
    def for_device(
        cls,
        device: str = "cuda",
        count: int = 1,
        nvml: Any | None = None,
        local: bool = False,
        **options: Any,
    ) -> Meter:
        """A Meter over the GPUs a run on `device` ("cuda", "cuda:N") with `count` GPUs (its
        tensor-parallel ranks) uses, as infermeter.measure.gpus.resolve_gpus maps them; inert, with
        a note, where NVML is missing. On rank 0 of a run launched over several nodes whose
        ranks are those `count` GPUs, a ClusterMeter over every node's
        (infermeter.measure.cluster); `local=True` keeps to this node. Raises UserError where
        the GPUs cannot be told."""
        env = None
        if not local:
            # Here, not at the top: the infermeter.engine package imports torch, an optional
            # extra, and a Meter must import without it (engine.ranks itself is torch-free).
            from infermeter.engine.ranks import launch_env

            env = launch_env()
        # Rank 0 of a run over several nodes whose ranks are these `count` GPUs: every node's.
        if env is not None and env.nodes >= 2 and count == env.world and env.rank == 0:
            from infermeter.engine.launched import join

            cluster = join(env)
            node = cls.for_device(device, env.local_world, nvml, local=True, **options)
            return ClusterMeter(node, cluster, options)  # type: ignore[return-value]
        if nvml is None:
            nvml, _ = load_nvml()
            if nvml is None:
                return cls(gpus=[], **options)  # inert; its note says why
        try:
            gpus = resolve_gpus(device, count, nvml)
        except nvml_error(nvml) as error:  # NVML loads but cannot list the GPUs
            meter = cls(gpus=[], nvml=nvml, **options)
            meter.notes.append(f"NVML cannot list the GPUs ({error}): no energy data")
            return meter
        return cls(gpus, nvml=nvml, **options)

    @property
    def note(self) -> str | None:
        """The notes on what this meter cannot measure, in one line (None: it measures all)."""
        return "; ".join(self.notes) or None

    # ---- set-up --------------------------------------------------------------------------
    def _setup(self, gpus: Sequence[int | GpuRef] | None, power_field: str) -> None:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        chosen = list(gpus) if gpus is not None else list(range(count))
        for gpu in chosen:
            if isinstance(gpu, GpuRef):
                self.refs.append(gpu)
                self.gpus.append(gpu.nvml_index)
                self._handles.append(gpu.handle(nvml))
            else:
                if not 0 <= gpu < count:
                    raise ValueError(f"GPU index {gpu} out of range (this machine has {count})")
                handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
                self.refs.append(_index_ref(nvml, handle, int(gpu), len(self.gpus)))
                self.gpus.append(int(gpu))
                self._handles.append(handle)
        if not self._handles:
            return
        self.counter_supported = all(self._probe(self._raw_counter, h) for h in self._handles)
        self.power_field_used = self._choose_power_field(power_field)
        self.utilisation_supported = all(
            self._probe(nvml.nvmlDeviceGetUtilizationRates, h) for h in self._handles
        )
        migs = [r for r in self.refs if r.mig]
        if migs and not self.measures_energy:
            raise UserError(
                f"{migs[0]} cannot be metered: NVML reads power and energy only for the whole "
                "GPU, which its other instances share; run with --no-energy, or on a whole GPU"
            )
        if not self.counter_supported:
            self.notes.append(
                "no energy counter on this GPU: energy integrates sampled power"
                if self.power_field_used != "none"
                else "no energy counter and no power reading on this GPU: runtime only "
                "(energy_method none)"
            )
        if self.counter_supported and self.power_field_used == "none":
            self.notes.append(
                "no power reading on this GPU: energy from the counter, but no power timeline "
                "and no idle power (above-idle joules stay empty)"
            )
        if not self.utilisation_supported:
            self.notes.append("no utilisation reading on this GPU: SM and memory % stay empty")

    def _probe(self, read: Callable[[Any], Any], handle: Any) -> bool:
        try:
            read(handle)
        except self._error:
            return False
        return True

    def _raw_counter(self, handle: Any) -> float:
        return mj_to_j(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))

    def _choose_power_field(self, wanted: str) -> str:
        def everywhere(field_id: int) -> bool:
            return all(self._field_power(field_id, h) is not None for h in self._handles)

        if wanted in ("auto", "instant") and everywhere(FI_DEV_POWER_INSTANT):
            return "instant"
        if wanted == "average" and everywhere(FI_DEV_POWER_AVERAGE):
            return "average"
        # nvmlDeviceGetPowerUsage: a 1 s average on recent GPUs
        if all(self._probe(self._nvml.nvmlDeviceGetPowerUsage, h) for h in self._handles):
            return "usage"
        return "none"

    def _field_power(self, field_id: int, handle: Any) -> float | None:
        try:
            value = self._nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
        except self._error:
            return None
        if getattr(value, "nvmlReturn", 1) != 0:
            return None
        return mw_to_w(float(value.value.uiVal))

    @property
    def available(self) -> bool:
        """NVML works and the meter has GPUs (a window may still measure no energy)."""
        return bool(self._handles)

    @property
    def measures_energy(self) -> bool:
        """A window gets joules: from the counter, or from integrated power."""
        return self.available and (self.counter_supported or self.power_field_used != "none")

    @property
    def energy_method(self) -> str:
        """How windows get their joules: "counter", "integrated" or "none"."""
        if self.counter_supported:
            return "counter"
        return "integrated" if self.measures_energy else "none"

    def describe(self) -> dict[str, Any]:
        """What this meter reads, for a run's record."""
        return {
            "gpus": [r.to_dict() for r in self.refs],
            "energy_method": self.energy_method,
            "power_field": self.power_field_used,
            "utilisation": self.utilisation_supported,
            "interval_s": self.interval_s,
            "notes": self.notes,
        }

    # ---- readings (NVML errors are counted and skipped, never raised) ------------------
    def _power_w(self, handle: Any) -> float | None:
        field = self.power_field_used
        if field == "none":
            return None
        if field in ("instant", "average"):
            watts = self._field_power(
                FI_DEV_POWER_INSTANT if field == "instant" else FI_DEV_POWER_AVERAGE, handle
            )
            if watts is not None:
                return watts
        try:
            return mw_to_w(self._nvml.nvmlDeviceGetPowerUsage(handle))
        except self._error:
            self.read_errors += 1
            return None

    def _counters_j(self) -> list[float] | None:
        if not self.counter_supported:
            return None
        try:
            return [self._raw_counter(h) for h in self._handles]
        except self._error:
            self.read_errors += 1
            return None

    @property
    def _aligned(self) -> bool:
        return self.align_ticks and self.counter_supported and self.power_field_used != "none"

    def _edge_counters(self, at_begin: bool) -> tuple[list[float] | None, float]:
        """The counters at a window's edge and the moment they refer to."""
        if self._aligned:
            try:
                return self._tick_counters(at_begin)
            except self._error:
                self.read_errors += 1
        return self._counters_j(), self.clock.now()

    def _tick_counters(self, at_begin: bool) -> tuple[list[float], float]:
        """Counters (J) exact at one moment, returned with it, though they move in steps.

        Polls each GPU until its counter steps (at most one update period), then moves the
        reading from the step's time to now: forward at a window's start, backward at its
        end. The work is synchronised before either edge, so the GPU is at rest in between:
        the energy moved is the GPU's idle power (measure_idle) times the gap. Without a
        measured idle power it is the instantaneous power polled meanwhile, which reads high
        after work: on an H200 the POWER_INSTANT field lags the counter by 50-100 ms, and
        taking it off at a window's end put 1 s windows 2-7% below a user's measurement
        (benchmarks/edge_diagnosis.py, window_diagnosis.py; the counter itself reads idle
        power within 100 ms of the work's end). The correction spans one period at most.
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
            readings.append((mj_to_j(value), tick, [p for p in polls if p[1] is not None]))
        out = []
        # The moment the readings refer to: after the last step at a start, before the first
        # at an end, so that nothing between them and the window's edge goes unmetered.
        mark = max(r[1] for r in readings) if at_begin else now
        idle = self.idle_per_gpu_w
        for index, (joules, tick, polls) in enumerate(readings):
            if idle is not None and len(idle) == len(readings):
                between = idle[index] * abs(mark - tick)
                out.append(joules + between if tick <= mark else joules - between)
                continue
            if not polls:  # no power read meanwhile: the step's time is the best there is
                out.append(joules)
                continue
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

    def _card_state(self) -> tuple[float | None, float | None]:
        """(hottest GPU's temperature °C, slowest SM clock MHz) now; None where NVML cannot
        tell (nvmlDeviceGetTemperature, nvmlDeviceGetClockInfo; never raises)."""
        temperatures, clocks = [], []
        for handle in self._handles:
            with contextlib.suppress(self._error, AttributeError):
                temperatures.append(
                    float(self._nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU))
                )
            with contextlib.suppress(self._error, AttributeError):
                clocks.append(float(self._nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM)))
        return (max(temperatures) if temperatures else None, min(clocks) if clocks else None)

    def _utilisation(self, handle: Any) -> tuple[float | None, float | None]:
        if not self.utilisation_supported:
            return None, None
        try:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        except self._error:
            self.read_errors += 1
            return None, None
        return float(rates.gpu), float(rates.memory)

    def sample_once(self) -> None:
        """One power/utilisation sample of every GPU (the sampler's tick); never raises NVML
        errors: a reading that fails is left empty and counted in `read_errors`."""
        now = self.clock.now()
        batch = []
        for gpu, handle in zip(self.gpus, self._handles, strict=True):
            sm, mem = self._utilisation(handle)
            batch.append(PowerSample(now, gpu, self._power_w(handle), sm, mem))
        with self._lock:
            at = bisect.bisect_right(self._t, now)
            self._t[at:at] = [now] * len(batch)
            self._rows[at:at] = batch
            self._trim_locked()

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> Meter:
        """Start the sampler (idempotent; a no-op without NVML or without any reading)."""
        sensing = self.power_field_used != "none" or self.utilisation_supported
        if self.available and sensing and self._cancel_sampler is None:
            self._cancel_sampler = self.clock.every(self.interval_s, self.sample_once)
        return self

    def stop(self) -> None:
        """Stop the background sampler (a no-op when it is not running); windows still read the
        counters."""
        if self._cancel_sampler is not None:
            self._cancel_sampler()
            self._cancel_sampler = None

    def close(self) -> None:
        """The same as stop(), for `with`-style and contextlib.closing use."""
        self.stop()

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure_idle(self, seconds: float = 1.0) -> float | None:
        """Summed power (W) of the GPUs at rest, before a run: subtracted for above-idle
        joules. None without a power reading."""
        if not self.available or self.power_field_used == "none":
            return None
        readings: list[list[float]] = []
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            watts = [self._power_w(h) for h in self._handles]
            if all(w is not None for w in watts):
                readings.append([w for w in watts if w is not None])
            self.clock.sleep(min(self.interval_s, seconds / 5))
        if not readings:
            self.idle_w = self.idle_per_gpu_w = None
            return None
        self.idle_per_gpu_w = [float(w) for w in np.median(np.array(readings), axis=0)]
        self.idle_w = float(np.median([sum(r) for r in readings]))
        return self.idle_w

    def memory_used_gb(self) -> float | None:
        """The most GPU memory in use (GB) over the meter's GPUs (nvmlDeviceGetMemoryInfo);
        None where NVML cannot tell."""
        if not self.available:
            return None
        try:
            return to_giga(max(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles))
        except (self._error, AttributeError):
            return None

    def power_limits_w(self) -> list[float | None]:
        """Each GPU's power limit (W) as NVML reports it now
        (nvmlDeviceGetPowerManagementLimit); None where it cannot tell."""
        out: list[float | None] = []
        for handle in self._handles:
            try:
                out.append(mw_to_w(self._nvml.nvmlDeviceGetPowerManagementLimit(handle)))
            except self._error:
                out.append(None)
        return out

    # ---- windows -------------------------------------------------------------------------
    def window(self, name: str = "window") -> Window:
        """A new Window (see Window) named `name` plus a serial number, not yet open."""
        self._windows += 1
        return Window(self, f"{name}#{self._windows}")

    def begin(self, name: str, sync: Callable[[], None] | None = None) -> None:
        """Open a window; `sync` (e.g. torch.cuda.synchronize) makes its edge exact."""
        if name in self._open:
            raise ValueError(f"window {name!r} is already open")
        if sync:
            sync()
        counters, start = self._edge_counters(at_begin=True)
        self._open[name] = (start, counters)

    def end(self, name: str, sync: Callable[[], None] | None = None) -> EnergyWindow:
        """Close window `name`: its energy per GPU by the best method this window's readings
        allow (counter, else integrated power, else none)."""
        if name not in self._open:
            raise ValueError(f"window {name!r} was never begun")
        if sync:
            sync()
        state = self._card_state()
        end_counters, end = self._edge_counters(at_begin=False)
        start, start_counters = self._open.pop(name)
        short = end - start < COUNTER_UPDATE_PERIOD_S
        if not self.available:
            return EnergyWindow(name, start, end, None, "none", None, None, None, None, None, short)
        # A sample at the closing edge keeps short windows integrable.
        self.sample_once()
        with self._lock:
            rows = self._rows_around(start, end)
            self._trim_locked()
        per_gpu = {gpu: _integrate_rows(rows, start, end, gpu) for gpu in self.gpus}
        known = [j for j in per_gpu.values() if j is not None]
        integrated = float(sum(known)) if len(known) == len(per_gpu) else None
        energy: list[float] | None
        if start_counters is not None and end_counters is not None:
            energy = [b - a for a, b in zip(start_counters, end_counters, strict=True)]
            method = "counter"
        elif integrated is not None:
            energy = [float(per_gpu[g] or 0.0) for g in self.gpus]
            method = "integrated"
        else:
            energy, method = None, "none"
        inside = [r for r in rows if start <= r.t <= end]
        return EnergyWindow(
            name=name,
            start=start,
            end=end,
            energy_j=energy,
            method=method,
            integrated_j=integrated,
            idle_w=self.idle_w,
            mean_power_w=(
                float(sum(energy) / (end - start)) if energy is not None and end > start else None
            ),
            sm_util=_mean(inside, "sm_util"),
            mem_util=_mean(inside, "mem_util"),
            short=short,
            temperature_c=state[0],
            sm_clock_mhz=state[1],
        )

    # ---- timelines -----------------------------------------------------------------------
    @property
    def samples_held(self) -> int:
        """Samples kept in memory now (one per GPU per tick): bounded however long the run."""
        return len(self._rows)

    def samples(
        self, start: float | None = None, end: float | None = None, unix: bool = False
    ) -> pd.DataFrame:
        """Samples held in [start, end] (meter clock seconds); `unix=True` turns t into Unix
        time. Held: those of open windows, of the last `keep_s` seconds, and not yet drained."""
        with self._lock:
            lo = 0 if start is None else bisect.bisect_left(self._t, start)
            hi = len(self._t) if end is None else bisect.bisect_right(self._t, end)
            rows = self._rows[lo:hi]
        return self._frame(rows, unix)

    def drain(self, unix: bool = True) -> pd.DataFrame:
        """The power samples taken since the last drain, for the store (a GPU without a power
        reading has none); from the first drain on, samples are kept until drained (and then
        only while something else needs them)."""
        with self._lock:
            self._draining = True
            lo = bisect.bisect_right(self._t, self._drained_to)
            rows = self._rows[lo:]
            if rows:
                self._drained_to = rows[-1].t
            self._trim_locked()
        return self._frame([r for r in rows if r.power_w is not None], unix)

    def _frame(self, rows: list[PowerSample], unix: bool) -> pd.DataFrame:
        frame = pd.DataFrame(
            [(s.t, s.gpu, s.power_w, s.sm_util, s.mem_util) for s in rows],
            columns=["t", "gpu", "power_w", "sm_util", "mem_util"],
        ).astype({"t": float, "gpu": int, "power_w": float, "sm_util": float, "mem_util": float})
        if unix:
            frame = frame.assign(t=frame.t + (time.time() - self.clock.now()))
        return frame

    def _rows_around(self, start: float, end: float) -> list[PowerSample]:
        """The rows in [start, end] and a tick's worth either side (for the edges)."""
        margin = 2 * max(1, len(self.gpus))
        lo = max(0, bisect.bisect_left(self._t, start) - margin)
        hi = bisect.bisect_right(self._t, end) + margin
        return self._rows[lo:hi]

    def _trim_locked(self) -> None:
        """Forget samples no one needs: older than keep_s, than every open window's start
        (less two ticks, for its edge), and than the last drain once the store drains."""
        horizon = self.clock.now() - self.keep_s
        if self._open:
            oldest = min(start for start, _ in self._open.values())
            horizon = min(horizon, oldest - 2 * self.interval_s)
        if self._draining:
            horizon = min(horizon, self._drained_to)
        cut = bisect.bisect_left(self._t, horizon)
        if cut:
            del self._t[:cut]
            del self._rows[:cut]


def _index_ref(nvml: Any, handle: Any, index: int, ordinal: int) -> GpuRef:
    """A GpuRef for a GPU given by NVML index (its UUID and name where NVML tells them)."""
    try:
        uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
    except (nvml_error(nvml), AttributeError):
        uuid, name = "", ""
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in (uuid, name)]
    return GpuRef(ordinal, index, text[0], text[1])


def _integrate_rows(rows: list[PowerSample], start: float, end: float, gpu: int) -> float | None:
    """Trapezoid ∫ power dt over [start, end] of one GPU's rows, holding the readings nearest
    the edges flat out to them; None without a reading."""
    mine = [(r.t, r.power_w) for r in rows if r.gpu == gpu and r.power_w is not None]
    if not mine:
        return None
    t = np.array([m[0] for m in mine])
    w = np.array([m[1] for m in mine])
    grid = np.unique(np.concatenate([t[(t > start) & (t < end)], [start, end]]))
    power = np.interp(grid, t, w)
    return float(np.sum((power[1:] + power[:-1]) / 2 * np.diff(grid)))


def _mean(rows: list[PowerSample], column: str) -> float | None:
    values = [getattr(r, column) for r in rows if getattr(r, column) is not None]
    return float(np.mean(values)) if values else None


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
    first: float | None = None
    while runs == 0 or clock.now() - start < seconds:
        work()
        runs += 1
        if first is None and clock.now() - start >= 2.0:  # read while the meter holds it
            first = _mean_power(meter, start, start + 2.0)
    end = clock.now()
    if first is None:
        first = _mean_power(meter, start, start + 2.0)
    return {
        "seconds": end - start,
        "queries": runs,
        "first_2s_w": first,
        "last_2s_w": _mean_power(meter, end - 2.0, end),
    }


def _mean_power(meter: Meter, lo: float, hi: float) -> float | None:
    """Mean power (W) summed over the meter's GPUs, of the samples in [lo, hi]."""
    part = meter.samples(start=lo, end=hi).dropna(subset=["power_w"])
    if part.empty:
        return None
    return float(part.groupby("t").power_w.sum().mean())
