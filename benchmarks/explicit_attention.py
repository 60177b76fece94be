"""The engine's explicit prefill attention (soft-capping, sinks) against FlexAttention: time
and agreement at the attention shapes of the models that need it (issue 20's Gemma-2 and
gpt-oss; issue 15's PE(p) between knots).

Why: attention with soft-capped scores (Gemma-2) or sink logits (gpt-oss) cannot go to
SDPA's fused kernels, so the engine materialises float32 scores [nq, s, keys] and makes a
pass over them for each of scale, cap, mask, softmax and cast (engine/attention.py:attend,
in blocks by blocked_attend). At s = 1,840 that is a 217 MB tensor for Gemma-2-9B's 16 heads,
read and written about eight times a layer. Gemma-2-9B's profile (models.md, 1cfb365) priced
its two validation queries at multiples of 16 (p = 496 and 1,840) 1.7-2.6 % high in every
run since the key padding; a fused kernel would read each score once and might remove both
the passes and any dependence on p's alignment. FlexAttention (torch.nn.attention) fuses a
score modification (the cap) and a block-sparse mask (windows); sinks follow from its
log-sum-exp: softmax over [scores, sink] restricted to the keys is
softmax(scores) · sigmoid(lse − sink).

Per shape (one layer's attention, batch 1, bf16, random q, k, v) and prompt size s, both arms
in one process: "engine", blocked_attend as the engine calls it, and "flex",
torch.compile(flex_attention) with the layer's mask as a block mask (built per s, timed apart)
and the sinks' correction, asking for flex's attention kernel as the engine does
(flex.PREFILL_KERNEL: under 128 queries flex may take its decoding kernel; every GPU size
here is over that). Figures: each arm's time (CUDA events, median of --trials after a warm-up
call; the flex arm's first call, which compiles, timed apart), flex over engine, the residual
of each arm's time at multiples of 16 against the line through its other sizes, and the
largest difference between the arms relative to the largest output value.

Run (GPU): PYTHONPATH=src python benchmarks/explicit_attention.py [--trials 20]
CPU check (tiny shapes, float32, flex unfused, times meaningless): ... --quick
Writes docs/benchmarks/explicit_attention.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, record_problem, signed_pct, write_result
from engine_bench import cuda_time
from infermeter.engine.attention import blocked_attend
from infermeter.engine.flex import PREFILL_KERNEL, lse_request


@dataclass(frozen=True)
class Shape:
    """One layer's attention: heads, head size, softmax scale, cap, window, sinks."""

    name: str
    nq: int
    nkv: int
    d: int
    scale: float
    softcap: float | None
    window: int | None
    sinks: bool


GPU_SHAPES = (  # from the models' config.json files (catalog specs)
    Shape("gemma-2-9b global", 16, 8, 256, 256**-0.5, 50.0, None, False),
    Shape("gemma-2-9b local", 16, 8, 256, 256**-0.5, 50.0, 4096, False),
    Shape("gpt-oss-20b global", 64, 8, 64, 64**-0.5, None, None, True),
    Shape("gpt-oss-20b local", 64, 8, 64, 64**-0.5, None, 128, True),
)
QUICK_SHAPES = (
    Shape("tiny capped global", 4, 2, 16, 0.2, 5.0, None, False),
    Shape("tiny sinks local", 4, 2, 16, 0.25, None, 8, True),
)
GPU_SIZES = (493, 494, 495, 496, 497, 1836, 1837, 1838, 1839, 1840, 1841, 1842, 1843, 1844, 4097)
QUICK_SIZES = (31, 32, 33, 47, 48)


@dataclass(frozen=True)
class FlexMods:
    """A shape's mask and score functions, made once a shape (the compiled call guards on
    their code and the values they close over)."""

    mask: Callable[..., Any]
    score: Callable[..., Any] | None


def flex_mods(shape: Shape) -> FlexMods:
    window, cap = shape.window, shape.softcap

    def causal(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return ki <= qi

    def windowed(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return (ki <= qi) & (qi - ki < window)

    def capped(score: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return torch.tanh(score / cap) * cap

    return FlexMods(windowed if window else causal, capped if cap else None)


def flex_arm(
    shape: Shape, mods: FlexMods, s: int, device: str, compiled: Any
) -> Callable[..., torch.Tensor]:
    """The flex arm at size s: attention(q, k, v, sinks) -> [1, nq, s, d]; its block mask is
    built here (the caller times it)."""
    from torch.nn.attention.flex_attention import create_block_mask

    block = create_block_mask(mods.mask, None, None, s, s, device=device)
    request = lse_request()

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: Any) -> torch.Tensor:
        out, lse = compiled(
            q, k, v, score_mod=mods.score, block_mask=block, scale=shape.scale,
            enable_gqa=True, kernel_options=PREFILL_KERNEL, **request,
        )  # fmt: skip
        lse = getattr(lse, "lse", lse)  # AuxOutput (torch >= 2.9) or the tensor
        if sinks is None:
            return out
        keep = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))  # exp(lse)/(.. + e^sink)
        return (out.float() * keep[..., None]).to(out.dtype)

    return run


def timed(fn: Callable[[], Any], trials: int, device: str) -> float:
    """Median seconds of `trials` calls after one warm-up (CUDA events on a GPU)."""
    if device == "cuda":
        return cuda_time(fn, trials, warmup=1)
    fn()
    times = []
    for _ in range(trials):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def wall(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    """fn()'s result and the seconds it took once, the GPU's work included."""
    began = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def aligned_residual_pct(sizes: list[int], times: list[float]) -> float | None:
    """Mean residual (%) of the sizes that are multiples of 16 against the line through the
    other sizes of their own cluster (sizes at most 8 apart), a cluster being short enough
    for attention's s² growth to be a line across it; None where no cluster has a multiple
    of 16 and two other sizes."""
    clusters: list[list[tuple[int, float]]] = []
    for s, t in sorted(zip(sizes, times, strict=True)):
        if clusters and s - clusters[-1][-1][0] <= 8:
            clusters[-1].append((s, t))
        else:
            clusters.append([(s, t)])
    residuals = []
    for cluster in clusters:
        off = [(s, t) for s, t in cluster if s % 16]
        on = [(s, t) for s, t in cluster if s % 16 == 0]
        if len(off) < 2 or not on:
            continue
        slope, intercept = np.polyfit([s for s, _ in off], [t for _, t in off], 1)
        residuals += [(t / (slope * s + intercept) - 1) * 100 for s, t in on]
    return float(np.mean(residuals)) if residuals else None


def no_silent_fallback() -> None:
    """A fresh compiler state (each shape's compiles counted from zero), and an error instead
    of flex's unfused path (the whole score matrix) once dynamo's recompile limit is hit,
    which would otherwise show only as slow flex times."""
    import torch._dynamo

    torch._dynamo.reset()
    config = torch._dynamo.config
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True


def one_shape(shape: Shape, sizes: tuple[int, ...], device: str, trials: int) -> dict[str, Any]:
    from torch.nn.attention.flex_attention import flex_attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    compiled: Any = flex_attention  # the CPU check: flex's unfused path, no compiler
    if device == "cuda":
        no_silent_fallback()
        compiled = torch.compile(flex_attention)  # again at the 2nd size (s symbolic), and
        # where the block mask's block count changes: a few compiles a shape, recorded as
        # the first call's time at each size
    mods = flex_mods(shape)
    gen = torch.Generator(device="cpu").manual_seed(0)
    row: dict[str, Any] = {"shape": shape.__dict__, "sizes": list(sizes)}
    engine_s, flex_s, mask_s, first_s, diffs = [], [], [], [], []
    for s in sizes:
        q, k, v = (
            torch.randn(1, n, s, shape.d, generator=gen).to(device, dtype)
            for n in (shape.nq, shape.nkv, shape.nkv)
        )
        sinks = torch.randn(shape.nq, generator=gen).to(device, dtype) if shape.sinks else None

        def engine(q: Any = q, k: Any = k, v: Any = v, sinks: Any = sinks) -> torch.Tensor:
            return blocked_attend(q, k, v, shape.window, False, shape.scale, shape.softcap, sinks)

        run, seconds = wall(lambda s=s: flex_arm(shape, mods, s, device, compiled), device)
        mask_s.append(seconds)
        got, seconds = wall(lambda run=run, q=q, k=k, v=v, sinks=sinks: run(q, k, v, sinks), device)
        first_s.append(seconds)
        want = engine()
        diffs.append(float((got.float() - want.float()).abs().max() / want.float().abs().max()))
        engine_s.append(timed(engine, trials, device))
        flex_s.append(
            timed(lambda run=run, q=q, k=k, v=v, sinks=sinks: run(q, k, v, sinks), trials, device)
        )
    row.update(
        engine_s=engine_s, flex_s=flex_s, block_mask_s=mask_s, flex_first_call_s=first_s,
        max_rel_diff=max(diffs),
        flex_over_engine_pct=[(f / e - 1) * 100 for f, e in zip(flex_s, engine_s, strict=True)],
        engine_aligned_residual_pct=aligned_residual_pct(list(sizes), engine_s),
        flex_aligned_residual_pct=aligned_residual_pct(list(sizes), flex_s),
    )  # fmt: skip
    return row


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        name = r["shape"]["name"]
        if "failed" in r:
            out.append((f"{name}: failed", r["failed"], "-"))
            continue
        engine, flex = (
            signed_pct(r["engine_aligned_residual_pct"]),
            signed_pct(r["flex_aligned_residual_pct"]),
        )
        per_size = zip(
            r["sizes"], r["engine_s"], r["flex_s"], r["flex_over_engine_pct"], strict=True
        )
        times = ", ".join(
            f"s {s}: {e * 1e3:.3f} / {f * 1e3:.3f} ({x:+.0f} %)" for s, e, f, x in per_size
        )
        setup = f"{max(r['block_mask_s']):.4f} s; first call {max(r['flex_first_call_s']):.2f} s"
        diff, aligned = f"{r['max_rel_diff']:.2e}", f"{engine} / {flex}"
        out += [
            (f"{name}: flex vs engine, largest difference / largest output", diff, "-"),
            (f"{name}: p % 16 == 0 against a line through the others, engine / flex", aligned, "-"),
            (f"{name}: ms engine / flex (flex over engine)", times, "-"),
            (f"{name}: flex block mask, and first call (compiles), at most", setup, "-"),
        ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="CPU: tiny shapes, float32")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --quick for the CPU check")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if problem := record_problem("explicit_attention", args.out):
        parser.error(problem)
    shapes, sizes = (QUICK_SHAPES, QUICK_SIZES) if args.quick else (GPU_SHAPES, GPU_SIZES)
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    for shape in shapes:
        try:
            rows.append(one_shape(shape, sizes, device, args.trials))
            print(summary(rows[-1]), flush=True)
        except Exception as error:  # a compiler failure or the recompile limit: kept, go on
            failed = f"{type(error).__name__}: {error}"[:300]
            rows.append({"shape": shape.__dict__, "failed": failed})
            print(f"{shape.name}: failed: {failed}", flush=True)
        # written after each shape: a run cut short keeps what it measured
        record = "explicit_attention" + ("_quick" if args.quick else "")
        path = write_result(record, {"trials": args.trials, "rows": rows}, table(rows), args.out)
        print(f"written {path} after {time.perf_counter() - began:.0f} s", flush=True)


def summary(r: dict[str, Any]) -> str:
    slower = ", ".join(f"{x:+.0f}%" for x in r["flex_over_engine_pct"])
    engine = signed_pct(r["engine_aligned_residual_pct"])
    residuals = f"{engine} / {signed_pct(r['flex_aligned_residual_pct'])}"
    return (
        f"{r['shape']['name']}: diff {r['max_rel_diff']:.1e}; p % 16 == 0 residual engine / flex "
        f"{residuals}; flex over engine {slower}"
    )


if __name__ == "__main__":
    main()
