"""Units, once: every conversion between the units infermeter reads, stores and prints.

Stored figures are SI with the unit in the name (`runtime_s`, `energy_j`, `power_w`,
`memory_bytes`); NVML reports milli-units (mJ, mW: NVML API reference, Device Queries:
nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetPowerUsage, ...GetPowerManagementLimit);
CUDA events report milliseconds; prices are quoted per hour. Decimal prefixes (GB, TB/s,
TFLOP/s, billions of parameters) are for display; memory a process must fit is in GiB.
"""

from __future__ import annotations

from collections.abc import Iterable
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


# Decimal prefixes for display, largest first: (factor, prefix of a count, prefix of bytes).
_PREFIXES = ((GIGA, " B", " GB"), (MEGA, " M", " MB"), (1e3, " K", " kB"))


def _scaled(value: float, digits: int, bytes_: bool) -> str:
    """`value` in the largest decimal prefix it reaches (at least 1 of it), to `digits`
    decimals; below a thousand the value itself, whole."""
    for factor, count_prefix, bytes_prefix in _PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.{digits}f}{bytes_prefix if bytes_ else count_prefix}"
    return f"{value:.0f}{' bytes' if bytes_ else ''}"


def count_text(count: float, digits: int = 3) -> str:
    """A count (of parameters) for display in billions, millions or thousands, whichever it
    reaches: '30.532 B', '124.440 M', '90.368 K'; below a thousand the count, '512'."""
    return _scaled(count, digits, bytes_=False)


def bytes_text(nbytes: float, digits: int = 3) -> str:
    """Bytes for display in GB, MB or kB (decimal), whichever they reach: '20.91 GB',
    '37.749 MB', '361.472 kB'; below a kilobyte the bytes, '512 bytes'."""
    return _scaled(nbytes, digits, bytes_=True)


def span_text(low: int, high: int) -> str:
    """A range of counts for display: '16-64', or the one value where both ends are it, '16'."""
    return f"{low}" if low == high else f"{low}-{high}"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` and `noun`, singular for a count of 1: plural(1, "query") is "1 query",
    plural(3, "query") "3 queries", plural(2, "batch") "2 batches"; `many` gives an irregular
    plural."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
            many = noun[:-1] + "ies"
        elif noun.endswith(("s", "x", "ch", "sh")):
            many = noun + "es"
        else:
            many = noun + "s"
    return f"{count} {many}"


def one_of(values: Iterable[Any], last: str = "or") -> str:
    """Values for a message, as a person lists them: one_of(["a", "b", "c"]) is "a, b or c"
    (`last` "and" gives "a, b and c"); not a Python list's repr."""
    words = [str(value) for value in values]
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"
