"""One energy window: what a meter measured between two edges, and the handle work holds.

EnergyWindow is the result (energy per GPU by the counter or integrated power, with the
integrated figure beside it); Window is the contract between a meter and the timed work
(infermeter.measure.meter.Meter, or measure.cluster.ClusterMeter over several nodes). Both
sit below the meters so that each meter can use them without importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class _Now(Protocol):
    def now(self) -> float: ...


class Edges(Protocol):
    """What a Window needs of its meter: a clock and named window edges (Meter, ClusterMeter)."""

    clock: _Now

    def begin(self, name: str, sync: Callable[[], None] | None = None) -> None:
        """Open window `name`."""

    def end(self, name: str, sync: Callable[[], None] | None = None) -> EnergyWindow:
        """Close window `name` and return what it measured."""


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
    # The card's state as the work ended (hottest GPU, slowest SM clock; None where NVML cannot
    # tell): at its power limit a GPU's clock, and so a query's time and joules, follow it.
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None

    @property
    def seconds(self) -> float:
        """The window's length in seconds, on its meter's clock."""
        return self.end - self.start

    @property
    def total_j(self) -> float | None:
        """Energy (J) summed over the GPUs; None where nothing was measured."""
        return float(sum(self.energy_j)) if self.energy_j is not None else None

    @property
    def above_idle_j(self) -> float | None:
        """Energy (J) above the measured idle power over the window's length; None without idle
        power or energy."""
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
            "gpu_temperature_c": self.temperature_c,
            "sm_clock_mhz": self.sm_clock_mhz,
        }


class Window:
    """One energy window of a Meter around timed work: the contract between meter and work.

    The work calls begin() just before and end() just after what it times, on whichever
    process does it (an engine's ranks relay both edges to their parent, which reads every
    GPU's counter); or a caller holds it around whole calls: `with meter.window() as w:`.
    begin() and end() are idempotent, end() before begin() does nothing, and close() (= end)
    ends a window an error left open. `result` is the EnergyWindow once ended.
    """

    def __init__(self, meter: Edges, name: str) -> None:
        self.meter, self.name = meter, name
        self.result: EnergyWindow | None = None
        self.opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        """True between begin() and end()."""
        return self.opened_at is not None

    def begin(self, sync: Callable[[], None] | None = None) -> None:
        """Open the window (reads every GPU's counter); `sync` makes the edge exact."""
        if self.opened_at is None and self.result is None:
            self.meter.begin(self.name, sync)
            self.opened_at = self.meter.clock.now()

    def end(self, sync: Callable[[], None] | None = None) -> EnergyWindow | None:
        """Close the window and return its EnergyWindow (None if it never opened)."""
        if self.opened_at is not None:
            self.opened_at = None
            self.result = self.meter.end(self.name, sync)
        return self.result

    close = end

    def elapsed(self) -> float:
        """Seconds since begin() on the meter's clock (0 when not open)."""
        return 0.0 if self.opened_at is None else self.meter.clock.now() - self.opened_at

    def __enter__(self) -> Window:
        self.begin()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
