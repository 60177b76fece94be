"""Prefill attention of soft-capped or sink layers (Gemma-2, gpt-oss) by FlexAttention.

The explicit path (attention.attend) materialises float32 scores, [b, nq, s, t], in blocks
of queries; FlashAttention exposes neither soft-capping nor sinks. FlexAttention compiles
the same math into one fused kernel that skips the masked tiles: soft-capping is its
score_mod, a sliding window or chunks its block mask, and the sinks are folded in after it
from its log-sum-exp (softmax over [scores, sink] scales each row by exp(lse) / (exp(lse) +
exp(sink)) = sigmoid(lse − sink)).

Why: measured on an H200 (benchmarks/explicit_attention.py, docs/benchmarks/
explicit_attention.md, 2c856e4), one layer's prefill attention took 53-81 % less time
under compiled FlexAttention at Gemma-2-9B's shapes (p = 493-4,097; one exception, the
global layer at p = 495: 18 % more) and 33-94 % less at gpt-oss-20b's (global layers at
p = 4,097: 15.5 ms against 1.0 ms), with outputs within 0.5-0.9 % of the largest
(bfloat16). Serving engines run these layers fused (FlashAttention has soft-capping;
vLLM's gpt-oss kernels have sinks), so the explicit path's attention is several times
slower than theirs. In the whole engine (benchmarks/flex_prefill.py, docs/benchmarks/
flex_prefill.md: an H100, 9c5052d, 8 layers, eager prefills) flex took 13-84 % less
prefill time from p = 1,841 and 32-55 % more near p = 500 for both models. Gemma-2's logits
agreed in bfloat16 (4.4e-3 of the largest); gpt-oss-20b's differed by 39 %, but one layer's
difference was of the order of Gemma-2's (4.7-8.3e-3 against 4.8e-3) and in float32 the whole
model's logits agreed to 6.9e-6 with every greedy token the same (flex_prefill_float32.md):
consistent with bfloat16 rounding that the random-weight MoE routing amplifies (routing
flips not counted), not with a flex error. Whole default
profiles (--max-context 4096, H100, 9c5052d; docs/benchmarks/prefill_attention.md, one
each) priced their validation queries comparably (runtime MAPE with flex 0.31 % against
0.53 % for Gemma-2-9B, 0.34 % against 0.40 % for gpt-oss-20b; max error 0.95 % against
1.95 % and 1.45 % against 1.27 %), and Gemma-2's prefill of 4,095 tokens took 0.18 s
against 0.44 s. With several ranks, all take flex or none (choose_prefill).

`FlexPrefill` is chosen by the Engine on CUDA after a self-check against the explicit path
(`flex_problem`) where INFERMETER_PREFILL_ATTENTION is auto (the default) or flex; explicit
keeps the explicit path, and so does auto where the self-check fails or FlexPrefill cannot be
built (a torch without FlexAttention: before 2.5; a Python its torch.compile does not support)
(the engine records why: Engine.prefill_attention_note).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

from infermeter.errors import UserError
from infermeter.units import one_of

PREFILL_MODES = ("auto", "explicit", "flex")
SWITCH = "INFERMETER_PREFILL_ATTENTION"
# Compiles a process may make of flex_attention: a size of its own, then symbolic sizes,
# per mask, score function, divisibility by the block size and float value (compiled_flex
# specialises floats: each cap and scale a compile of its own; a few each). Past the limit
# dynamo would run flex unfused (every score materialised, as slow as the path it replaces,
# and quietly): made an error instead.
RECOMPILE_LIMIT = 64
# flex_attention's kernel for a prefill of any length. By torch's source (_use_flex_decoding),
# compiled flex lowers a call with fewer than 128 queries to its decoding kernel (made for a few
# queries over a long cache) where batch and heads are static, the KV-head grouping a power of
# two and the mask one for all heads, as in the engine's prefill of Gemma-2 and gpt-oss. Whole
# prompts that short prefilled up to 3.4 times slower than on the explicit path: the default
# profiles of docs/benchmarks/stores/prefill_attention_9c5052d (an H100) measured Gemma-2-9B's
# one-token query at p = 33 and 97 in 36.5 and 43.2 ms with flex against 11.7 and 12.8 ms
# explicit (at p = 161, 12.9 against 14.0), gpt-oss-20b's at p = 97 in 24.1 against 18.8 ms
# (at p = 1 flex was the faster in both); a torch profile of Gemma-2-9B's first 8 layers
# (eager, an H100, 1682906; an ad hoc run, not a kept benchmark) showed the flex kernel at
# 355 us a layer at p = 33 against 35 us at 161, and the prefill 9.5 ms at p = 127 against
# 7.1 ms at 128. FORCE_USE_FLEX_ATTENTION is flex's switch to its attention kernel (torch 2.13
# calls it a legacy knob that its BACKEND option, "TRITON" here, is to replace: if it went, the
# self-check would not notice, as it checks results, not speed). On an H100 at 009dd74 it
# compiled for both models and Gemma-2-9B's default profile priced p = 33 and 97 at 10.1 and
# 11.1 ms (docs/benchmarks/stores/flex_short_kernel_009dd74).
PREFILL_KERNEL = {"FORCE_USE_FLEX_ATTENTION": True}
# The self-check's prompt lengths: an odd one over several blocks, and one under a block, where
# PREFILL_KERNEL matters (one such length compiled and checked; other lengths of 2-127 reuse
# that compile, a one-token prompt compiles its own).
SELF_CHECK_SIZES = (300, 45)


def prefill_mode() -> str:
    """INFERMETER_PREFILL_ATTENTION: auto (the default: flex where it passes its self-check),
    explicit (the explicit path, the default until c52cd9f) or flex (an error where flex cannot
    run). Why auto is the default: the module's docstring. Raises UserError for any other
    value (read by the Engine before the model is built)."""
    wanted = os.environ.get(SWITCH, "").strip() or "auto"
    if wanted not in PREFILL_MODES:
        raise UserError(f"{SWITCH} must be {one_of(PREFILL_MODES)} (unset: auto), not {wanted!r}")
    return wanted


@functools.cache
def _mask_mod(window: int | None, chunked: bool) -> Any:
    """FlexAttention's mask function of a layer (one object per kind: compiles guard on it).
    The semantics of attention.window_mask and chunk_mask."""
    if window is None:

        def causal(b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return ki <= qi

        return causal
    if chunked:

        def chunk(b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return (ki <= qi) & (qi // window == ki // window)

        return chunk

    def windowed(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return (ki <= qi) & (qi - ki < window)

    return windowed


@functools.cache
def _score_mod(softcap: float | None) -> Any:
    """Gemma-2's soft-capping c·tanh(x / c) as a score function (None: scores as they are)."""
    if softcap is None:
        return None

    def capped(score: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return torch.tanh(score / softcap) * softcap

    return capped


def lse_request() -> dict[str, Any]:
    """flex_attention's keyword for its log-sum-exp: return_aux (torch >= 2.9; return_lse
    is deprecated there) or return_lse."""
    from torch.nn.attention import flex_attention as flex

    if hasattr(flex, "AuxRequest"):
        return {"return_aux": flex.AuxRequest(lse=True)}
    return {"return_lse": True}


def compiled_flex() -> Any:
    """torch.compile(flex_attention) as FlexPrefill calls it, with float arguments (scale)
    and the floats its score functions close over (softcap) specialised: a compile a value.

    Without this, dynamo makes a float symbolic, reads it with .item() inside the score
    function, and inductor cannot lower flex with that unbacked value: "LoweringException:
    RuntimeError: unbacked_bindings". With automatic dynamic shapes that happens to a float
    that changed between calls in the process (the self-check's cap of 2 after Gemma-2's 50:
    an H200, torch 2.11, 92d784a; the same on a CPU, torch 2.13); with dynamic=True, to
    every float from the first call (41eac75). Sizes stay dynamic (from the second length).
    The patch costs some tens of microseconds an eager call (none in a CUDA graph's
    replay). Raises the process's recompile limit to RECOMPILE_LIMIT and makes hitting it
    an error, not flex's silent unfused path."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True
    compiled = torch.compile(flex_attention)
    if not hasattr(config, "specialize_float"):  # torch < 2.6: floats were specialised
        return compiled

    def flex(*args: Any, **kwargs: Any) -> Any:
        with config.patch(specialize_float=True):
            return compiled(*args, **kwargs)

    return flex


def _block_mask(s: int, window: int | None, chunked: bool, block: int, device: Any) -> Any:
    """FlexAttention's BlockMask of an [s, s] prefill under (window, chunked), in blocks of
    `block` queries and keys. Causal and windowed masks are built from the blocks' corners
    (a few [n, n] tensors, n = s / block); create_block_mask would evaluate the whole [s, s]
    mask first (about 10 GiB at s = 32,768). Chunks (no catalog model soft-caps or has sinks
    in chunked layers) go to create_block_mask."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    mask_mod = _mask_mod(window, chunked)
    if chunked:
        return create_block_mask(mask_mod, None, None, s, s, device=device, BLOCK_SIZE=block)
    n = -(-s // block)
    first = torch.arange(n, device=device) * block
    last = torch.clamp(first + block, max=s) - 1
    q_first, q_last, k_first, k_last = first[:, None], last[:, None], first[None], last[None]
    seen = k_first <= q_last  # some key of block j at or before some query of block i
    full = k_last <= q_first  # every key at or before every query
    if window is not None:  # key j is seen from query i when i - W < j <= i
        seen &= q_first - k_last < window
        full &= q_last - k_first < window
    partial = seen & ~full

    def listed(keep: Tensor) -> tuple[Tensor, Tensor]:
        counts = keep.sum(-1, dtype=torch.int32)[None, None]  # [1, 1, n]
        order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)  # kept blocks first
        return counts, order.to(torch.int32)[None, None]  # [1, 1, n, n]

    (counts, order), (full_counts, full_order) = listed(partial), listed(full)
    return BlockMask.from_kv_blocks(
        counts, order, full_counts, full_order, BLOCK_SIZE=block, mask_mod=mask_mod,
        seq_lengths=(s, s),
    )  # fmt: skip


class FlexPrefill:
    """Prefill attention over all s prompt keys, as attention.blocked_attend computes it.

    compiled: torch.compile(flex_attention) (CUDA); False runs flex eagerly (unfused, every
    score materialised: for checks on a CPU only). block: FlexAttention's tile of queries and
    keys in the block masks (128, its default; smaller in CPU tests). Block masks are built
    once a prompt length, outside any CUDA graph (the capture's eager warm-up builds them),
    and the cache keeps the latest length's only: a captured graph holds its own (masks()).
    """

    def __init__(self, compiled: bool = True, block: int = 128) -> None:
        from torch.nn.attention.flex_attention import flex_attention

        self._flex: Any = compiled_flex() if compiled else flex_attention
        self.block = block
        self._masks: dict[tuple[int, int | None, bool], Any] = {}
        self._request = lse_request()

    def block_mask(self, s: int, window: int | None, chunked: bool, device: torch.device) -> Any:
        """The block mask of an [s, s] prefill under (window, chunked), made once a length
        (another length's are dropped from the cache; a graph that reads them holds them)."""
        key = (s, window, chunked)
        if key not in self._masks:
            if any(k[0] != s for k in self._masks):
                self._masks.clear()
            self._masks[key] = _block_mask(s, window, chunked, self.block, device)
        return self._masks[key]

    def masks(self) -> tuple[Any, ...]:
        """The block masks in the cache now: a CUDA graph captured after the eager run of its
        length keeps these alive for as long as it may replay (Engine._prefill_graphs)."""
        return tuple(self._masks.values())

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        window: int | None,
        chunked: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
        sinks: Tensor | None = None,
    ) -> Tensor:
        """q [b, nq, s, d], k/v [b, nkv, s, d] at positions 0 .. s − 1 -> [b, nq, s, dv]:
        attention.blocked_attend's arguments and result (grouped-query heads: query head i
        reads KV head i // (nq / nkv)); sinks [nq] per-head logits."""
        s = q.shape[2]
        chunked = chunked and window is not None
        out, aux = self._flex(
            q, k, v,
            score_mod=_score_mod(softcap),
            block_mask=self.block_mask(s, window, chunked, q.device),
            scale=q.shape[-1] ** -0.5 if scale is None else scale,
            enable_gqa=q.shape[1] != k.shape[1],
            kernel_options=PREFILL_KERNEL,
            **self._request,
        )  # fmt: skip
        if sinks is None:
            return out
        lse = getattr(aux, "lse", aux)  # AuxOutput (torch >= 2.9) or the tensor
        keep = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))
        return (out.float() * keep[..., None]).to(out.dtype)


def _fused(blk: Any) -> bool:
    """Whether a block's prefill goes to FlexPrefill (model.Block._attend's condition)."""
    return blk.mla is None and (blk.softcap is not None or blk.sinks is not None)


def flex_differences(
    flex: FlexPrefill, model: Any, device: torch.device, dtype: torch.dtype, s: int = 300
) -> dict[str, float]:
    """How far `flex` is from the explicit path (attention.blocked_attend, what the engine
    runs without it) on random strided q, k and v of s tokens, as Block._attend slices them:
    per case, the largest |flex − explicit| over the largest |explicit|, keyed by the case
    (query/KV heads, head size, window, cap, sinks, scale). The cases: each kind of the
    model's capped or sink layers, and a check case ("check: ...") with a cap of 2 (where a
    cap not applied shows), sinks and a window of 128 at the first kind's heads. Empty for a
    model with no such layers. Compiles `flex` as a side effect; compiler and kernel errors
    propagate."""
    from infermeter.engine.attention import blocked_attend

    kinds = {
        (b.nq, b.nkv, b.d, b.window, b.chunked, b.softcap, b.sinks is not None, b.scale)
        for b in model.layers
        if _fused(b)
    }
    if not kinds:
        return {}
    cases = sorted(kinds, key=str)  # (a window may be None: ordered by their text)
    nq, nkv, d = cases[0][:3]
    cases.append((nq, nkv, d, 128, False, 2.0, True, None))
    gen = torch.Generator(device="cpu").manual_seed(0)
    out = {}
    for n, (nq, nkv, d, window, chunked, softcap, sinks, scale) in enumerate(cases):
        qkv = torch.randn(s, nq + 2 * nkv, d, generator=gen).to(device, dtype)
        q = qkv[:, :nq].view(1, s, nq, d).transpose(1, 2)
        kv = qkv[:, nq:].view(1, s, 2, nkv, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        sink = torch.randn(nq, generator=gen).to(device, dtype) if sinks else None
        got = flex(q, k, v, window, chunked, scale, softcap, sink).float()
        want = blocked_attend(q, k, v, window, chunked, scale, softcap, sink).float()
        name = (
            f"{'check: ' if n == len(cases) - 1 else ''}{nq}/{nkv} heads of {d}, window "
            f"{window}{' (chunks)' if chunked else ''}, cap {softcap}, sinks {sinks}, scale {scale}"
        )
        out[name] = float((got - want).abs().max() / want.abs().max())
    return out


def flex_problem(
    flex: FlexPrefill, model: Any, device: torch.device, dtype: torch.dtype
) -> str | None:
    """Why `flex` cannot serve `model`'s prefill here (None: within 2 % of the explicit
    path's largest output in bfloat16, 1e-4 in float32, in every case of flex_differences
    at each of SELF_CHECK_SIZES). The first line of a compiler or kernel error is returned
    as the problem, with the prompt length it failed at."""
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for s in SELF_CHECK_SIZES:
        try:
            differences = flex_differences(flex, model, device, dtype, s)
        except Exception as error:  # a compiler or kernel failure: the explicit path runs
            return f"{first_line(error)} (s = {s})"
        for name, diff in differences.items():
            if not diff <= tolerance:
                return (
                    f"flex prefill differs from the explicit path by {diff:.2e} ({name}, s = {s})"
                )
    return None


def first_line(error: BaseException) -> str:
    """An error as one line for a record or a note: its type and its message's first line,
    at most 300 characters (a compiler's messages run to pages)."""
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line}"[:300]


def _import_problem(error: ImportError) -> tuple[str, str]:
    """Why FlexPrefill could not be imported, and the fix: a torch without FlexAttention
    (before 2.5: FlexPrefill's first import is torch.nn.attention.flex_attention), or another
    import that failed (a broken install)."""
    if "flex_attention" in f"{getattr(error, 'name', None) or ''} {error}":
        return (
            f"this torch ({torch.__version__}) has no FlexAttention, which flex needs "
            f"(torch >= 2.5): {first_line(error)}",
            "set it to explicit, or upgrade torch to 2.5 or later",
        )
    return (
        f"importing FlexAttention failed: {first_line(error)}",
        "set it to explicit, or repair this torch's install",
    )


def choose_prefill(
    model: Any, device: torch.device, dtype: torch.dtype, mode: str, comm: Any = None
) -> tuple[str | None, str | None]:
    """The prefill attention of `model`'s soft-capped or sink layers, and why flex was not
    taken: ("flex", None) with model.flex_prefill set, ("explicit", why) or (None, None)
    where no layer soft-caps or has sinks. `mode` is prefill_mode()'s. With `comm` (the
    engine's parallel.Comm) over several ranks, every rank takes flex only where every rank's
    self-check passed (the run's record is rank 0's). Raises UserError where mode "flex"
    cannot run (not CUDA, FlexPrefill cannot be built: a torch without FlexAttention or a
    Python torch.compile does not support, or a self-check failed, on any rank)."""
    if not any(_fused(blk) for blk in model.layers):
        return None, None
    flex = None
    bug: Exception | None = None  # a bug in building FlexPrefill, raised after the collective
    problem: str | None = f"{SWITCH}=explicit"
    fix = "set it to explicit, or to auto (flex where it can run)"
    if mode != "explicit":
        problem = "not CUDA (FlexAttention is compiled for CUDA only here)"
        if device.type == "cuda":
            # Building FlexPrefill imports FlexAttention (ImportError in a torch before 2.5)
            # and calls torch.compile (RuntimeError on a Python it does not support: torch 2.5
            # on 3.13, say). Either keeps the explicit path. Any other error is a bug: raised
            # after the collective below, so that no other rank waits there for this one.
            try:
                flex = FlexPrefill()
            except ImportError as error:
                problem, fix = _import_problem(error)
            except RuntimeError as error:
                problem = first_line(error)
                fix = "set it to explicit, or use a Python that this torch's torch.compile takes"
            except Exception as error:
                problem, bug = first_line(error), error
            else:
                with torch.inference_mode():  # as the engine calls it (compiles guard on it)
                    problem = flex_problem(flex, model, device, dtype)
    if comm is not None and comm.size > 1:  # every rank reaches this collective, then decides
        failed = torch.tensor([float(problem is not None)], device=device if comm.nccl else "cpu")
        if comm.maximum(failed).item() and problem is None:
            problem = (
                "another rank could not run flex (its self-check failed, its torch has no "
                "FlexAttention or cannot compile it, or it was told explicit)"
            )
    if bug is not None:
        raise bug
    if problem is None:
        model.flex_prefill = flex
        return "flex", None
    if mode == "flex":
        raise UserError(f"{SWITCH}=flex cannot run: {problem}; {fix}")
    return "explicit", problem
