"""GPU power capping through NVML that cannot outlive the run (the paper's Table III).

Only `infermeter energy --power-limit` uses this, and only on the GPUs the run uses (GpuRefs
from infermeter.measure.gpus, held by UUID): a power limit is a machine-wide setting that outlives
the
process, so it must never be changed on a GPU that is not the user's own, nor left changed.

`PowerCap.apply()`, in this order:
1. reads each GPU's limit, allowed range and default, and refuses, before touching any: a MIG
   instance (the limit is the whole GPU's), watts out of range, and a GPU that the state file
   says an earlier run left capped (killed with SIGKILL, or the machine lost power: its limit
   now is not the original, and restoring to it would make the cap permanent);
2. writes the originals to the state file (`state_path()`), keyed by UUID, with this pid;
3. registers the restore (atexit, and SIGINT / SIGTERM handlers that unwind instead of dying),
   then caps the GPUs one by one, each noted as changed before it is set.
Any exception on the way (KeyboardInterrupt and SystemExit included) restores what was set.

`restore()` puts every changed GPU back, with signals held off until it is done, and removes
their entries from the state file. A signal the process ignores (SIG_IGN) stays ignored and a
handler that returns lets the run go on: the cap stays while measuring goes on, and is
restored when the run ends. A handler that raises unwinds through the `with` block, which
restores; the runs stop measuring there. SIGKILL skips all this; the state file then tells the
next run, which refuses to cap and offers `infermeter energy --restore-power-limit`
(`restore_power_limits`). Setting a limit needs root: without it nothing is changed and a
UserError says so. NVML reference:
https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceCommands.html
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from infermeter.errors import UserError
from infermeter.measure.gpus import GpuRef, nvml_error, resolve_gpus
from infermeter.measure.meter import load_nvml
from infermeter.units import mw_to_w, w_to_mw

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESTORE_HINT = "infermeter energy --restore-power-limit"


def state_path() -> Path:
    """The file where caps in force are recorded: $INFERMETER_STATE_DIR/power_limits.json,
    else $XDG_STATE_HOME/infermeter/…, else ~/.local/state/infermeter/…"""
    base = os.environ.get("INFERMETER_STATE_DIR")
    if base:
        return Path(base) / "power_limits.json"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "infermeter" / "power_limits.json"


@contextlib.contextmanager
def _state(path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The state file's entries, read and written back under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            entries = {}
        before = json.dumps(entries, sort_keys=True)
        yield entries
        if json.dumps(entries, sort_keys=True) != before:
            if entries:
                part = path.with_suffix(".part")
                part.write_text(json.dumps(entries, indent=1, sort_keys=True))
                part.replace(path)  # atomic: a kill mid-write leaves the old file
            else:
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class GpuLimit:
    """One GPU's power limits (W) as NVML reported them before capping: the limit in force, the
    allowed range (nvmlDeviceGetPowerManagementLimitConstraints) and the default."""

    gpu: int  # NVML index
    original_w: float
    min_w: float
    max_w: float
    default_w: float | None = None
    uuid: str = ""


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


def _ref(nvml: Any, gpu: int | GpuRef) -> GpuRef:
    """A GpuRef for an NVML index (its UUID read from NVML)."""
    if isinstance(gpu, GpuRef):
        return gpu
    count = nvml.nvmlDeviceGetCount()
    if not 0 <= gpu < count:
        raise UserError(f"--power-limit: no GPU {gpu} (this machine has {count})")
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
    uuid, name = nvml.nvmlDeviceGetUUID(handle), nvml.nvmlDeviceGetName(handle)
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in (uuid, name)]
    return GpuRef(gpu, gpu, text[0], text[1])


def _left_capped(entry: dict[str, Any], uuid: str) -> str:
    return (
        f"GPU {entry.get('nvml_index', '?')} ({uuid}) was left at {mw_to_w(entry['set_mw']):g} W "
        f"by an earlier run (pid {entry['pid']}) that did not finish; its limit before was "
        f"{mw_to_w(entry['original_mw']):g} W"
    )


class PowerCap:
    """Cap `gpus` (GpuRefs, or NVML indices) at `watts` inside a `with` block; restored on every
    exit a process can see (see the module doc). Raises UserError before changing anything
    when it cannot cap them all."""

    def __init__(
        self,
        watts: float,
        gpus: Sequence[int | GpuRef],
        nvml: Any | None = None,
        on_note: Callable[[str], None] | None = None,
        state_file: Path | None = None,
    ) -> None:
        if not watts > 0:
            raise UserError(f"--power-limit must be a positive number of watts, got {watts}")
        if not gpus:
            raise UserError("--power-limit needs at least one GPU")
        self.watts = float(watts)
        self.gpus = list(gpus)
        self._nvml = nvml
        self._on_note = on_note
        self.state_file = state_file or state_path()
        self.limits: list[GpuLimit] = []
        self._handles: list[Any] = []
        self._changed: list[int] = []  # positions in self.limits whose limit may be set
        self._previous: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._restoring = False
        self._pending: list[tuple[int, FrameType | None]] = []

    # ---- reading and checking ---------------------------------------------------------------
    def _open(self) -> None:
        if self._nvml is None:
            self._nvml, note = load_nvml()
            if self._nvml is None:
                raise UserError(f"--power-limit needs NVML: {note}; nothing was changed")
        nvml = self._nvml
        error = nvml_error(nvml)
        self.limits, self._handles = [], []
        for gpu in self.gpus:
            ref = _ref(nvml, gpu)
            if ref.mig:
                raise UserError(
                    f"--power-limit: {ref} is a MIG instance, and a power limit is the whole "
                    "GPU's, shared with its other instances; nothing was changed"
                )
            handle = ref.handle(nvml)
            try:
                original = mw_to_w(nvml.nvmlDeviceGetPowerManagementLimit(handle))
                low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            except error as failure:
                raise UserError(
                    f"cannot read GPU {ref.nvml_index}'s power limits ({_why(failure)}); "
                    "nothing was changed"
                ) from failure
            try:
                default: float | None = mw_to_w(
                    nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
                )
            except error:
                default = None
            self._handles.append(handle)
            self.limits.append(
                GpuLimit(ref.nvml_index, original, mw_to_w(low), mw_to_w(high), default, ref.uuid)
            )
        for limit in self.limits:
            if not limit.min_w <= self.watts <= limit.max_w:
                raise UserError(
                    f"power limit {self.watts:g} W is outside GPU {limit.gpu}'s allowed range "
                    f"{limit.min_w:g}-{limit.max_w:g} W; nothing was changed"
                )

    def _claim(self) -> None:
        """Record the originals in the state file, refusing GPUs another run holds capped."""
        with _state(self.state_file) as entries:
            for limit in self.limits:
                entry = entries.get(limit.uuid)
                if entry is None or entry.get("pid") == os.getpid():
                    continue
                if w_to_mw(limit.original_w) == entry["original_mw"]:
                    del entries[limit.uuid]  # put back, but killed before saying so: stale
                    continue
                if _alive(int(entry["pid"])):
                    raise UserError(
                        f"GPU {limit.gpu} is capped by another infermeter run (pid "
                        f"{entry['pid']}); wait for it to end or pick another GPU"
                    )
                raise UserError(
                    f"{_left_capped(entry, limit.uuid)}: run `{RESTORE_HINT}` first; nothing "
                    "was changed"
                )
            for limit in self.limits:
                entries[limit.uuid] = {
                    "nvml_index": limit.gpu,
                    "original_mw": w_to_mw(limit.original_w),
                    "set_mw": w_to_mw(self.watts),
                    "pid": os.getpid(),
                }

    def _release_claim(self, uuids: Sequence[str]) -> None:
        with _state(self.state_file) as entries:
            for uuid in uuids:
                if entries.get(uuid, {}).get("pid") == os.getpid():
                    del entries[uuid]

    # ---- setting and restoring --------------------------------------------------------------
    def _set(self, index: int, watts: float) -> None:
        self._nvml.nvmlDeviceSetPowerManagementLimit(self._handles[index], w_to_mw(watts))

    def apply(self) -> PowerCap:
        """Cap every GPU (see the module doc for the order); returns self."""
        self._open()
        for limit in self.limits:
            if limit.default_w is not None and limit.original_w < limit.default_w:
                self._note(
                    f"GPU {limit.gpu}'s power limit is {limit.original_w:g} W, below its default "
                    f"{limit.default_w:g} W: if an earlier run left it so, `{RESTORE_HINT}` "
                    "puts it back; it is restored to "
                    f"{limit.original_w:g} W after this run"
                )
        self._claim()
        with self._lock:
            atexit.register(self.restore)
            self._install_handlers()
            try:
                for index, limit in enumerate(self.limits):
                    self._changed.append(index)  # before the set: a signal may land in it
                    try:
                        self._set(index, self.watts)
                    except nvml_error(self._nvml) as error:
                        raise UserError(
                            f"cannot set GPU {limit.gpu}'s power limit to {self.watts:g} W "
                            f"({_why(error)}); nothing was changed"
                        ) from error
            except BaseException:
                self.restore()  # GPUs already capped go back: nothing stays changed
                raise
        was = ", ".join(f"GPU {x.gpu}: {x.original_w:g} W" for x in self.limits)
        self._note(f"power limit set to {self.watts:g} W ({was} before; restored on exit)")
        return self

    def restore(self) -> list[str]:
        """Put every changed GPU back to its original limit (idempotent); returns failures.
        SIGINT and SIGTERM wait until it is done."""
        failures = []
        with self._lock:
            self._restoring = True
            try:
                restored = []
                while self._changed:
                    index = self._changed.pop()
                    limit = self.limits[index]
                    try:
                        self._set(index, limit.original_w)
                        restored.append(limit.uuid)
                    except nvml_error(self._nvml) as error:  # keep restoring the others
                        failures.append(
                            f"GPU {limit.gpu}: could not restore {limit.original_w:g} W "
                            f"({error}); run: {RESTORE_HINT}"
                        )
                if restored:
                    self._release_claim(restored)
                self._remove_handlers()
                atexit.unregister(self.restore)
            finally:
                self._restoring = False
        for failure in failures:
            self._note(failure)
        for signum, frame in self._pending:  # what arrived meanwhile, as it would have
            self._pending = []
            self._dispatch(signum, frame)
        return failures

    def current_w(self) -> list[float | None]:
        """The limit (W) NVML reports for each capped GPU now; None where it cannot tell."""
        out: list[float | None] = []
        for handle in self._handles:
            try:
                out.append(mw_to_w(self._nvml.nvmlDeviceGetPowerManagementLimit(handle)))
            except nvml_error(self._nvml):
                out.append(None)
        return out

    @property
    def active(self) -> bool:
        """True while a limit this PowerCap set is still in force (not yet restored)."""
        return bool(self._changed)

    def _note(self, text: str) -> None:
        if self._on_note:
            self._on_note(text)

    # ---- signals ------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still runs
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue  # ignored stays ignored: the run goes on capped
            self._previous[signum] = previous
            signal.signal(signum, self._on_signal)

    def _remove_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in list(self._previous.items()):
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            del self._previous[signum]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._restoring:
            self._pending.append((signum, frame))
            return
        self._dispatch(signum, frame, self._previous.get(signum))

    def _dispatch(self, signum: int, frame: FrameType | None, previous: Any = None) -> None:
        """What the signal would have done without us, but unwinding (so `finally` and the
        `with` block restore) where it would have killed the process outright."""
        if previous is None:
            previous = signal.getsignal(signum)
        if callable(previous) and previous != self._on_signal:
            previous(signum, frame)  # raises (Ctrl-C, the CLI's SIGTERM) or lets the run go on
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


# ---- caps an earlier run left behind --------------------------------------------------------


def leftover_caps(
    nvml: Any, gpus: Sequence[GpuRef] | None = None, state_file: Path | None = None
) -> list[str]:
    """Lines about caps an earlier run left: state entries of processes that are gone (for
    `gpus`, or all), and `gpus` whose limit is below NVML's default."""
    lines = []
    wanted = {g.uuid for g in gpus} if gpus is not None else None
    with _state(state_file or state_path()) as entries:
        for uuid, entry in entries.items():
            if (wanted is None or uuid in wanted) and not _alive(int(entry["pid"])):
                lines.append(f"{_left_capped(entry, uuid)}: run `{RESTORE_HINT}`")
        recorded = set(entries)
    for ref in gpus or []:
        if ref.mig or ref.uuid in recorded:
            continue
        limit, default = _limit_and_default(nvml, ref)
        if limit is not None and default is not None and limit < default:
            lines.append(
                f"{ref} has a power limit of {limit:g} W, below its default {default:g} W; if "
                f"an earlier run left it so, `{RESTORE_HINT}` resets it"
            )
    return lines


def leftover_power_caps(device: str = "cuda", count: int = 1) -> list[str]:
    """leftover_caps for the GPUs a run on `device` with `count` GPUs uses (none without
    NVML)."""
    nvml, _ = load_nvml()
    if nvml is None:
        return []
    return leftover_caps(nvml, resolve_gpus(device, count, nvml))


def _limit_and_default(nvml: Any, ref: GpuRef) -> tuple[float | None, float | None]:
    handle = ref.handle(nvml)
    try:
        limit = mw_to_w(nvml.nvmlDeviceGetPowerManagementLimit(handle))
        default = mw_to_w(nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle))
    except nvml_error(nvml):
        return None, None
    return limit, default


def restore_power_limits(
    nvml: Any | None = None,
    device: str = "cuda",
    count: int = 1,
    state_file: Path | None = None,
) -> list[str]:
    """Put back the limits earlier runs left set, and say what was done.

    Every state-file entry whose process is gone goes back to its recorded original and is
    removed. Without any, the GPUs a run on `device` with `count` GPUs would use (resolved as
    infermeter.measure.gpus does) that sit below NVML's default limit are reset to it. Raises
    UserError without NVML or without the permission to set a limit (root).
    """
    if nvml is None:
        nvml, note = load_nvml()
        if nvml is None:
            raise UserError(f"--restore-power-limit needs NVML: {note}")
    error = nvml_error(nvml)
    done = []
    with _state(state_file or state_path()) as entries:
        for uuid, entry in list(entries.items()):
            if _alive(int(entry["pid"])):
                done.append(f"{uuid}: still capped by a running run (pid {entry['pid']}), left")
                continue
            original = int(entry["original_mw"])
            try:
                nvml.nvmlDeviceSetPowerManagementLimit(
                    nvml.nvmlDeviceGetHandleByUUID(uuid), original
                )
            except error as failure:
                raise UserError(
                    f"cannot restore GPU {entry.get('nvml_index', '?')}'s power limit to "
                    f"{mw_to_w(original):g} W ({_why(failure)})"
                ) from failure
            del entries[uuid]
            done.append(
                f"GPU {entry.get('nvml_index', '?')} ({uuid}): power limit restored to "
                f"{mw_to_w(original):g} W (left at {mw_to_w(entry['set_mw']):g} W by pid "
                f"{entry['pid']})"
            )
    if done:
        return done
    for ref in resolve_gpus(device, count, nvml):
        if ref.mig:
            continue
        limit, default = _limit_and_default(nvml, ref)
        if limit is None or default is None or limit >= default:
            continue
        try:
            nvml.nvmlDeviceSetPowerManagementLimit(ref.handle(nvml), w_to_mw(default))
        except error as failure:
            raise UserError(f"cannot reset {ref}'s power limit ({_why(failure)})") from failure
        done.append(f"{ref}: power limit reset from {limit:g} W to its default {default:g} W")
    return done or ["no power limit left set: nothing to restore"]
