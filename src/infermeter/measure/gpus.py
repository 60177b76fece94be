"""Which GPUs a run's work runs on, resolved once into NVML devices.

CUDA numbers the GPUs a process sees from 0, after CUDA_VISIBLE_DEVICES has picked and ordered
them (by index, by UUID or a unique prefix of one, or by MIG instance); NVML numbers every GPU
of the machine and ignores that variable. `resolve_gpus("cuda:N", count)` maps the CUDA
ordinals N .. N + count - 1 (one GPU, or the ranks of tensor parallelism) to the NVML devices
behind them; the backend runs on those ordinals and the meter, pricing and power caps use the
GpuRefs, so all four name the same cards. Where an entry cannot be mapped with certainty the
answer is a one-line UserError, never another device.

The mapping, most exact first: the UUID torch reports for the ordinal (where torch already runs
CUDA in this process), matched against NVML's (nvmlDeviceGetUUID, and
nvmlDeviceGetMigDeviceHandleByIndex for MIG instances); else the CUDA_VISIBLE_DEVICES entry at
that ordinal: an index (NVML's, when CUDA numbers by PCI bus like NVML: CUDA_DEVICE_ORDER=
PCI_BUS_ID, or GPUs all of one model), a `GPU-…` UUID or unique prefix, a `MIG-…` UUID or a
legacy `MIG-GPU-<uuid>/<gi>/<ci>` name; without the variable, ordinal N is NVML's GPU N.
NVML reference: https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infermeter.errors import UserError


@dataclass(frozen=True)
class GpuRef:
    """One GPU (or MIG instance) a run uses: its CUDA ordinal here and its NVML identity."""

    cuda_index: int  # the ordinal this process's CUDA uses (cuda:N)
    nvml_index: int  # NVML's index of the physical GPU (the parent of a MIG instance)
    uuid: str  # NVML's UUID: "GPU-…", or "MIG-…" for a MIG instance
    name: str  # NVML's product name, e.g. "NVIDIA H200"
    mig: bool = False

    def handle(self, nvml: Any) -> Any:
        """The NVML handle (nvmlDeviceGetHandleByIndex, or ByUUID for a MIG instance)."""
        if self.mig:
            return nvml.nvmlDeviceGetHandleByUUID(self.uuid)
        return nvml.nvmlDeviceGetHandleByIndex(self.nvml_index)

    def __str__(self) -> str:
        if self.mig:
            return f"MIG instance {self.uuid} of GPU {self.nvml_index}"
        return f"GPU {self.nvml_index} ({self.uuid})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (CUDA and NVML index, UUID, name, MIG), for a run's recorded GPUs."""
        return {
            "cuda_index": self.cuda_index,
            "nvml_index": self.nvml_index,
            "uuid": self.uuid,
            "name": self.name,
            "mig": self.mig,
        }


def nvml_error(nvml: Any) -> type[BaseException]:
    """The NVMLError class of `nvml` (pynvml or a stand-in with the same interface)."""
    error = getattr(nvml, "NVMLError", None)
    return error if isinstance(error, type) and issubclass(error, BaseException) else OSError


DEVICES = "auto, cuda, cuda:N (N = 0, 1, ...) or cpu"  # what --device accepts


def check_device(device: str, flag: str = "--device") -> str:
    """`device` as --device accepts it: auto, cuda, cuda:N or cpu. Raises UserError, naming
    `flag` and the accepted values, for anything else (a device never silently becomes the
    CPU)."""
    text = str(device).strip()
    head, sep, tail = text.partition(":")
    if text in ("auto", "cuda", "cpu") or (head == "cuda" and sep and tail.isdigit()):
        return text
    raise UserError(f"{flag} {device!r} is not a device infermeter runs on; use {DEVICES}")


def cuda_ordinal(device: str) -> int:
    """N of "cuda:N"; 0 for "cuda" and "auto". Raises UserError for anything else."""
    text = str(device).strip()
    if text in ("cuda", "auto", ""):
        return 0
    head, _, tail = text.partition(":")
    if head == "cuda" and tail.isdigit():
        return int(tail)
    raise UserError(f"device {device!r} is not a GPU; use cuda or cuda:N (N = 0, 1, ...)")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bare(uuid: str) -> str:
    """A UUID without its GPU-/MIG- prefix, lower case (torch reports it bare)."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text


@dataclass
class _Device:
    index: int
    uuid: str
    name: str
    handle: Any


@dataclass
class _Mig:
    parent: _Device
    uuid: str
    gpu_instance: int | None
    compute_instance: int | None


class _Inventory:
    """NVML's GPUs, read once; their MIG instances read when first asked for."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.error = nvml_error(nvml)
        self.devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            self.devices.append(_Device(index, uuid, name, handle))
        self._migs: list[_Mig] | None = None

    def migs(self) -> list[_Mig]:
        if self._migs is None:
            self._migs = [m for d in self.devices for m in self._migs_of(d)]
        return self._migs

    def _migs_of(self, device: _Device) -> list[_Mig]:
        nvml = self.nvml
        try:
            current, _ = nvml.nvmlDeviceGetMigMode(device.handle)
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(device.handle) if current == 1 else 0
        except (self.error, AttributeError):  # no MIG on this GPU or in this NVML
            return []
        out = []
        for slot in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device.handle, slot)
            except self.error:  # an empty slot (NVML_ERROR_NOT_FOUND)
                continue
            uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            try:
                gi = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
                ci = int(nvml.nvmlDeviceGetComputeInstanceId(mig))
            except self.error:
                gi = ci = None
            out.append(_Mig(device, uuid, gi, ci))
        return out

    def ref(self, ordinal: int, device: _Device) -> GpuRef:
        return GpuRef(ordinal, device.index, device.uuid, device.name)

    def mig_ref(self, ordinal: int, mig: _Mig) -> GpuRef:
        return GpuRef(ordinal, mig.parent.index, mig.uuid, mig.parent.name, mig=True)

    def by_bare_uuid(self, ordinal: int, bare: str) -> GpuRef | None:
        for device in self.devices:
            if _bare(device.uuid) == bare:
                return self.ref(ordinal, device)
        for mig in self.migs():
            if _bare(mig.uuid) == bare:
                return self.mig_ref(ordinal, mig)
        return None


def _entries(environ: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it (up to its first invalid entry), or None."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for part in raw.split(","):
        part = part.strip()
        if not part or (part.lstrip("-").isdigit() and int(part) < 0):
            break  # CUDA ignores everything from an invalid entry on
        entries.append(part)
    return entries


def _torch_uuid(ordinal: int) -> str | None:
    """The UUID torch's CUDA reports for `ordinal`, where torch already runs in this process."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return str(torch.cuda.get_device_properties(ordinal).uuid)
    except (RuntimeError, AssertionError, AttributeError):
        return None


def resolve_gpus(
    device: str = "cuda",
    count: int = 1,
    nvml: Any = None,
    environ: Mapping[str, str] | None = None,
    cuda_uuid: Callable[[int], str | None] | None = _torch_uuid,
) -> list[GpuRef]:
    """The NVML devices behind CUDA ordinals `cuda_ordinal(device)` .. + `count` - 1.

    `nvml` is an initialised pynvml (or a stand-in); `environ` defaults to os.environ;
    `cuda_uuid(ordinal)` gives the UUID CUDA reports for an ordinal, or None (default: torch's,
    when torch is imported and sees CUDA). Raises UserError when an ordinal is not visible, an
    entry names no GPU of this machine (or several), or CUDA and NVML may number the GPUs
    differently; NVMLError when NVML itself fails.
    """
    if count < 1:
        raise UserError(f"a run needs at least one GPU, not {count}")
    first = cuda_ordinal(device)
    env = os.environ if environ is None else environ
    entries = _entries(env)
    inventory = _Inventory(nvml)
    visible = len(entries) if entries is not None else len(inventory.devices)
    if first + count > visible:
        shown = env.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={shown!r}" if shown is not None else "this machine"
        raise UserError(
            f"{'cuda:' + str(first) if first else 'cuda'} with {count} GPU(s) needs CUDA "
            f"ordinals {first}..{first + count - 1}, but {where} shows {visible}; pick another "
            "--device or fewer --tp/--shards"
        )
    refs = []
    for ordinal in range(first, first + count):
        exact = cuda_uuid(ordinal) if cuda_uuid is not None else None
        ref = inventory.by_bare_uuid(ordinal, _bare(exact)) if exact else None
        if ref is None:
            entry = entries[ordinal] if entries is not None else str(ordinal)
            ref = _by_entry(inventory, ordinal, entry, env)
        refs.append(ref)
    uuids = [r.uuid for r in refs]
    if len(set(uuids)) != len(uuids):
        raise UserError(
            f"CUDA_VISIBLE_DEVICES names one GPU twice ({', '.join(uuids)}); list each once"
        )
    return refs


def _by_entry(inventory: _Inventory, ordinal: int, entry: str, env: Mapping[str, str]) -> GpuRef:
    """One CUDA_VISIBLE_DEVICES entry (or a bare ordinal) as an NVML device."""
    devices = inventory.devices
    if entry.isdigit():
        index = int(entry)
        if index >= len(devices):
            raise UserError(
                f"CUDA_VISIBLE_DEVICES entry {entry} names no GPU: NVML sees {len(devices)}"
            )
        models = {d.name for d in devices}
        if len(models) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            raise UserError(
                f"this machine mixes GPU models ({', '.join(sorted(models))}), which CUDA "
                "numbers fastest first and NVML by PCI bus, so GPU indices may not match: set "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID"
            )
        return inventory.ref(ordinal, devices[index])
    lowered = entry.lower()
    if lowered.startswith("mig-"):
        return _mig_entry(inventory, ordinal, entry)
    if lowered.startswith("gpu-"):
        found = [d for d in devices if d.uuid.lower().startswith(lowered)]
        if len(found) == 1:
            return inventory.ref(ordinal, found[0])
        what = "no GPU of this machine" if not found else f"{len(found)} GPUs"
        raise UserError(
            f"CUDA_VISIBLE_DEVICES entry {entry} matches {what}; give a GPU UUID from "
            "`nvidia-smi -L`"
        )
    raise UserError(
        f"CUDA_VISIBLE_DEVICES entry {entry!r} is not an index, a GPU- UUID or a MIG- UUID; "
        "see `nvidia-smi -L`"
    )


def _mig_entry(inventory: _Inventory, ordinal: int, entry: str) -> GpuRef:
    migs = inventory.migs()
    lowered = entry.lower()
    if lowered.startswith("mig-gpu-"):  # legacy MIG-GPU-<uuid>/<gpu instance>/<compute instance>
        parent, _, rest = entry[4:].partition("/")
        gi, _, ci = rest.partition("/")
        found = [
            m
            for m in migs
            if m.parent.uuid.lower() == parent.lower()
            and str(m.gpu_instance) == gi
            and str(m.compute_instance) == ci
        ]
    else:
        found = [m for m in migs if m.uuid.lower().startswith(lowered)]
    if len(found) != 1:
        raise UserError(
            f"CUDA_VISIBLE_DEVICES entry {entry} matches "
            f"{'no MIG instance of this machine' if not found else f'{len(found)} instances'}; "
            "give a MIG UUID from `nvidia-smi -L`"
        )
    return inventory.mig_ref(ordinal, found[0])
