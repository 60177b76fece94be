"""Triton kernels for the decode step (CUDA only; imported lazily, self-checked at start).

A decode step at batch 1 is a chain of tiny operations; each ATen kernel costs a few µs, and
attention without a split over keys runs on only batch·heads CTAs. Four kernels fix the parts
that the profile of a LLaMA-7B step on an H100 showed as slow:

- decode_attention: flash-decoding. Keys are split into chunks so batch·kv_heads·splits
  programs fill the GPU; each program handles all query heads of one KV head (GQA reads K/V
  once), keeps an online softmax, and writes a partial output plus its log-sum-exp; a second
  kernel combines the splits. Lengths come from a device tensor (CUDA-graph safe); ALiBi is
  an in-kernel bias, so every position scheme takes this path.
- rope_store: rotates Q and K (interleaved pairs) in place and writes K, V into the cache slot
  (with the per-head qk-norm first, where the model has one).
- rms_norm, silu_mul: one launch each instead of several.
- small_linear: the GEMV of every projection, bias and residual add in its epilogue (one
  token with INFERMETER_ONE_TOKEN_GEMV=rows: gemv_kernels.rows_gemv, whole rows a program;
  the engine runs LOOPED, this kernel, by default: see select.one_token_rows).

On Hopper and later every kernel is launched with programmatic dependent launch (PDL): the
next kernel of the graph is scheduled while this one drains and waits on the device
(griddepcontrol.wait) before it reads anything, instead of paying a launch gap per kernel.
INFERMETER_PDL=0 turns it off (workarounds, ablations).

Tiles are autotuned once per shape: Triton (3.4+) keeps each choice in its cache folder
(`~/.triton/cache`, or TRITON_CACHE_DIR), so a profile and every later process that uses the
folder run the same tiles (INFERMETER_KEEP_TILES=0 tunes in every process). Tuned afresh in
each process, near-tied tiles go either way: a LLaMA-7B query (p = 512, o = 256) took 1007.8
to 1051.4 ms in three processes on an H200, 1009.3 to 1009.9 ms with the choice kept
(docs/benchmarks/autotune_spread.md). Under tensor parallelism on an empty cache each rank
tunes on its own GPU, so that run's ranks may run different tiles; the last rank to finish
is kept for later runs. Timing the tiles after a read of the L2 instead of do_bench's zeroing
write was tried (53cf318) and not adopted: no model decoded faster
(docs/benchmarks/tile_flush/README.md).

Tried and backed out (benchmarks/decode_ablation.py at commit 4538868 measured them on an
H200): RMSNorm inside the GEMV, from the sum of squares of the streamed x (4.59 ms vs 4.33 ms
per 7B step) or of a pass of its own, slower either way because the GEMV's weight stream
stops being pipelined; and loading the first weight tile before the PDL wait (4.33 vs
4.10 ms without PDL, no gain with it). The whole-rows GEMVs (gemv_kernels) loading all their
weights before the wait were slower too, by 1.5-4.0 % a decode step for Qwen3-30B-A3B,
gpt-oss-20b and DeepSeek-V2-Lite on an H200 (docs/benchmarks/decode_power_gemv_early.md).
So were GEMVs that asked the L2 for a later GEMV's weights (b20f553; decode_power_l2_prefetch.md):
in benchmarks/l2_prefetch_probe.py the fetch, in line or on a forked stream, made the GEMV
after it at most 0.7 µs faster (an L2-resident weight saves it 1.9 µs), and a kernel of 132
programs that asked held the chain for 4.0 µs (l2_prefetch_probe.md). One launch for a whole
chain of GEMVs, a program a tile that loads its weights and then waits on the GEMV before
(benchmarks/gemv_chain_probe.py), never beat these kernels launched a GEMV at a time: the
count that publishes a finished tile and the wait cost more than the kernel boundaries
(gemv_chain_probe.md; a persistent loop per SM was not tried). Merging flash-decoding's
splits in the split kernel's last program (INFERMETER_SPLIT_MERGE=1) made Qwen3-30B-A3B's and
LLaMA-7B's steps longer and gpt-oss-20b's shorter; letting each kernel launch the next before
its own PDL wait (INFERMETER_PDL_TRIGGER=first) took 0.7-0.9 % off Qwen3-30B-A3B's step and
added 13 % to LLaMA-7B's (docs/benchmarks/decode_fusion/README.md). The per-head qk-norm
inside rope_store took 0.9 % off Qwen3-30B-A3B's step, and is the default.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_N = 64
_SMS: dict[int, int] = {}
# Triton's interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors: the test suite
# checks their arithmetic that way on machines without a GPU.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


_PDL: dict[int, bool] = {}


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def pdl(device: torch.device) -> bool:
    """Launch with programmatic dependent launch on this device (sm_90+, Triton with GDC)?"""
    if device.type != "cuda" or INTERPRETED or os.environ.get("INFERMETER_PDL") == "0":
        return False
    index = _device_index(device)
    if index not in _PDL:
        major = torch.cuda.get_device_capability(index)[0]
        _PDL[index] = major >= 9 and hasattr(tl.extra.cuda, "gdc_wait")
    return _PDL[index]


def disable_pdl(device: torch.device) -> None:
    """Launch plainly on this device from now on (PDL failed its self-check here)."""
    _PDL[_device_index(device)] = False


def _launch(device: torch.device) -> dict[str, bool]:
    """Launch options and the PDL constexpr for a kernel on `device`."""
    on = pdl(device)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


# INFERMETER_PDL_TRIGGER=first: each kernel lets the next one be scheduled before it waits on
# the one before, not after (an ablation of the order; read when this module is imported).
# On an H200 it took 0.7-0.9 % off Qwen3-30B-A3B's batch-1 step and added 13 % to LLaMA-7B's
# (docs/benchmarks/decode_fusion/README.md). The Engine refuses other values before it builds
# a model (select.kernel_switches); a script that imports this module alone is not checked.
PDL_TRIGGER_FIRST = tl.constexpr(os.environ.get("INFERMETER_PDL_TRIGGER", "").strip() == "first")


@triton.jit
def _grid_sync(PDL: tl.constexpr):
    """With PDL: wait until the previous kernel's writes are visible, then let the next
    kernel be scheduled (it waits in turn before reading what this one writes)."""
    if PDL:
        if PDL_TRIGGER_FIRST:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        else:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: any split count exercises the same code
    index = _device_index(device)
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


@triton.jit
def _online_softmax(s, v, m, denom, acc):
    """One block of flash attention: fold scores s [G, N] and values v [N, D] into the running
    max m, softmax denominator and weighted sum acc (inlined by its callers)."""
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new[:, None])
    denom = denom * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, denom, acc


def split_plan(length: int, programs: int, device: torch.device) -> tuple[int, int]:
    """(splits, chunk) of a flash-decoding pass over `length` keys when `programs` programs
    already run per split: about two programs per SM, chunks a multiple of BLOCK_N."""
    want = max(1, triton.cdiv(2 * _sms(device), programs))
    splits = max(1, min(triton.cdiv(length, BLOCK_N), want))
    chunk = triton.cdiv(triton.cdiv(length, splits), BLOCK_N) * BLOCK_N
    return triton.cdiv(length, chunk), chunk


@triton.jit
def _attn_split(
    Q, K, V, Lens, Slopes, Part, Lse,
    stride_qb, stride_qh, stride_kb, stride_kn, stride_kh,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    nkv, chunk, scale, softcap, Out, Sinks, Count, stride_ob, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, ALIBI: tl.constexpr, PDL: tl.constexpr,
    SOFTCAP: tl.constexpr = False, MERGE: tl.constexpr = False, SINKS: tl.constexpr = False,
    BLOCK_H: tl.constexpr = 1, BLOCK_S: tl.constexpr = 1, SB: tl.constexpr = 1,
):  # fmt: skip
    _grid_sync(PDL)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // nkv).to(tl.int64)
    kvh = bh % nkv
    length = tl.load(Lens + b)
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    g = tl.arange(0, BLOCK_G)
    dd = tl.arange(0, BLOCK_D)
    heads = kvh * GROUP + g
    gmask = g < GROUP
    dmask = dd < D
    q = tl.load(
        Q + b * stride_qb + heads[:, None] * stride_qh + dd[None, :],
        mask=gmask[:, None] & dmask[None, :],
        other=0.0,
    )
    m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if ALIBI:
        slope = tl.load(Slopes + heads, mask=gmask, other=0.0)
    base = b * stride_kb + kvh * stride_kh
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        offs = base + n[:, None] * stride_kn + dd[None, :]
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(K + offs, mask=kv_mask, other=0.0)
        v = tl.load(V + offs, mask=kv_mask, other=0.0)  # in flight with K, not after softmax
        s = tl.dot(q, tl.trans(k)) * scale
        if SOFTCAP:  # c·tanh(s / c), tanh from exp (the interpreter has no libdevice)
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        if ALIBI:
            s += slope[:, None] * (n[None, :] - (length - 1)).to(tl.float32)
        m, denom, acc = _online_softmax(
            tl.where(nmask[None, :], s, float("-inf")), v, m, denom, acc
        )
    # An empty split (start >= length) leaves m = -inf, denom = 0: lse = -inf, output 0.
    out = tl.where(denom[:, None] > 0, acc / denom[:, None], 0.0)
    p_ptr = Part + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + dd[None, :]
    tl.store(p_ptr, out, mask=gmask[:, None] & dmask[None, :])
    tl.store(Lse + b * stride_lb + heads * stride_lh + split, m + tl.log(denom), mask=gmask)
    if MERGE:  # the last split of this (sequence, KV head) to finish merges them all
        tl.debug_barrier()  # every thread's stores before the count that publishes them
        splits = tl.num_programs(1)
        if tl.atomic_add(Count + bh, 1, sem="acq_rel") == splits - 1:
            tl.store(Count + bh, 0)  # ready for the next launch (graph replays too)
            h = kvh * GROUP + tl.arange(0, BLOCK_H)
            _merge_splits(
                Part, Lse, Out, Sinks, b, h, h < kvh * GROUP + GROUP, splits,
                stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
                BLOCK_H, BLOCK_S, SB, D, BLOCK_D, SINKS,
            )  # fmt: skip


@triton.jit
def _merge_splits(
    Part, Lse, Out, Sinks, b, heads, hmask, splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, SB: tl.constexpr, D: tl.constexpr,
    BLOCK_D: tl.constexpr, SINKS: tl.constexpr,
):  # fmt: skip
    """Out[b, heads] = the softmax-weighted sum of `splits` partial outputs Part [.., heads,
    splits, D] by their log-sum-exps Lse [.., heads, splits] (flash-decoding's merge), SB
    splits a pass; with SINKS a per-head logit joins the softmax (gpt-oss; its value row is
    zero). Part and Lse are read from the L2 (.cg), never from this SM's L1: in the fused
    merge other programs of this launch wrote them, and the L1 may hold an older launch's."""
    s = tl.arange(0, BLOCK_S)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < D
    lse_row = Lse + b * stride_lb + heads * stride_lh
    lse = tl.load(
        lse_row[:, None] + s[None, :], mask=hmask[:, None] & (s < splits)[None, :],
        other=float("-inf"), cache_modifier=".cg",
    )  # fmt: skip
    top = tl.max(lse, 1)
    if SINKS:
        sink = tl.load(Sinks + heads, mask=hmask, other=0.0).to(tl.float32)
        top = tl.maximum(top, sink)
    top = tl.where(hmask, top, 0.0)  # padding heads: no -inf - -inf
    total = tl.sum(tl.exp(lse - top[:, None]), 1)
    if SINKS:
        total += tl.exp(sink - top)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    part_row = Part + b * stride_pb + heads * stride_ph
    for s0 in range(0, splits, SB):
        ss = s0 + tl.arange(0, SB)
        smask = hmask[:, None] & (ss < splits)[None, :]
        w = tl.exp(
            tl.load(lse_row[:, None] + ss[None, :], mask=smask, other=float("-inf"),
                    cache_modifier=".cg") - top[:, None]
        )  # fmt: skip
        part = tl.load(
            part_row[:, None, None] + ss[None, :, None] * stride_ps + dd[None, None, :],
            mask=smask[:, :, None] & dmask[None, None, :], other=0.0,
            cache_modifier=".cg",
        )  # fmt: skip
        acc += tl.sum(part * w[:, :, None], 1)
    out = acc / tl.where(hmask, total, 1.0)[:, None]
    tl.store(
        Out + b * stride_ob + heads[:, None] * stride_oh + dd[None, :],
        out.to(Out.dtype.element_ty), mask=hmask[:, None] & dmask[None, :],
    )  # fmt: skip


@triton.jit
def _attn_combine(
    Part, Lse, Out, Sinks, nq, splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    BLOCK_S: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
    SB: tl.constexpr, SINKS: tl.constexpr = False,
):  # fmt: skip
    """Flash-decoding's merge as a kernel of its own, a program per (sequence, head): where
    the split kernel does not merge (MERGE off; MLA's latent splits)."""
    _grid_sync(PDL)
    pid = tl.program_id(0)
    h = pid % nq + tl.arange(0, 1)
    _merge_splits(
        Part, Lse, Out, Sinks, (pid // nq).to(tl.int64), h, h < nq, splits,
        stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
        1, BLOCK_S, SB, D, BLOCK_D, SINKS,
    )  # fmt: skip


MERGE_TILE = 8192  # float32 elements of Part a merge pass holds (64 a thread at 4 warps)
_COUNTS: dict[str, Tensor] = {}
MERGE_SLOTS = 1 << 16  # (sequence, KV head) pairs a fused merge can count: batch x KV heads
# INFERMETER_SPLIT_MERGE=1: merge the splits in the split kernel's last program (decode_attention;
# the Engine refuses other values before it builds a model: select.kernel_switches)
SPLIT_MERGE = os.environ.get("INFERMETER_SPLIT_MERGE", "").strip() == "1"
# qk-norm inside rope_store (False: the qk_norm kernel launched first; kernel_removal_probe)
ROPE_QK_NORM = True


def merge_pass(heads: int, splits: int, block_d: int) -> int:
    """SB, the splits one merge pass reads for `heads` heads (a power of two): as many as
    fit MERGE_TILE float32 elements, at least 1 and at most the splits rounded up."""
    sb = max(1, MERGE_TILE // (triton.next_power_of_2(heads) * block_d))
    return min(1 << (sb.bit_length() - 1), triton.next_power_of_2(splits))


def _merge_counts(device: torch.device) -> Tensor:
    """The fused merge's per-(sequence, KV head) arrival counts on `device`: zeros, made once
    (outside any graph capture, on the first decode_attention call: the self-check) and
    left at zero by every launch (the last program of a group resets its count)."""
    key = str(device if device.type != "cuda" else f"cuda:{_device_index(device)}")
    if key not in _COUNTS:
        _COUNTS[key] = torch.zeros(MERGE_SLOTS, device=device, dtype=torch.int32)
    return _COUNTS[key]


def decode_attention(
    q: Tensor,
    cache: Tensor,
    lengths: Tensor,
    slopes: Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """q [b, nq, d] (rows may be strided), cache [b, L, 2, nkv, d], lengths [b] int32 ->
    [b, nq, d]: each query attends to keys [0, lengths[i]) of its sequence, with softmax
    scale `scale` (default d^-1/2), scores soft-capped at `softcap` and per-head sink logits
    `sinks` [nq] when given.

    The keys are split into chunks (split_plan); a second kernel merges the chunks' partial
    outputs. With INFERMETER_SPLIT_MERGE=1 the last chunk of each (sequence, KV head) to
    finish merges them instead (an arrival count in device memory, reset by that program),
    one launch, where batch x KV heads <= MERGE_SLOTS and the group's log-sum-exps fit
    MERGE_TILE (else the second kernel). Not the default: on an H200, against the merge
    kernel in the same process (docs/benchmarks/decode_fusion/README.md, 01c6501), the
    batch-1 step was 0.7-0.8 % longer for Qwen3-30B-A3B, 3.3-3.5 % longer for LLaMA-7B and
    2.8-2.9 % shorter for gpt-oss-20b, though launching the merge kernel as nothing made
    Qwen3's 6-8 % shorter."""
    b, nq, d = q.shape
    length, nkv = cache.shape[1], cache.shape[3]
    group = nq // nkv
    splits, chunk = split_plan(length, b * nkv, q.device)
    part = torch.empty(b, nq, splits, d, device=q.device, dtype=torch.float32)
    lse = torch.empty(b, nq, splits, device=q.device, dtype=torch.float32)
    out = torch.empty(b, nq, d, device=q.device, dtype=q.dtype)
    k, v = cache[:, :, 0], cache[:, :, 1]  # [b, L, nkv, d] views
    block_d = triton.next_power_of_2(d)
    block_s = triton.next_power_of_2(splits)
    launch = _launch(q.device)
    # the fused merge also holds a group's [heads, splits] log-sum-exps at once: at most
    # MERGE_TILE of them (Part's tile is bounded by merge_pass, down to a split a pass)
    merge = (
        SPLIT_MERGE
        and b * nkv <= MERGE_SLOTS
        and triton.next_power_of_2(group) * block_s <= MERGE_TILE
    )
    counts = _merge_counts(q.device) if merge else lse
    _attn_split[(b * nkv, splits)](
        q, k, v, lengths, slopes if slopes is not None else lengths, part, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        nkv, chunk, d**-0.5 if scale is None else scale, softcap or 1.0,
        out, sinks if sinks is not None else lse, counts, out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=BLOCK_N,
        D=d, BLOCK_D=block_d, ALIBI=slopes is not None, num_warps=4,
        SOFTCAP=softcap is not None, MERGE=merge, SINKS=sinks is not None,
        # merge tiles only where it merges: one compiled split kernel for every split count
        BLOCK_H=triton.next_power_of_2(group) if merge else 1, BLOCK_S=block_s if merge else 1,
        SB=merge_pass(group, splits, block_d) if merge else 1, **launch,
    )  # fmt: skip
    if not merge:
        _attn_combine[(b * nq,)](
            part, lse, out, sinks if sinks is not None else lse, nq, splits,
            part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            BLOCK_S=block_s, D=d, BLOCK_D=block_d, num_warps=4,
            SINKS=sinks is not None, SB=merge_pass(1, splits, block_d), **launch,
        )  # fmt: skip
    return out


@triton.jit
def _rope_store(
    QKV, Cache, Pos, Cos, Sin, Slots,
    stride_xb, stride_xh, stride_cb, stride_cn, stride_c2, stride_ch, stride_t, QW, KW, eps,
    NQ: tl.constexpr, NKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    ROT: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr, RING: tl.constexpr = False,
    NORM: tl.constexpr = False,
):  # fmt: skip
    _grid_sync(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if NORM:  # noqa: SIM102 (qk-norm first, in place, as the qk_norm kernel would: same bits)
        if h < NQ + NKV:
            _norm_head(QKV + b * stride_xb + h * stride_xh, QW, KW, h, eps, NQ, D, BLOCK_D)
            tl.debug_barrier()  # the normed row, visible to the loads below
    pos = tl.load(Pos + b)
    if RING:  # noqa: SIM108 (a windowed layer's ring buffer: slot pos % ring, not pos)
        at = tl.load(Slots + b)
    else:
        at = pos
    row = QKV + b * stride_xb + h * stride_xh
    kv = h - NQ
    slot = Cache + b * stride_cb + at * stride_cn + (kv // NKV) * stride_c2 + (kv % NKV) * stride_ch
    if ROT > 0:
        if h < NQ + NKV:  # a query or key head: rotate its first ROT dims
            i = tl.arange(0, HALF)
            imask = i < ROT // 2
            x0 = tl.load(row + 2 * i, mask=imask, other=0.0).to(tl.float32)
            x1 = tl.load(row + 2 * i + 1, mask=imask, other=0.0).to(tl.float32)
            c = tl.load(Cos + pos * stride_t + i, mask=imask, other=0.0)
            s = tl.load(Sin + pos * stride_t + i, mask=imask, other=0.0)
            y0 = (x0 * c - x1 * s).to(QKV.dtype.element_ty)
            y1 = (x1 * c + x0 * s).to(QKV.dtype.element_ty)
            if h < NQ:
                tl.store(row + 2 * i, y0, mask=imask)
                tl.store(row + 2 * i + 1, y1, mask=imask)
            else:  # keys are only read from the cache
                tl.store(slot + 2 * i, y0, mask=imask)
                tl.store(slot + 2 * i + 1, y1, mask=imask)
                j = ROT + tl.arange(0, BLOCK_D)
                jmask = j < D
                tl.store(slot + j, tl.load(row + j, mask=jmask), mask=jmask)
        else:  # a value head: copy into the cache
            dd = tl.arange(0, BLOCK_D)
            dmask = dd < D
            tl.store(slot + dd, tl.load(row + dd, mask=dmask), mask=dmask)
    else:
        if h >= NQ:  # keys and values: copy into the cache
            dd = tl.arange(0, BLOCK_D)
            dmask = dd < D
            tl.store(slot + dd, tl.load(row + dd, mask=dmask), mask=dmask)


def rope_store(
    qkv: Tensor,
    cache: Tensor,
    pos: Tensor,
    cos: Tensor | None,
    sin: Tensor | None,
    nq: int,
    slots: Tensor | None = None,
    qk_norm: tuple[Tensor, Tensor, float] | None = None,
) -> None:
    """qkv [b, nq+2nkv, d]: rotate Q in place (angle of position pos[i]), write rotated K and
    V to cache[i, slots[i]] (default: cache[i, pos[i]]). `qk_norm` (q weight [d], k weight
    [d], eps): RMSNorm each query and key head first, in place (Qwen3's per-head qk-norm;
    the qk_norm kernel's arithmetic, so the same bits as that kernel launched before)."""
    b, heads, d = qkv.shape
    nkv = cache.shape[3]
    rot = 0 if cos is None else 2 * cos.shape[1]
    table = cos if cos is not None else pos
    qw, kw, eps = qk_norm if qk_norm is not None else (pos, pos, 0.0)
    _rope_store[(b, heads)](
        qkv, cache, pos, table, sin if sin is not None else table,
        slots if slots is not None else pos,
        qkv.stride(0), qkv.stride(1), cache.stride(0), cache.stride(1), cache.stride(2),
        cache.stride(3), table.stride(0) if rot else 0, qw, kw, eps,
        NQ=nq, NKV=nkv, D=d, BLOCK_D=triton.next_power_of_2(d), ROT=rot,
        HALF=triton.next_power_of_2(max(rot // 2, 1)), num_warps=1,
        RING=slots is not None, NORM=qk_norm is not None, **_launch(qkv.device),
    )  # fmt: skip


@triton.jit
def _rms_row(X, W, row, stride_x, n, eps, cols, mask):
    """One row of X RMS-normalised and scaled by W, in float32 (inlined by its callers)."""
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.rsqrt(tl.sum(x * x, 0) / n + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    return x * scale * w


@triton.jit
def _rms_norm(X, W, Y, stride_x, stride_y, n, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    _grid_sync(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    y = _rms_row(X, W, row, stride_x, n, eps, cols, mask)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of the rows of x [T, n] with `weight` [n] by the Triton kernel: x /
    sqrt(mean(x²) + eps) · weight, one program per row; a new tensor of x's shape."""
    y = torch.empty_like(x)
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    _rms_norm[(x.shape[0],)](
        x, weight, y, x.stride(0), y.stride(0), n, eps, BLOCK=block,
        num_warps=min(16, max(1, block // 256)), **_launch(x.device),
    )  # fmt: skip
    return y


@triton.jit
def _gate_up(Y, stride_y, width, BLOCK: tl.constexpr):
    """This program's row and columns of y = [gate | up], in float32 (inlined)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(Y + row * stride_y + width + cols, mask=mask, other=0.0).to(tl.float32)
    return row, cols, mask, gate, up


@triton.jit
def _silu_mul(Y, Out, stride_y, stride_o, width, BLOCK: tl.constexpr, PDL: tl.constexpr):
    _grid_sync(PDL)
    row, cols, mask, gate, up = _gate_up(Y, stride_y, width, BLOCK)
    out = gate * tl.sigmoid(gate) * up
    tl.store(Out + row * stride_o + cols, out.to(Out.dtype.element_ty), mask=mask)


def silu_mul(y: Tensor, width: int) -> Tensor:
    """y [T, 2·width] = [gate | up] -> silu(gate) * up, [T, width]."""
    out = torch.empty(y.shape[0], width, device=y.device, dtype=y.dtype)
    block = 1024
    _silu_mul[(y.shape[0], triton.cdiv(width, block))](
        y, out, y.stride(0), out.stride(0), width, BLOCK=block, num_warps=4, **_launch(y.device)
    )
    return out


# Read at import, as the decorators below run then: INFERMETER_KEEP_TILES=0 tunes per process.
_KEEP_OFF = os.environ.get("INFERMETER_KEEP_TILES") == "0"
_CAN_KEEP = "cache_results" in inspect.signature(triton.autotune).parameters  # Triton 3.4+
_KEEPS_CHOICE = _CAN_KEEP and not _KEEP_OFF
TILE_PROBLEMS: list[str] = []  # kept choices that could not be read or written, this process


# Each tile's timing when tuning: do_bench's median over TILE_BENCH_REP_MS of runs after
# TILE_BENCH_WARMUP_MS (Triton's defaults are 25 and 100 ms). A decode GEMV takes 5-60 µs, so
# 20 ms is still hundreds of runs, each after an L2 flush; on an empty cache the default spent
# about 0.1 s a tile, 12 tiles a shape, before a profile's first point.
TILE_BENCH_WARMUP_MS = 5
TILE_BENCH_REP_MS = 20


def _tile_bench(kernel_call: Callable[[], None], quantiles: tuple[float, ...]) -> Any:
    import triton.testing

    return triton.testing.do_bench(
        kernel_call, warmup=TILE_BENCH_WARMUP_MS, rep=TILE_BENCH_REP_MS, quantiles=quantiles
    )


def autotune(
    configs: list[triton.Config], key: list[str], prune: Callable[..., list] | None = None
) -> Callable[..., object]:
    """`triton.autotune` that keeps its choice in Triton's on-disk cache where this Triton can
    (3.4 and later; ignored under the interpreter), so that the profile's process and a user's
    later process run the same tiles. Triton keys a kept choice on its own version, the GPU
    architecture (not the GPU model), the kernel's source, the configs, the shape key and the
    dtypes. A kept choice that cannot be read or written is tuned in memory instead and named
    in tiles_note(), never an error at the kernel's first call. Tiles are timed by _tile_bench;
    `prune(configs, named_args, **kwargs)` keeps those worth timing for a call's shape."""
    keep: dict[str, Any] = {"cache_results": True} if _KEEPS_CHOICE else {}
    if prune is not None:
        keep["prune_configs_by"] = {"early_config_prune": prune}
    decorate = triton.autotune(configs=configs, key=key, do_bench=_tile_bench, **keep)

    def wrap(fn: object) -> object:
        tuner = decorate(fn)
        if getattr(tuner, "cache_results", False):  # ours, or TRITON_CACHE_AUTOTUNING=1
            _guard_kept_choice(tuner)
        return tuner

    return wrap


def _guard_kept_choice(tuner: Any) -> None:
    """Let a truncated choice file or a read-only, full or foreign cache folder cost a tuning
    run, not the kernel: the first tuned call is a model's first decode step (the self-check
    runs one tile untuned), and an exception there would end the run."""
    check = tuner.check_disk_cache

    def guarded(tuning_key: Any, configs: list[triton.Config], bench: Callable[[], None]) -> bool:
        tuned: list[bool] = []

        def tune() -> None:
            tuned.append(True)
            bench()  # an error of the tuning itself is the kernel's, not the cache's

        try:
            return bool(check(tuning_key, configs, tune))
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSON errors are ValueErrors
            if tuned and tuning_key not in tuner.cache:
                raise  # tuning failed: let the self-check see the kernel's own error
            if len(TILE_PROBLEMS) < 3:
                TILE_PROBLEMS.append(f"{type(err).__name__}: {err}"[:200])
            if not tuned:  # the kept choice could not be read: tune in memory
                tune()
            return False

    tuner.check_disk_cache = guarded


def _cache_dir() -> str:
    knobs = getattr(triton, "knobs", None)
    folder = getattr(getattr(knobs, "cache", None), "dir", None)
    return str(folder or os.environ.get("TRITON_CACHE_DIR") or "~/.triton/cache")


def tiles_note() -> str:
    """What a run records about how its kernels' tiles were chosen: kept in which cache folder,
    or tuned in each process and why, and any kept choice that could not be used."""
    if INTERPRETED:
        return "one tile per kernel (Triton's interpreter)"
    # what the autotuner was built with: also on under TRITON_CACHE_AUTOTUNING=1, whatever
    # INFERMETER_KEEP_TILES says
    if getattr(_small_linear, "cache_results", False):
        note = (
            f"autotuned once per shape (the MoE grouped GEMM's per range of row blocks) and "
            f"kept in Triton's cache ({_cache_dir()}): later "
            "processes that use that folder run the same tiles (kept per architecture, not per "
            "GPU model; delete the folder to tune again)"
        )
    elif _KEEP_OFF:
        note = "autotuned in each process (INFERMETER_KEEP_TILES=0)"
    else:
        note = f"autotuned in each process (Triton {triton.__version__} cannot keep the choice)"
    if TILE_PROBLEMS:
        note += "; kept choices unusable, tuned in memory: " + "; ".join(TILE_PROBLEMS)
    return note


def tile_configs(
    tiles: list[tuple[int, int, int, int]], interpreted: tuple[int, int] = (32, 64)
) -> list[triton.Config]:
    """Autotune configs from (BLOCK_N, BLOCK_K, warps, stages) rows; under the interpreter
    one (BLOCK_N, BLOCK_K) tile: nothing to time, and no GPU to time it on."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_N": interpreted[0], "BLOCK_K": interpreted[1]}, num_warps=4)]
    return [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
        for n, k, w, st in tiles
    ]


def _gemv_configs() -> list[triton.Config]:
    return tile_configs([
        (16, 256, 4, 4), (16, 512, 4, 4), (32, 256, 4, 4), (32, 512, 4, 3),
        (64, 256, 4, 4), (64, 128, 4, 5), (16, 1024, 8, 3), (32, 256, 8, 5),
        (16, 256, 4, 6), (32, 128, 4, 6), (32, 512, 8, 4), (64, 256, 8, 4),
    ])  # fmt: skip


@autotune(_gemv_configs(), key=["N", "K", "M"])
@triton.jit
def _small_linear(
    X, W, Bias, R, Y, M, N, K, stride_xm, stride_wn, stride_rm, stride_ym,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, PDL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, 16)  # up to 16 tokens: the minimum tile of a tensor-core dot
    rmask = rows < N
    mmask = m < M
    acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        w_mask = rmask[:, None] & cmask[None, :]
        w = tl.load(W + rows[:, None] * stride_wn + cols[None, :], mask=w_mask, other=0.0)
        x_mask = mmask[:, None] & cmask[None, :]
        x = tl.load(X + m[:, None] * stride_xm + cols[None, :], mask=x_mask, other=0.0)
        acc += tl.dot(x, tl.trans(w))
    out_mask = mmask[:, None] & rmask[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:  # the residual add rides in the epilogue
        res = tl.load(R + m[:, None] * stride_rm + rows[None, :], mask=out_mask, other=0.0)
        acc += res.to(tl.float32)
    tl.store(Y + m[:, None] * stride_ym + rows[None, :], acc.to(Y.dtype.element_ty), mask=out_mask)


SMALL_M = 16


def small_linear(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    *,
    tuned: bool = True,
    whole_rows: bool = True,
    norm: tuple[Tensor, float] | None = None,
) -> Tensor:
    """residual + x @ w.T + bias for x [M <= 16, K]: streams w once, faster than cuBLAS's GEMV
    on an H100 for the LLaMA shapes (wider tiles, no split-K reduction pass). One token (M =
    1) takes gemv_kernels.rows_gemv instead where its row fits (whole rows, every load in
    flight at once: faster again at every shape gemv_sweep.md swept); `whole_rows=False`
    keeps it on this kernel (LOOPED, ablations). `norm` (weight [K], eps): x is RMSNorm-ed first,
    inside the one-token kernel where it runs, else by rms_norm(). With
    `tuned=False`, one tile (the first config) and no autotuning: for the self-check of the
    kernel's arithmetic (bias, residual, ragged edges), so that it does not compile and time 12
    tiles for a shape no model runs. The tiles differ in block sizes, warps and stages only,
    and each is compiled and run when it is tuned at a model's first decode step."""
    m, k = x.shape
    if m == 1 and tuned and whole_rows and x.stride(1) == 1 and w.stride(1) == 1:
        from infermeter.engine import gemv_kernels  # imports this module: not at the top

        if gemv_kernels.fits(k):
            return gemv_kernels.rows_gemv(x, w, bias=bias, residual=residual, norm=norm)
    if norm is not None:
        x = rms_norm(x, *norm)
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    res = residual if residual is not None else y
    kernel: Any = _small_linear
    tile: dict[str, Any] = {}
    if not tuned:
        kernel, tile = _small_linear.fn, _small_linear.configs[0].all_kwargs()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](
        x, w, bias if bias is not None else w, res, y, m, n, k,
        x.stride(0), w.stride(0), res.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, **_launch(x.device), **tile,
    )  # fmt: skip
    return y


def glu_linear(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    kind: str,
    width: int,
    norm: tuple[Tensor, float] | None = None,
    limit: float = 7.0,
    alpha: float = 1.702,
    *,
    whole_rows: bool = True,
) -> Tensor:
    """act(gate)·up of y = norm(x) @ w.T + bias, w [2·width, K] = [gate; up] rows, kind one
    of gemv_kernels.GLU's: one token in one kernel (the activation in the whole-rows GEMV's
    epilogue), else (or with `whole_rows=False`) small_linear and the activation kernel.
    [M, width]."""
    from infermeter.engine import gemv_kernels

    one = x.shape[0] == 1 and x.stride(1) == 1
    if whole_rows and one and gemv_kernels.fits(x.shape[1], 1, True):
        return gemv_kernels.rows_gemv(
            x, w, bias=bias, act=kind, norm=norm, limit=limit, alpha=alpha
        )
    y = small_linear(x, w, bias, norm=norm, whole_rows=whole_rows)
    if kind == "swiglu":
        return silu_mul(y, width)
    return gated_act(y, width, kind, limit, alpha)


# This module's one-token GEMVs load whole rows (gemv_kernels) and fuse the pre-norm and the
# gated activation; LOOPED's do not (layers.fused_norm reads this flag).
ONE_TOKEN_ROWS = True


class _Looped:
    """This module, but with the one-token (batch-1 decode) GEMVs outside the MoE experts on
    the looped kernel (_small_linear), the pre-norm in rms_norm and the gated activation in a
    kernel of its own: how every decode batch of 2-16 runs. The experts keep their whole-rows
    GEMVs (moe_kernels calls them directly). The engine's default (select.one_token_rows,
    INFERMETER_ONE_TOKEN_GEMV): whole rows put every load of a program in flight at once,
    faster one kernel at a time (gemv_sweep.md), but a sustained decode with them drew
    more power and more joules a token (LLaMA-13B on an H200: 5.66 J at 699 W against 4.44
    J at 622 W looped; docs/benchmarks/decode_power.md)."""

    ONE_TOKEN_ROWS = False

    def __getattr__(self, name: str) -> Any:
        return globals()[name] if name in globals() else super().__getattribute__(name)

    small_linear = staticmethod(functools.partial(small_linear, whole_rows=False))
    glu_linear = staticmethod(functools.partial(glu_linear, whole_rows=False))


LOOPED = _Looped()


# ---- the newer layouts' decode kernels (issue 20): one launch where torch takes several ----
@triton.jit
def _qk_norm(
    QKV, QW, KW, stride_xb, stride_xh, eps,
    NQ: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    _norm_head(QKV + b * stride_xb + h * stride_xh, QW, KW, h, eps, NQ, D, BLOCK_D)


@triton.jit
def _norm_head(row, QW, KW, h, eps, NQ: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """RMSNorm of one head's row in place: the query weight QW for heads below NQ, else KW."""
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < D
    x = tl.load(row + dd, mask=dmask, other=0.0).to(tl.float32)
    if h < NQ:
        w = tl.load(QW + dd, mask=dmask, other=0.0).to(tl.float32)
    else:
        w = tl.load(KW + dd, mask=dmask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, 0) / D + eps) * w
    tl.store(row + dd, y.to(row.dtype.element_ty), mask=dmask)


def qk_norm(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, nq: int, nkv: int) -> None:
    """RMSNorm of every query and key head of qkv [b, nq+2nkv, d] in place (qk-norm per head,
    Qwen3/Gemma-3), one program per head."""
    b, _, d = qkv.shape
    _qk_norm[(b, nq + nkv)](
        qkv, q_weight, k_weight, qkv.stride(0), qkv.stride(1), eps,
        NQ=nq, D=d, BLOCK_D=triton.next_power_of_2(d), num_warps=1, **_launch(qkv.device),
    )  # fmt: skip


@triton.jit
def _gated_act(
    Y, Out, stride_y, stride_o, width, limit, alpha,
    ACT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    row, cols, mask, gate, up = _gate_up(Y, stride_y, width, BLOCK)
    if ACT == 2:  # tanh GELU (Gemma's gelu_pytorch_tanh)
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        out = 0.5 * gate * (2.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)) * up
    else:  # gpt-oss: clamp both halves, x·σ(αx), (up + 1)
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        out = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    tl.store(Out + row * stride_o + cols, out.to(Out.dtype.element_ty), mask=mask)


def gated_act(y: Tensor, width: int, kind: str, limit: float = 7.0, alpha: float = 1.702) -> Tensor:
    """y [T, 2·width] = [gate | up] -> act(gate) · up for kind "geglu" or "clamped_swiglu"."""
    out = torch.empty(y.shape[0], width, device=y.device, dtype=y.dtype)
    block = 1024
    _gated_act[(y.shape[0], triton.cdiv(width, block))](
        y, out, y.stride(0), out.stride(0), width, limit, alpha,
        ACT=2 if kind == "geglu" else 3, BLOCK=block, num_warps=4, **_launch(y.device),
    )  # fmt: skip
    return out


@triton.jit
def _rms_norm_add(
    X, W, R, Y, stride_x, stride_r, stride_y, n, eps, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    _grid_sync(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    normed = _rms_row(X, W, row, stride_x, n, eps, cols, mask).to(Y.dtype.element_ty)
    r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        Y + row * stride_y + cols, (r + normed.to(tl.float32)).to(Y.dtype.element_ty), mask=mask
    )


def rms_norm_add(x: Tensor, weight: Tensor, eps: float, residual: Tensor) -> Tensor:
    """residual + RMSNorm(x)·weight for x, residual [T, n] (post and sandwich norms)."""
    y = torch.empty_like(x)
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    _rms_norm_add[(x.shape[0],)](
        x, weight, residual, y, x.stride(0), residual.stride(0), y.stride(0), n, eps,
        BLOCK=block, num_warps=min(16, max(1, block // 256)), **_launch(x.device),
    )  # fmt: skip
    return y
