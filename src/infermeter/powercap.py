"""GPU power capping through NVML, put back however the run ends (the paper's Table III).

Only `infermeter energy --power-limit` uses this, and only on the GPUs the run uses: a power
limit is a machine-wide setting that outlives the process, so it must never be changed on a GPU
that is not the user's own. `PowerCap` checks the requested watts against every GPU's allowed
range before touching any, sets them, and restores each GPU's original limit on leaving the
`with` block, on an exception, on SIGINT or SIGTERM (handlers restore, then behave as before),
and at interpreter exit. A worker rank that crashes surfaces as an exception in this process,
so it takes the exception path. Only SIGKILL (or power loss) can skip the restore; then
`nvidia-smi -pl` puts it back by hand, and a driver reload resets it.

Setting a limit needs root. Without the permission nothing is changed and a UserError says so.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from infermeter.errors import UserError
from infermeter.gpus import GpuRef
from infermeter.meter import load_nvml

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class GpuLimit:
    gpu: int
    original_w: float
    min_w: float
    max_w: float


def _code(error: BaseException) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


def _why(error: BaseException) -> str:
    code = _code(error)
    if code == NVML_ERROR_NO_PERMISSION or "permission" in str(error).lower():
        return "no permission (setting a GPU power limit needs root)"
    if code == NVML_ERROR_NOT_SUPPORTED:
        return "this GPU does not support setting a power limit"
    return f"NVML: {error}"


class PowerCap:
    """Cap `gpus` (NVML indices) at `watts` inside a `with` block; restore on every exit."""

    def __init__(
        self,
        watts: float,
        gpus: Sequence[int | GpuRef],
        nvml: Any | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if not watts > 0:
            raise UserError(f"--power-limit must be a positive number of watts, got {watts}")
        if not gpus:
            raise UserError("--power-limit needs at least one GPU")
        self.watts = float(watts)
        self.gpus = list(gpus)
        self._nvml = nvml
        self._on_note = on_note
        self.limits: list[GpuLimit] = []
        self._handles: list[Any] = []
        self._changed: list[int] = []  # positions in self.gpus whose limit we set
        self._previous: dict[int, Any] = {}
        self._lock = threading.RLock()

    # ---- reading and checking ---------------------------------------------------------------
    def _open(self) -> None:
        if self._nvml is None:
            self._nvml, note = load_nvml()
            if self._nvml is None:
                raise UserError(f"--power-limit needs NVML: {note}; nothing was changed")
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        for gpu in self.gpus:
            if isinstance(gpu, GpuRef):
                if gpu.mig:
                    raise UserError(
                        f"--power-limit: {gpu} is a MIG instance, and a power limit is the "
                        "whole GPU's, shared with its other instances; nothing was changed"
                    )
                handle = gpu.handle(nvml)
                gpu = gpu.nvml_index
            elif not 0 <= gpu < count:
                raise UserError(f"--power-limit: no GPU {gpu} (this machine has {count})")
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
            try:
                original = nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
                low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            except Exception as error:
                raise UserError(
                    f"cannot read GPU {gpu}'s power limits ({_why(error)}); nothing was changed"
                ) from error
            self._handles.append(handle)
            self.limits.append(GpuLimit(gpu, original, low / 1000.0, high / 1000.0))
        for limit in self.limits:
            if not limit.min_w <= self.watts <= limit.max_w:
                raise UserError(
                    f"power limit {self.watts:g} W is outside GPU {limit.gpu}'s allowed range "
                    f"{limit.min_w:g}-{limit.max_w:g} W; nothing was changed"
                )

    # ---- setting and restoring --------------------------------------------------------------
    def _set(self, index: int, watts: float) -> None:
        self._nvml.nvmlDeviceSetPowerManagementLimit(self._handles[index], round(watts * 1000))

    def apply(self) -> PowerCap:
        self._open()
        with self._lock:
            for index, limit in enumerate(self.limits):
                try:
                    self._set(index, self.watts)
                except Exception as error:
                    self.restore()  # GPUs already capped go back: nothing stays changed
                    raise UserError(
                        f"cannot set GPU {limit.gpu}'s power limit to {self.watts:g} W "
                        f"({_why(error)}); nothing was changed"
                    ) from error
                self._changed.append(index)
            atexit.register(self.restore)
            self._install_handlers()
        if self._on_note:
            was = ", ".join(f"GPU {x.gpu}: {x.original_w:g} W" for x in self.limits)
            self._on_note(f"power limit set to {self.watts:g} W ({was} before; restored on exit)")
        return self

    def restore(self) -> list[str]:
        """Put every changed GPU back to its original limit (idempotent); returns failures."""
        failures = []
        with self._lock:
            while self._changed:
                index = self._changed.pop()
                limit = self.limits[index]
                try:
                    self._set(index, limit.original_w)
                except Exception as error:  # keep restoring the others
                    failures.append(
                        f"GPU {limit.gpu}: could not restore {limit.original_w:g} W ({error}); "
                        f"run: nvidia-smi -i {limit.gpu} -pl {limit.original_w:g}"
                    )
            self._remove_handlers()
            atexit.unregister(self.restore)
        if failures and self._on_note:
            for failure in failures:
                self._on_note(failure)
        return failures

    @property
    def active(self) -> bool:
        return bool(self._changed)

    # ---- signals ------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still runs
        for signum in _SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _remove_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in list(self._previous.items()):
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            del self._previous[signum]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)
        self.restore()  # first, so the GPU is back whatever the rest of shutdown does
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIGTERM with the default action: exit as it would have, unwinding `finally`s
            raise SystemExit(128 + signum)

    # ---- context manager ----------------------------------------------------------------------
    def __enter__(self) -> PowerCap:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.restore()
