"""A stand-in for pynvml on machines without a GPU, with the same calls and units.

Each fake GPU draws power as a function of time (watts); its energy counter integrates that
function exactly and, like the real one, only moves in steps of `counter_step_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4


class NVMLError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"NVML error {code}")
        self.value = code


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
    limit_history: list[int] = field(default_factory=list)


class FakeNvml:
    """The subset of pynvml infermeter uses."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], t0: float | None = None) -> None:
        self.gpus = gpus
        self.t0 = time.perf_counter() if t0 is None else t0
        self.initialised = False
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return gpu.name

    def energy_between(self, gpu: FakeGpu, a: float, b: float, steps: int = 2000) -> float:
        """∫ power dt in joules (midpoint rule, fine enough for smooth test profiles)."""
        if b <= a:
            return 0.0
        dt = (b - a) / steps
        return sum(gpu.power(a + (i + 0.5) * dt) for i in range(steps)) * dt

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        if not gpu.has_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        now = time.perf_counter()
        if gpu.counter_step_s:
            now = self.t0 + (now - self.t0) // gpu.counter_step_s * gpu.counter_step_s
        return round(self.energy_between(gpu, self.t0, now) * 1000)  # mJ

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        return int(gpu.power(time.perf_counter()) * 1000)  # mW

    def nvmlDeviceGetFieldValues(self, gpu: FakeGpu, ids: list[int]) -> list[SimpleNamespace]:
        out = []
        for field_id in ids:
            ok = field_id == 186 and gpu.has_instant_field
            value = SimpleNamespace(uiVal=int(gpu.power(time.perf_counter()) * 1000) if ok else 0)
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    value=value,
                    nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                )
            )
        return out

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=gpu.sm_util, memory=gpu.mem_util)

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGpu) -> int:
        return gpu.limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, gpu: FakeGpu) -> int:
        return gpu.default_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, gpu: FakeGpu) -> tuple[int, int]:
        return gpu.min_limit_mw, gpu.max_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, gpu: FakeGpu, limit_mw: int) -> None:
        self.calls.append(f"set_limit {limit_mw}")
        if not gpu.can_set_limit:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        gpu.limit_mw = limit_mw
        gpu.limit_history.append(limit_mw)


# ---- GPU memory in use (infermeter.energy's peak memory): appended, the class is unchanged above


def _memory_info(self: FakeNvml, gpu: FakeGpu) -> SimpleNamespace:
    """Memory of an 80 GB card; `used` is FakeGpu.memory_used_bytes where a test sets it."""
    used = int(getattr(gpu, "memory_used_bytes", 20 * 10**9))
    return SimpleNamespace(total=80 * 10**9, used=used, free=80 * 10**9 - used)


FakeNvml.nvmlDeviceGetMemoryInfo = _memory_info  # type: ignore[attr-defined]
