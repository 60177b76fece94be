"""Will the weights fit? A check before building a model, so a user gets a sentence, not a kill.

On a GPU an allocation that does not fit raises (and the backends turn that into a message);
in host memory it does not: Linux overcommits, and the kernel's OOM killer ends the process
with no word. So before weights are made, their bytes are set against what the device has.
"""

from __future__ import annotations

from pathlib import Path

from infermeter.errors import DoesNotFit
from infermeter.spec.model import DTYPE_BYTES, ModelSpec
from infermeter.units import kib_to_bytes, to_gib

# Weights are not all a run holds (activations, KV cache, the framework itself): keep room.
HEADROOM = 0.9


def available_bytes(device: str) -> int | None:
    """Free memory of `device` ("cpu", "cuda", "cuda:N"), or None where it cannot be told."""
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
            free, _ = torch.cuda.mem_get_info(index)
            return int(free)
        except Exception:  # no torch, no driver: the allocation itself will tell
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return kib_to_bytes(int(line.split()[1]))
    except OSError:
        pass
    return None


def check_weights_fit(spec: ModelSpec, dtype: str, device: str, shards: int = 1) -> None:
    """Raise DoesNotFit when `spec`'s weights in `dtype`, split `shards` ways, cannot fit."""
    need = spec.num_params * DTYPE_BYTES[dtype] / shards
    have = available_bytes(device)
    if have is None or need <= HEADROOM * have:
        return
    where = "host memory" if device == "cpu" else f"{device}"
    raise DoesNotFit(
        f"{spec.name} needs {to_gib(need):.1f} GiB of weights in {dtype} per shard but {where} "
        f"has {to_gib(have):.1f} GiB free; use a smaller model, a GPU, a 16-bit --dtype or more "
        "shards (--tp)"
    )
