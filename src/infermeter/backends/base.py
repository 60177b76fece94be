"""The seam every backend plugs into: run one (p, o, batch) point, return a Measurement.

Backends that run the model here (engine, hf) also take `window`, an energy window
(infermeter.measure.meter.Window: begin(), end()), in `measure` and in a dataset `generate`, and
open
and close it around exactly the work they time, on whichever processes and GPUs do it: the one
contract between backends and the meter. An API backend has no GPU of its own to meter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from infermeter.spec.model import ModelSpec


@dataclass(frozen=True, order=True)
class Point:
    """One profiled configuration: prompt tokens, output tokens, batch size, trial index."""

    prompt_tokens: int
    output_tokens: int
    batch_size: int = 1
    trial: int = 0


@dataclass
class Measurement:
    """What a backend measured for one Point.

    runtime_s is end to end (prompt encoding + all output tokens); ttft_s is the time to the
    first output token. energy_j is filled by a meter when one is present.
    """

    runtime_s: float
    ttft_s: float | None = None
    output_tokens_actual: int | None = None
    energy_j: float | None = None
    status: str = "ok"  # ok | error | flagged
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """A stack that can run points. One module per backend under infermeter.backends."""

    name: str

    def prepare(self, spec: ModelSpec) -> None:
        """Build or connect to the model; called once before any point."""

    def measure(self, point: Point) -> Measurement:
        """Run one point (warm-up is the backend's business) and return its measurement.

        A backend whose first visit of a shape does untimed setup may also offer
        `warm(point) -> None`, doing that setup alone: a metered profile calls it before an
        energy window opens (experiments.profile.measure_point)."""

    def describe(self) -> dict[str, Any]:
        """Software versions, device name and options, stored with the run."""

    def close(self) -> None:
        """Free the model and the device."""
