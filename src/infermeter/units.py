"""Units, once: every conversion between the units infermeter reads, stores and prints.

Stored figures are SI with the unit in the name (`runtime_s`, `energy_j`, `power_w`,
`memory_bytes`); NVML reports milli-units (mJ, mW: NVML API reference, Device Queries:
nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetPowerUsage, ...GetPowerManagementLimit);
CUDA events report milliseconds; prices are quoted per hour. Decimal prefixes (GB, TB/s,
TFLOP/s, billions of parameters) are for display; memory a process must fit is in GiB.
"""

from __future__ import annotations

from typing import Any

MS_PER_S = 1000.0
MILLI_PER_UNIT = 1000.0  # NVML's mJ per J and mW per W
S_PER_HOUR = 3600.0
J_PER_WH = 3600.0
GIB_BYTES = 2**30
MIB_BYTES = 2**20
KIB_BYTES = 1024
GIGA = 1e9
MEGA = 1e6
TERA = 1e12
PCT_PER_UNIT = 100.0  # a fraction in percent (fields named _pct)


def ms_to_s(ms: float) -> float:
    """Milliseconds (a CUDA event's elapsed_time) to seconds."""
    return ms / MS_PER_S


def s_to_ms(seconds: float) -> float:
    """Seconds to milliseconds, for display only."""
    return seconds * MS_PER_S


def mj_to_j(mj: float) -> float:
    """NVML millijoules to joules."""
    return mj / MILLI_PER_UNIT


def mw_to_w(mw: float) -> float:
    """NVML milliwatts to watts."""
    return mw / MILLI_PER_UNIT


def w_to_mw(watts: float) -> int:
    """Watts to NVML's whole milliwatts (what nvmlDeviceSetPowerManagementLimit takes)."""
    return round(watts * MILLI_PER_UNIT)


def j_to_wh(joules: float) -> float:
    """Joules to watt-hours."""
    return joules / J_PER_WH


def per_hour_to_per_second(per_hour: float) -> float:
    """A rate per hour (a $/h price) to the same per second."""
    return per_hour / S_PER_HOUR


def per_second_to_per_hour(per_second: float) -> float:
    """A rate per second to the same per hour."""
    return per_second * S_PER_HOUR


def to_giga(value: float) -> float:
    """A count or bytes in billions (parameters in B, memory in GB, FLOPs in GFLOP)."""
    return value / GIGA


def to_mega(value: float) -> float:
    """A count or bytes in millions (MB)."""
    return value / MEGA


def to_tera(value: float) -> float:
    """A rate in trillions (TFLOP/s, TB/s)."""
    return value / TERA


def kib_to_bytes(kib: int) -> int:
    """KiB (1024 bytes: the "kB" of /proc/meminfo, proc(5)) to bytes."""
    return kib * KIB_BYTES


def to_gib(nbytes: float) -> float:
    """Bytes in GiB (2**30), the unit of memory a model must fit in."""
    return nbytes / GIB_BYTES


def to_pct(fraction: Any) -> Any:
    """A fraction (a float, or a numpy array / pandas Series of them) in percent."""
    return fraction * PCT_PER_UNIT
