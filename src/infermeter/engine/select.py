"""Which decode attention to use: the fastest path that passes a numerical self-check here.

Each candidate is run once at start-up on random data of the model's real shapes (strided
query, GQA grouping, ALiBi slopes, rotary tables) and compared with plain float32 math, so a
missing op, a Triton or driver problem, or a wrong kernel falls back instead of measuring
garbage. Order: "triton" (kernels.py), "flash" (FlashAttention varlen), "sdpa" (masked).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from infermeter.engine.layers import activation
from infermeter.engine.model import Decoder, flash_varlen
from infermeter.errors import UserError
from infermeter.units import one_of


def _close(out: Tensor, ref: Tensor) -> bool:
    return bool((out.float() - ref.float()).abs().max() <= 2e-2 * ref.float().abs().max() + 1e-3)


def _attention_reference(
    q: Tensor, cache: Tensor, lens: list[int], slopes: Tensor | None
) -> Tensor:
    """Plain float32 decode attention over cache[i, :lens[i]] (for the self-checks)."""
    nq, d = q.shape[1], q.shape[2]
    group = nq // cache.shape[3]
    outs = []
    for i, n in enumerate(lens):
        keys = cache[i, :n, 0].float().repeat_interleave(group, 1)  # [n, nq, d]
        vals = cache[i, :n, 1].float().repeat_interleave(group, 1)
        scores = torch.einsum("hd,nhd->hn", q[i].float(), keys) / d**0.5
        if slopes is not None:
            scores = scores + slopes[:, None] * (torch.arange(n, device=q.device) - (n - 1))
        outs.append(torch.einsum("hn,nhd->hd", torch.softmax(scores, -1), vals))
    return torch.stack(outs)


def _probe(model: Decoder) -> tuple[Tensor, Tensor, list[int], Tensor]:
    """A strided query, a random cache, two lengths: the shapes the decode step will see."""
    lay, d, dev, dt = model.layout, model.spec.dim_head, model.device, model.dtype
    nq, nkv, length = lay.q_heads, lay.kv_heads, 200
    qkv = torch.randn(2, nq + 2 * nkv, d, device=dev, dtype=dt)
    cache = torch.randn(2, length, 2, nkv, d, device=dev, dtype=dt)
    return qkv, cache, [37, length], torch.tensor([37, length], device=dev, dtype=torch.int32)


def triton_problem(model: Decoder) -> str | None:
    """Why the Triton decode kernels cannot be used (None: they can, self-checked here).
    Launched with PDL first where the GPU has it; if that fails, once more without."""
    if model.device.type != "cuda":
        return "not on CUDA"
    if model.dtype not in (torch.float16, torch.bfloat16):
        return f"Triton decode kernels are for float16/bfloat16, not {model.dtype}"
    try:
        from infermeter.engine import kernels
    except ImportError as error:
        return f"Triton unavailable: {error}"
    problem = _check_kernels(model, kernels)
    if problem is not None and kernels.pdl(model.device):
        kernels.disable_pdl(model.device)
        problem = _check_kernels(model, kernels)
    if problem is None:
        model.kernels = kernels if one_token_rows() else kernels.LOOPED
        if model.mla and mla_problem(model) is None:
            from infermeter.engine import mla_kernels

            model.mla_kernels = mla_kernels
    return problem


ONE_TOKEN_GEMVS = ("looped", "rows")


def one_token_rows() -> bool:
    """Whether the one-token GEMVs outside the MoE experts load whole rows (gemv_kernels,
    the pre-norm and gated activation fused) or loop over K (kernels.LOOPED, the default),
    from INFERMETER_ONE_TOKEN_GEMV ("looped" where unset or empty). The experts' GEMVs load
    whole rows either way.

    Why looped: measured on an H200 at 937a11f (docs/benchmarks/decode_power.md, 2026-12-03,
    sustained batch-1 decode at the 700 W limit), it took fewer joules a token for all five
    models tried, 8-22 % (LLaMA-13B 4.44 against 5.66 J), drawing 476-622 W where whole rows
    drew 571-699 W; its step was 12 % shorter for LLaMA-13B and 2 % for gpt-oss-20b, and 3-10 %
    longer for Gemma-2-9B, LLaMA-7B and Qwen3-30B-A3B. "rows" is the faster choice there.

    Raises UserError for any other value."""
    wanted = os.environ.get("INFERMETER_ONE_TOKEN_GEMV", "").strip() or "looped"
    if wanted not in ONE_TOKEN_GEMVS:
        raise UserError(
            f"INFERMETER_ONE_TOKEN_GEMV must be {one_of(ONE_TOKEN_GEMVS)}, not {wanted!r}"
        )
    return wanted == "rows"


def mla_problem(model: Decoder) -> str | None:
    """Why the latent-attention decode kernels cannot run here (None: checked against torch
    math on random data of the model's shapes). Without them MLA decodes in torch."""
    mla = model.spec.mla
    assert mla is not None
    lora, rope = mla.kv_lora_rank, mla.qk_rope_dim
    if lora & (lora - 1) or rope & (rope - 1) or rope < 16:
        return f"latent kernels want powers of two and rope >= 16 (lora {lora}, rope {rope})"
    try:
        from infermeter.engine import mla_kernels

        dev, dt, n = model.device, model.dtype, model.layout.q_heads
        q_lat = torch.randn(2, n, lora, device=dev, dtype=dt)
        q_pe = torch.randn(2, n, rope, device=dev, dtype=dt)
        cache = torch.randn(2, 200, lora + rope, device=dev, dtype=dt)
        lens = torch.tensor([37, 200], device=dev, dtype=torch.int32)
        got = mla_kernels.latent_attention(q_lat, q_pe, cache, lens, 0.1)
        want = []
        for i, length in enumerate((37, 200)):
            keys = cache[i, :length].float()
            query = torch.cat([q_lat[i], q_pe[i]], -1).float()
            probs = (query @ keys.T * 0.1).softmax(-1)
            want.append(probs @ keys[:, :lora])
        if not _close(got, torch.stack(want)):
            return "Triton latent attention self-check mismatch"
    except Exception as error:
        return f"Triton latent kernels failed: {type(error).__name__}: {error}"[:300]
    return None


def _check_rows_gemv(
    model: Decoder, x: Tensor, w: Tensor, bias: Tensor, res: Tensor, want: Tensor
) -> str | None:
    """The whole-rows one-token GEMV (INFERMETER_ONE_TOKEN_GEMV=rows) on _check_kernels'
    data: plain with bias and residual, then with the pre-norm applied as x is loaded and a
    gated activation in the epilogue. The MoE experts' GEMVs have checks of their own."""
    from infermeter.engine import gemv_kernels

    one = gemv_kernels.rows_gemv(x[:1], w, bias=bias, residual=res[:1], tile=ROWS_TILE)
    if not _close(one, want[:1]):
        return "Triton one-token GEMV self-check mismatch"
    wn = torch.randn(model.spec.hidden_size, device=model.device, dtype=model.dtype)
    normed = F.rms_norm(x[:1].float(), wn.shape, wn.float(), 1e-5)
    gate, up = (normed @ w.float().T + bias.float()).split(48, -1)
    got = gemv_kernels.rows_gemv(x[:1], w, bias=bias, act="swiglu", norm=(wn, 1e-5), tile=ROWS_TILE)
    if not _close(got, F.silu(gate) * up):
        return "Triton one-token GEMV (norm, gated) self-check mismatch"
    return None


def _check_kernels(model: Decoder, kernels: Any) -> str | None:
    spec, nq = model.spec, model.layout.q_heads
    try:
        qkv, cache, lens, lens32 = _probe(model)
        out = kernels.decode_attention(qkv[:, :nq], cache, lens32, model.slopes)
        if not _close(out, _attention_reference(qkv[:, :nq], cache, lens, model.slopes)):
            return "Triton decode attention self-check mismatch"
        # Rotary + cache write against the eager path (rotate a copy, then store by index).
        pos = torch.tensor([5, 190], device=model.device)
        want_qkv, want_cache = qkv.clone(), cache.clone()
        if model.freqs is not None:
            rot = model.rot
            x = want_qkv[:, : nq + model.layout.kv_heads, :rot].float().unflatten(-1, (-1, 2))
            turned = torch.view_as_complex(x.contiguous()) * model.freqs[pos][:, None]
            want_qkv[:, : nq + model.layout.kv_heads, :rot] = (
                torch.view_as_real(turned).flatten(-2).to(qkv.dtype)
            )
        kv = want_qkv[:, nq:].view(2, 2, -1, spec.dim_head)
        want_cache[torch.arange(2, device=pos.device), pos] = kv
        kernels.rope_store(qkv, cache, pos, model.cos, model.sin, nq)
        if not (_close(qkv[:, :nq], want_qkv[:, :nq]) and _close(cache, want_cache)):
            return "Triton rotary/cache kernel self-check mismatch"
        x = torch.randn(3, spec.hidden_size, device=model.device, dtype=model.dtype)
        w = torch.randn(spec.hidden_size, device=model.device, dtype=model.dtype)
        if not _close(
            kernels.rms_norm(x, w, 1e-5), F.rms_norm(x.float(), w.shape, w.float(), 1e-5)
        ):
            return "Triton RMSNorm self-check mismatch"
        y = torch.randn(3, 2 * model.layout.ffn, device=model.device, dtype=model.dtype)
        gate, up = y.float().split(model.layout.ffn, -1)
        if not _close(kernels.silu_mul(y, model.layout.ffn), F.silu(gate) * up):
            return "Triton SiLU·mul self-check mismatch"
        w = torch.randn(96, spec.hidden_size, device=model.device, dtype=model.dtype)
        bias = torch.randn(96, device=model.device, dtype=model.dtype)
        res = torch.randn(3, 96, device=model.device, dtype=model.dtype)
        want = x.float() @ w.float().T + bias.float() + res.float()
        if not _close(kernels.small_linear(x, w, bias, res, tuned=False), want):
            return "Triton GEMV self-check mismatch"
        if not _close(kernels.small_linear(x[:1], w, bias, res[:1], tuned=False), want[:1]):
            return "Triton GEMV self-check mismatch at one token"
        problem = _check_rows_gemv(model, x, w, bias, res, want) if one_token_rows() else None
        if problem is not None:
            return problem
        problem = _check_newer_kernels(model, kernels)
        if problem is not None:
            return problem
    except Exception as error:  # compiler missing, unsupported GPU, ...
        return f"Triton kernels failed: {type(error).__name__}: {error}"[:300]
    return None


def _check_newer_kernels(model: Decoder, kernels: Any) -> str | None:
    """Self-checks of the decode kernels only the newer layouts use (a dense model never
    runs them, so they are checked only where the model does)."""
    blocks = list(model.layers)
    dev, dt, d = model.device, model.dtype, model.spec.dim_head
    if any(b.sinks is not None or b.softcap is not None or b.scale for b in blocks):
        q = torch.randn(2, 4, d, device=dev, dtype=dt)
        cache = torch.randn(2, 100, 2, 2, d, device=dev, dtype=dt)
        lens = torch.tensor([37, 100], device=dev, dtype=torch.int32)
        sinks = torch.randn(4, device=dev, dtype=dt)
        got = kernels.decode_attention(q, cache, lens, None, 0.3, 5.0, sinks)
        want = []
        for i, n in enumerate((37, 100)):
            k = cache[i, :n, 0].float().repeat_interleave(2, 1)
            v = cache[i, :n, 1].float().repeat_interleave(2, 1)
            scores = torch.tanh(torch.einsum("hd,nhd->hn", q[i].float(), k) * 0.3 / 5.0) * 5.0
            probs = torch.cat([scores, sinks.float()[:, None]], -1).softmax(-1)[:, :-1]
            want.append(torch.einsum("hn,nhd->hd", probs, v))
        if not _close(got, torch.stack(want)):
            return "Triton decode attention (scale/soft-cap/sinks) self-check mismatch"
    if any(b.window is not None for b in blocks):
        qkv = torch.randn(2, 6, d, device=dev, dtype=dt)
        ring = torch.zeros(2, 8, 2, 2, d, device=dev, dtype=dt)
        pos, slots = torch.tensor([3, 21], device=dev), torch.tensor([3, 5], device=dev)
        kernels.rope_store(qkv, ring, pos, None, None, 2, slots)
        stored = ring[torch.arange(2, device=dev), slots]
        if not _close(stored, qkv[:, 2:].view(2, 2, 2, d)):
            return "Triton ring-buffer cache write self-check mismatch"
    if any(b.qk_norm == "head" for b in blocks):
        qkv = torch.randn(3, 6, d, device=dev, dtype=dt)
        wq, wk = torch.randn(d, device=dev, dtype=dt), torch.randn(d, device=dev, dtype=dt)
        want = qkv.float().clone()
        want[:, :2] = F.rms_norm(want[:, :2], (d,), wq.float(), 1e-6)
        want[:, 2:4] = F.rms_norm(want[:, 2:4], (d,), wk.float(), 1e-6)
        kernels.qk_norm(qkv, wq, wk, 1e-6, 2, 2)
        if not _close(qkv, want):
            return "Triton qk-norm self-check mismatch"
        # the decode step's path: the norm inside rope_store, against the two kernels
        pos = torch.tensor([5, 1, 9], device=dev)
        qkv = torch.randn(3, 4, d, device=dev, dtype=dt)
        caches = [torch.zeros(3, 16, 2, 1, d, device=dev, dtype=dt) for _ in range(2)]
        apart = qkv.clone()
        kernels.qk_norm(apart, wq, wk, 1e-6, 2, 1)
        kernels.rope_store(apart, caches[0], pos, model.cos, model.sin, 2)
        kernels.rope_store(qkv, caches[1], pos, model.cos, model.sin, 2, None, (wq, wk, 1e-6))
        if not (_close(qkv[:, :2], apart[:, :2]) and _close(caches[1], caches[0])):
            return "Triton qk-norm inside rope_store self-check mismatch"
    kinds = {b.ffn_kind for b in blocks} & {"geglu", "clamped_swiglu"}
    for kind in kinds:
        y = torch.randn(3, 2 * 64, device=dev, dtype=dt)
        want = activation(y.float(), kind, 64, {"swiglu_limit": 7.0, "swiglu_alpha": 1.702})
        if not _close(kernels.gated_act(y, 64, kind), want):
            return f"Triton {kind} self-check mismatch"
    if any(b.post_attn_norm is not None for b in blocks):
        h = model.spec.hidden_size
        x, r = (torch.randn(3, h, device=dev, dtype=dt) for _ in range(2))
        w = torch.randn(h, device=dev, dtype=dt)
        want = r.float() + F.rms_norm(x.float(), (h,), w.float(), 1e-6)
        if not _close(kernels.rms_norm_add(x, w, 1e-6, r), want):
            return "Triton norm + residual self-check mismatch"
    return None


def flash_problem(model: Decoder) -> str | None:
    """Why the flash-varlen decode path cannot be used here (None: it can, self-checked)."""
    spec, nq = model.spec, model.layout.q_heads
    if model.device.type != "cuda":
        return "not on CUDA"
    if model.dtype not in (torch.float16, torch.bfloat16):
        return f"FlashAttention needs float16/bfloat16, not {model.dtype}"
    if model.slopes is not None:
        return "ALiBi uses the masked path"
    if model.mla:
        return "MLA decodes in its latent space (its own attention)"
    if any(blk.sinks is not None or blk.softcap is not None for blk in model.layers):
        return "attention sinks / soft-capped scores are not in FlashAttention's varlen API"
    if spec.dim_head % 8 or spec.dim_head > 256:
        return f"head_dim {spec.dim_head} unsupported by FlashAttention"
    try:
        qkv, cache, lens, lens32 = _probe(model)
        b, length, nkv, d = 2, cache.shape[1], cache.shape[3], spec.dim_head
        cu_q = torch.arange(b + 1, device=model.device, dtype=torch.int32)
        k = cache[:, :, 0].view(b * length, nkv, d)
        v = cache[:, :, 1].view(b * length, nkv, d)
        out = flash_varlen(qkv[:, :nq], k, v, cu_q, cu_q * length, lens32, length)
        if not _close(out, _attention_reference(qkv[:, :nq], cache, lens, None)):
            return "FlashAttention varlen self-check mismatch"
    except Exception as error:  # missing op, unsupported GPU or build
        return f"FlashAttention varlen unavailable: {type(error).__name__}: {error}"[:300]
    return None


def moe_problem(model: Decoder, moe: Any) -> str | None:
    """Why the Triton grouped GEMM cannot run this model's experts (None: it can, checked
    against the dense path on the layer's own weights at a decode and a prefill size)."""
    if model.device.type != "cuda":
        return "not on CUDA"
    if model.dtype not in (torch.float16, torch.bfloat16):
        return f"Triton MoE kernels are for float16/bfloat16, not {model.dtype}"
    try:
        from infermeter.engine import moe_kernels

        moe.kernels, moe.path = moe_kernels, "triton"
        for tokens in (1, 3, 40):  # fused routing at decode sizes, torch routing beyond
            x = torch.randn(tokens, model.spec.hidden_size, device=model.device, dtype=model.dtype)
            got = moe._routed(x, None)
            if not _close(got, moe._dense(x, *moe.route(x))):
                return "Triton MoE self-check mismatch"
    except Exception as error:  # compiler missing, unsupported GPU, ...
        return f"Triton MoE kernels failed: {type(error).__name__}: {error}"[:300]
    return None


GEMV_MODES = ("sum", "pairs")
# the self-check's one tile of gemv_kernels.rows_gemv (both pieces of K where it splits)
ROWS_TILE = {"BLOCK_N": 2, "SPLIT": True, "num_warps": 4}


def moe_gemv_modes() -> tuple[str | None, ...]:
    """The batch-1 expert paths to consider, from INFERMETER_MOE_GEMV: unset, empty or
    "auto", the grouped GEMM (None) and both GEMV modes, the fastest timed at start; "sum"
    or "pairs", that mode; "0", the grouped GEMM at every size (ablations, workarounds).

    Raises UserError for any other value (read on every device, so a typo never passes)."""
    wanted = os.environ.get("INFERMETER_MOE_GEMV", "").strip() or "auto"
    if wanted == "auto":
        return (None, *GEMV_MODES)
    if wanted == "0":
        return (None,)
    if wanted not in GEMV_MODES:
        raise UserError(f"INFERMETER_MOE_GEMV must be auto, sum, pairs or 0, not {wanted!r}")
    return (wanted,)


ROUTE_WARPS = (1, 2, 4, 8)  # the counts route_align_bench times and checks


def route_warps_fixed() -> int | None:
    """moe_kernels.route_align's warps from INFERMETER_ROUTE_WARPS: None where unset or empty
    (the engine's rule, moe_kernels.route_warps), else that count at every size (ablations:
    4 was the count before 2026-12-04, docs/benchmarks/route_warps/).

    Raises UserError for any other value (read on every device, so a typo never passes)."""
    wanted = os.environ.get("INFERMETER_ROUTE_WARPS", "").strip()  # read by Engine up front
    if not wanted:
        return None
    if wanted not in {str(w) for w in ROUTE_WARPS}:
        raise UserError(
            f"INFERMETER_ROUTE_WARPS must be {one_of(ROUTE_WARPS)} (unset: by the tokens), "
            f"not {wanted!r}"
        )
    return int(wanted)


KERNEL_SWITCHES = {
    "INFERMETER_SPLIT_MERGE": ("0", "1"),
    "INFERMETER_PDL_TRIGGER": ("after", "first"),
}


def kernel_switches() -> dict[str, str]:
    """The decode kernels' ablation switches as set (kernels.SPLIT_MERGE, PDL_TRIGGER_FIRST
    read them when kernels is imported): {name: value} for those set and not empty.

    Raises UserError for a value a switch does not take (read by Engine up front, so a typo
    is refused in one line instead of running the default unnoticed)."""
    out = {}
    for name, values in KERNEL_SWITCHES.items():
        value = os.environ.get(name, "").strip()
        if value and value not in values:
            raise UserError(f"{name} must be {one_of(values)} (unset: {values[0]}), not {value!r}")
        if value:
            out[name] = value
    return out


def route_warps_note(moe: Any) -> str | None:
    """What a run records as its fused routing's warps: "by tokens (1, 2, 4, 8)" or "N
    (INFERMETER_ROUTE_WARPS)" where a MoE layer routes in route_align (the Triton path, one
    expert group, at most 256 experts), else None (torch's routing runs)."""
    if moe.path != "triton" or not _fusable(moe.cfg):
        return None
    if moe.route_warps is None:
        return "by tokens (1, 2, 4, 8)"
    return f"{moe.route_warps} (INFERMETER_ROUTE_WARPS)"


def call_us(
    fn: Any, device: torch.device, graphs: bool, ranks: int = 1, calls: int = 20, rounds: int = 5
) -> float:
    """Device µs per call of fn(), the fastest of `rounds` runs of `calls` calls: captured in
    one CUDA graph when the engine decodes under graphs (Python's launch cost not timed;
    with several `ranks` captured thread-locally, as the engine's own graphs are, since
    NCCL's watchdog thread may query events meanwhile), else launched one by one as the
    eager decode step launches them."""
    fn()
    torch.cuda.synchronize(device)
    graph = None
    if graphs:
        graph = torch.cuda.CUDAGraph()
        mode = "thread_local" if ranks > 1 else "global"
        with torch.cuda.graph(graph, capture_error_mode=mode):
            for _ in range(calls):
                fn()
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if graph is not None:
            graph.replay()
        else:
            for _ in range(calls):
                fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def moe_gemv_problem(model: Decoder, moe: Any) -> str | None:
    """Why the one-token expert GEMVs in mode moe.gemv cannot run (None: they match the
    dense path on the layer's own weights). Each mode is its own kernel variant ("sum" walks
    the k experts in one program, "pairs" writes k rows), so each is checked."""
    try:
        x = torch.randn(1, model.spec.hidden_size, device=model.device, dtype=model.dtype)
        if not _close(moe._routed(x, None), moe._dense(x, *moe.route(x))):
            return f"Triton expert GEMV ({moe.gemv}) self-check mismatch"
    except Exception as error:
        return f"Triton expert GEMV ({moe.gemv}) failed: {type(error).__name__}: {error}"[:300]
    return None


def batch1_paths(
    model: Decoder,
    moe: Any,
    modes: tuple[str | None, ...],
    graphs: bool,
    path: str,
    timed: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Per mode ("grouped" for None): µs of one token through `moe`'s router and routed
    experts with the residual added (as the decode step runs them: `timed`), or 0 where the
    mode merely passes its self-check (not `timed`); inf where it failed its self-check or
    its timing, or where the experts' `path` is not "triton" here; and this rank's problem
    with each mode that had one. The same layer and token every call, so a small layer's
    experts may stay in L2 (a real step reads them once among all weights).

    Every rank of a tensor-parallel group calls this (whether to call it depends on the
    spec and the environment only) and each mode gets the slowest rank's figure, since a
    step waits for its slowest rank: every rank then picks the same path."""
    x = torch.randn(1, model.spec.hidden_size, device=model.device, dtype=model.dtype)
    residual = torch.randn_like(x) if moe.lead else None  # the decode step adds it: "sum"
    times, problems = [], {}  # folds it into its last GEMV, the others add it after
    for mode in modes:
        moe.gemv = mode
        us, problem = float("inf"), None
        if path == "triton":
            problem = None if mode is None else moe_gemv_problem(model, moe)
        if path == "triton" and problem is None:
            try:
                us = (
                    call_us(
                        lambda: moe._routed(x, None, residual),
                        model.device,
                        graphs,
                        model.comm.size,
                    )
                    if timed
                    else 0.0
                )
            except Exception as error:  # a capture or launch failure: that mode is out
                problem = f"timing {mode or 'grouped'} failed: {type(error).__name__}: {error}"
        if problem is not None:
            problems[mode or "grouped"] = problem[:300]
        times.append(us)
    slowest = model.comm.maximum(torch.tensor(times, device=model.device)).tolist()
    return {m or "grouped": us for m, us in zip(modes, slowest, strict=True)}, problems


def _fusable(cfg: Any) -> bool:
    """Whether one token's routing is fused (moe_kernels.fused_routing, one expert group):
    the GEMVs hang off the fused path. From the spec alone, so every rank agrees."""
    if cfg.groups != 1:
        return False
    try:
        from infermeter.engine import moe_kernels
    except ImportError:  # no Triton: no triton path either
        return False
    return bool(moe_kernels.fused_routing(1, cfg.experts_per_token, cfg.num_experts))


def choose_moe(model: Decoder, graphs: bool = False) -> tuple[str | None, str | None]:
    """The expert path of every MoE layer (see engine/moe.py) and why Triton was skipped:
    "triton" on CUDA when it passes its self-check, else "dense" (static shapes for CUDA
    graphs, reads every expert); "loop" on CPU. (None, None) without MoE layers (a bad
    INFERMETER_MOE_GEMV or INFERMETER_ROUTE_WARPS is refused even then: UserError). Every
    layer takes route_warps_fixed()'s warps for its fused routing.

    On the triton path one token (batch-1 decode) may take the expert GEMVs instead of the
    grouped GEMM where routing is fused (one expert group, at most 256 experts): the path
    INFERMETER_MOE_GEMV forces (if every rank's self-check passes), or under "auto" the
    fastest of the three timed on the first layer, under CUDA graphs when the decode step
    runs under them (`graphs`), its timings kept in moe.batch1_us."""
    modes = moe_gemv_modes()  # read (and a typo refused) on every device
    warps = route_warps_fixed()
    layers = [blk.moe for blk in model.layers if blk.moe is not None]
    if not layers:
        return None, None
    for moe in layers:  # before the batch-1 paths are timed with them
        moe.route_warps = warps
    problem = moe_problem(model, layers[0])
    fallback = "dense" if model.device.type == "cuda" else "loop"
    path = "triton" if problem is None else fallback
    first, cfg = layers[0], layers[0].cfg
    first.gemv = None
    if model.device.type == "cuda" and any(modes):
        if not _fusable(cfg):
            if len(modes) == 1 and path == "triton":
                problem = (
                    f"INFERMETER_MOE_GEMV={modes[0]} not used: one token's routing is not fused "
                    f"here ({cfg.groups} expert groups, {cfg.num_experts} experts)"
                )
        else:  # every rank (see batch1_paths); auto times the three, a forced mode is checked
            auto = len(modes) > 1
            timings, problems = batch1_paths(model, first, modes, graphs, path, timed=auto)
            ok = {m: us for m, us in timings.items() if math.isfinite(us)}
            best = min(ok, key=ok.__getitem__) if ok and path == "triton" else "grouped"
            first.gemv = None if best == "grouped" else best
            if path == "triton":
                if auto:
                    first.batch1_us = {m: us if m in ok else None for m, us in timings.items()}
                failed = [m for m in timings if m not in ok]
                why = [problems.get(m, f"{m} failed on another rank") for m in failed]
                if why:
                    took = f"GEMVs ({first.gemv})" if first.gemv else "the grouped GEMM"
                    problem = "; ".join([*why, f"batch 1 takes {took}"])
    for moe in layers:
        moe.path, moe.kernels, moe.gemv = path, first.kernels, first.gemv
    return path, (None if model.device.type != "cuda" else problem)


def choose_attention(model: Decoder, wanted: str = "auto") -> tuple[str, dict[str, str]]:
    """The fastest decode attention that passes its self-check, and why others were skipped.
    Raises UserError for an unknown `wanted` or INFERMETER_ONE_TOKEN_GEMV (read on every
    device and path, so a typo never passes)."""
    one_token_rows()
    order = ["triton", "flash", "sdpa"] if wanted == "auto" else [wanted]
    if wanted not in ("auto", "triton", "flash", "sdpa"):
        raise UserError(f"engine: decode_attention must be auto|triton|flash|sdpa, not {wanted!r}")
    notes: dict[str, str] = {}
    for name in order:
        problem = {"triton": triton_problem, "flash": flash_problem}.get(name, lambda m: None)(
            model
        )
        if problem is None:
            return name, notes
        notes[name] = problem
    if wanted != "auto":
        raise UserError(f"engine: decode_attention={wanted!r} is unavailable: {notes[wanted]}")
    return "sdpa", notes
