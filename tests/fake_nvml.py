"""A stand-in for pynvml on machines without a GPU, with the same calls and units.

Each fake GPU draws power as a function of time (watts); its energy counter integrates that
function exactly and, like the real one, only moves in steps of `counter_step_s`.

GPUs have UUIDs (GPU-3f2a9c1e-0000-4000-8000-00000000000N for the N-th unless set), may hold MIG
instances (`FakeGpu.migs`, made with `mig_instance`), and each sensor can be missing on its own
(`has_power`, `has_instant_field`, `has_counter`, `has_utilization`): a missing one raises
NVMLError(NOT_SUPPORTED) as the real library does. With `limits_file` the power limits live in
a JSON file, so that a limit set by one process is what the next one reads (as on a real GPU).

Time is the real perf_counter by default, or a FakeClock shared with the Meter
(`Meter(clock=...)`): then nothing a test asserts depends on how busy the machine is. Under a
fake clock each NVML call takes `call_s` of it, as a real call takes a few hundred µs, and the
meter's sampler ticks as the clock is advanced, on the test's own thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6


class NVMLError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"NVML error {code}")
        self.value = code


class FakeClock:
    """A clock that moves only when told, and fires the timers registered on it as it passes
    their times (infermeter.measure.meter.Clock)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._timers: list[list] = []  # [next_at, interval_s, tick, alive]
        self._advancing = False

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def every(self, interval_s: float, tick: Callable[[], None]) -> Callable[[], None]:
        timer = [self.t, interval_s, tick, True]
        self._timers.append(timer)
        self._fire_due()

        def cancel() -> None:
            timer[3] = False
            self._timers.remove(timer)

        return cancel

    def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, firing each timer at every one of its times passed.
        A call made while timers fire (an NVML call inside a sample) only adds its time."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        target = self.t + seconds
        if self._advancing:
            self.t = target
            return
        self._advancing = True
        try:
            while True:
                due = [tm for tm in self._timers if tm[3] and tm[0] <= target]
                if not due:
                    break
                timer = min(due, key=lambda tm: tm[0])
                self.t = max(self.t, timer[0])
                timer[2]()
                timer[0] += timer[1]
            self.t = max(self.t, target)
        finally:
            self._advancing = False

    def _fire_due(self) -> None:
        self.advance(0.0)


@dataclass
class FakeGpu:
    power: Callable[[float], float] = lambda t: 300.0  # watts at time t (perf_counter)
    name: str = "NVIDIA H100 80GB HBM3"
    has_counter: bool = True
    has_instant_field: bool = True
    sm_util: int = 90
    mem_util: int = 40
    limit_mw: int = 700_000
    min_limit_mw: int = 200_000
    max_limit_mw: int = 700_000
    default_limit_mw: int = 700_000
    can_set_limit: bool = True
    counter_step_s: float = 0.0
    # The POWER_INSTANT field reads the power of this long ago (an H200's lags 50-100 ms).
    instant_lag_s: float = 0.0
    limit_history: list[int] = field(default_factory=list)
    uuid: str = ""  # set by FakeNvml from the GPU's index when left empty
    has_power: bool = True  # nvmlDeviceGetPowerUsage
    has_utilization: bool = True  # nvmlDeviceGetUtilizationRates
    temperature_c: int | None = 45  # nvmlDeviceGetTemperature (None: not supported)
    sm_clock_mhz: int | None = 1980  # nvmlDeviceGetClockInfo(SM) (None: not supported)
    # Joules between two times, where a test knows it in closed form (fast); else integrated.
    energy: Callable[[float, float], float] | None = None
    migs: list[FakeGpu] = field(default_factory=list)  # MIG instances of this GPU
    mig_ids: tuple[int, int] | None = None  # (GPU instance, compute instance) of a MIG instance


def mig_instance(uuid: str, gpu_instance: int = 1, compute_instance: int = 0) -> FakeGpu:
    """A MIG instance as NVML shows one: no power reading, no energy counter of its own."""
    return FakeGpu(
        uuid=uuid,
        has_power=False,
        has_counter=False,
        has_instant_field=False,
        mig_ids=(gpu_instance, compute_instance),
    )


def fake_uuid(index: int) -> str:
    return f"GPU-3f2a9c1e-0000-4000-8000-{index:012d}"


class FakeNvml:
    """The subset of pynvml infermeter uses."""

    NVMLError = NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu],
        t0: float | None = None,
        clock: FakeClock | None = None,
        call_s: float = 0.0002,
        limits_file: str | Path | None = None,
    ) -> None:
        self.gpus = gpus
        for index, gpu in enumerate(gpus):
            gpu.uuid = gpu.uuid or fake_uuid(index)
        self.limits_file = Path(limits_file) if limits_file is not None else None
        self.clock = clock
        self.call_s = call_s
        self.t0 = self._now() if t0 is None else t0
        self.initialised = False
        self.calls: list[str] = []

    def _now(self) -> float:
        return time.perf_counter() if self.clock is None else self.clock.now()

    def _call(self) -> float:
        """The time a reading refers to; under a fake clock the call itself takes call_s."""
        if self.clock is None:
            return time.perf_counter()
        self.clock.advance(self.call_s / 2)
        now = self.clock.now()
        self.clock.advance(self.call_s / 2)
        return now

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            for one in (gpu, *gpu.migs):
                if one.uuid == uuid:
                    return one
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetMigMode(self, gpu: FakeGpu) -> tuple[int, int]:
        return (1, 1) if gpu.migs else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: FakeGpu) -> int:
        return 7 if gpu.migs else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu: FakeGpu, index: int) -> FakeGpu:
        if index >= len(gpu.migs):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return gpu.migs[index]

    def nvmlDeviceGetGpuInstanceId(self, mig: FakeGpu) -> int:
        assert mig.mig_ids is not None
        return mig.mig_ids[0]

    def nvmlDeviceGetComputeInstanceId(self, mig: FakeGpu) -> int:
        assert mig.mig_ids is not None
        return mig.mig_ids[1]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return gpu.name

    def energy_between(self, gpu: FakeGpu, a: float, b: float, steps: int = 2000) -> float:
        """∫ power dt in joules (midpoint rule, fine enough for smooth test profiles)."""
        if b <= a:
            return 0.0
        if gpu.energy is not None:
            return gpu.energy(a, b)
        dt = (b - a) / steps
        return sum(gpu.power(a + (i + 0.5) * dt) for i in range(steps)) * dt

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        if not gpu.has_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        now = self._call()
        if gpu.counter_step_s:
            now = self.t0 + (now - self.t0) // gpu.counter_step_s * gpu.counter_step_s
        return round(self.energy_between(gpu, self.t0, now) * 1000)  # mJ

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        if not gpu.has_power:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.power(self._call()) * 1000)  # mW

    def nvmlDeviceGetFieldValues(self, gpu: FakeGpu, ids: list[int]) -> list[SimpleNamespace]:
        out = []
        now = self._call()
        for field_id in ids:
            ok = field_id == 186 and gpu.has_instant_field
            watts = gpu.power(now - gpu.instant_lag_s)
            value = SimpleNamespace(uiVal=int(watts * 1000) if ok else 0)
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    value=value,
                    nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                )
            )
        return out

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._call()
        if gpu.temperature_c is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.temperature_c

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock_type: int) -> int:
        self._call()
        if gpu.sm_clock_mhz is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        if not gpu.has_utilization:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.sm_util, memory=gpu.mem_util)

    def _stored_limits(self) -> dict[str, int]:
        if self.limits_file is None or not self.limits_file.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self.limits_file.read_text()).items()}

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGpu) -> int:
        if gpu.mig_ids is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self._stored_limits().get(gpu.uuid, gpu.limit_mw)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, gpu: FakeGpu) -> int:
        return gpu.default_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, gpu: FakeGpu) -> tuple[int, int]:
        return gpu.min_limit_mw, gpu.max_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, gpu: FakeGpu, limit_mw: int) -> None:
        self.calls.append(f"set_limit {limit_mw}")
        if not gpu.can_set_limit:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        if gpu.mig_ids is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        gpu.limit_mw = limit_mw
        gpu.limit_history.append(limit_mw)
        if self.limits_file is not None:
            limits = {**self._stored_limits(), gpu.uuid: limit_mw}
            part = self.limits_file.with_suffix(".part")
            part.write_text(json.dumps(limits))
            part.replace(self.limits_file)


# ---- GPU memory in use (infermeter.experiments.energy's peak memory): appended, the class is
# unchanged above


def _memory_info(self: FakeNvml, gpu: FakeGpu) -> SimpleNamespace:
    """Memory of an 80 GB card; `used` is FakeGpu.memory_used_bytes where a test sets it."""
    used = int(getattr(gpu, "memory_used_bytes", 20 * 10**9))
    return SimpleNamespace(total=80 * 10**9, used=used, free=80 * 10**9 - used)


FakeNvml.nvmlDeviceGetMemoryInfo = _memory_info  # type: ignore[attr-defined]


def clock_generation(
    backend: Any, clock: FakeClock, prefill_s: float = 0.01, per_token_s: float = 0.002
) -> Any:
    """Make the hf backend's generation take fake time, inside its timed region: `prefill_s`
    plus `per_token_s` per new token, whatever the real run took on this machine."""
    real = backend._generate

    def timed(torch: Any, ids: Any, mask: Any, new_tokens: int, first: Any) -> Any:
        out = real(torch, ids, mask, new_tokens, first)
        clock.advance(prefill_s + per_token_s * new_tokens)
        return out

    backend._generate = timed
    return backend
