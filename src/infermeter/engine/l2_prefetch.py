"""Weights the next decode kernels will read, fetched into L2 while small kernels run (issue 20).

A batch-1 decode step alternates GEMVs that stream megabytes of weights with chains of small,
latency-bound kernels (qk-norm, rotary, attention split and combine, routing) during which
HBM idles. A GEMV can ask the L2 for the weights of a later GEMV as its programs finish
(`cp.async.bulk.prefetch.L2`, PTX ISA 8.0, sm_90: a hint, fire and forget, no effect on the
arithmetic), so those bytes stream while the small kernels run. Each program asks for an
equal 16-byte-aligned share of the region.

Which fetches a step makes (select.l2_prefetch, from INFERMETER_L2_PREFETCH, comma-separated;
empty or unset: none; Decoder.plan_prefetch wires them):
- "o": the QKV GEMV (MLA: the first projection) fetches the attention output projection, read
  after the attention kernels;
- "next": a MoE layer's router GEMV fetches the next layer's first projection, read after
  routing and the experts;
- "down": the expert gate/up GEMV fetches the down projections of the experts it was given.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


def supported(device: torch.device) -> bool:
    """Whether kernels on `device` can issue the bulk L2 prefetch (CUDA sm_90+, compiled)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 9


def region(t: Tensor | None, device: torch.device) -> tuple[Tensor | None, int]:
    """(tensor, bytes) of a region to fetch, or (None, 0) where it cannot be: nothing given,
    not supported here, not contiguous or not 16-byte aligned."""
    if t is None or not supported(device) or not t.is_contiguous():
        return None, 0
    nbytes = t.numel() * t.element_size()
    if t.data_ptr() % 16 or nbytes % 16:
        return None, 0
    return t, nbytes


@triton.jit
def share_range(nbytes, part, parts):
    """(start, size) in bytes of share `part` of `parts` of an `nbytes`-byte region: equal
    shares rounded up to 16 bytes, the last ones shorter or empty (size <= 0)."""
    share = tl.cdiv(tl.cdiv(nbytes, parts), 16) * 16
    start = part.to(tl.int64) * share
    return start, tl.minimum(share, nbytes - start)


@triton.jit
def prefetch_share(Base, nbytes, part, parts):
    """Ask the L2 for share `part` of `parts` of the `nbytes` bytes at Base (16-aligned, a
    multiple of 16): one bulk prefetch from the program's first thread."""
    start, size = share_range(nbytes, part, parts)
    if size > 0:
        ptr = Base.to(tl.pointer_type(tl.int8)) + start
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r",
            [ptr, size.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )


@triton.jit
def prefetch_grid(Base, nbytes):
    """prefetch_share() with the program's place in a 1-D or 2-D grid as its part."""
    part = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    prefetch_share(Base, nbytes, part, tl.num_programs(0) * tl.num_programs(1))
