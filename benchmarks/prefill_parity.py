"""Windowed and chunked prefill: blocks (blocked_attend) against one attention under the whole
[s, s] mask, the engine's way until blocked_attend (issue 15's PE(p) between knots; issue 20's
sliding windows and chunks).

A profile's PE knots sit at odd prompt sizes and its validation queries at others, so a
prefill whose time depends on the parity of p, or grows with s² where the layer sees only W
keys, prices queries off the knots wrongly. Measured on an H200 at 0321b60: Llama-4 Scout cut to
8 layers (chunks of 8192) prefilled p = 13,854 (even, a validation query) in 0.258 s and the
knot below it, p = 13,281 (odd), in 0.276 s, and its profile priced 16 validation queries
4.55% high on average (max 17.9%).

Per model (each cut to --layers layers, random weights, bf16, the engine without CUDA graphs:
a captured prefill graph would replay whichever arm captured it), per prompt size p in pairs
(p odd, p + 1), both arms in one process, alternating:
- "blocks": the engine as it is (the prefill of windowed layers, and of global ones that
  soft-cap or have sinks, through blocked_attend);
- "whole mask": those layers' prefill as one attention under the [s, s] window, chunk or
  causal mask (each mask built once a prefill), keys unpadded, as the engine ran it before
  (installed by this script);
the prefill time of a 1-token generation (the engine's CUDA-event timing, minimum of
--trials). Figures: each arm's time at every p, and its mean ratio odd p / even p + 1.

Run (GPU): PYTHONPATH=src python benchmarks/prefill_parity.py
           [--models benchmarks/configs/llama-4-scout-8-layers.json,gpt-oss-20b,gemma-2-9b]
           [--layers 8] [--max-context 16384]
CPU check (tiny specs, float32): ... --quick
Writes docs/benchmarks/prefill_parity.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, record_problem, signed_pct, write_result
from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.engine import attention, model
from infermeter.errors import UserError
from infermeter.spec.catalog import resolve_spec

GPU_MODELS = "benchmarks/configs/llama-4-scout-8-layers.json,gpt-oss-20b,gemma-2-9b,gemma-3-27b"
QUICK_MODELS = "tiny-llama4,tiny-gpt-oss,tiny-gemma2"
ARMS = ("blocks", "whole mask")


def whole_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    chunked: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    block: int = 0,
) -> torch.Tensor:
    """The prefill before blocked_attend: one attention over all s keys under the window's,
    chunk's or (global layers that soft-cap or have sinks) the causal [s, s] bool mask; SDPA
    (no key padding) unless the layer soft-caps or has sinks (the explicit path, which padded
    its keys already)."""
    mask = _mask(q.shape[2], window, chunked and window is not None, str(q.device))
    if softcap is None and sinks is None:
        if q.shape[1] != k.shape[1]:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attention.attend(q, k, v, mask, scale, softcap, sinks)


@functools.lru_cache(maxsize=3)
def _mask(s: int, window: int | None, chunked: bool, device: str) -> torch.Tensor:
    """The [s, s] bool mask, built once a shape as the engine built it once a prefill (kept
    while the same prefill's layers ask for it: a window's and the causal one at most)."""
    pos = torch.arange(s, device=device)
    if chunked and window is not None:
        return attention.chunk_mask(pos, pos, window)
    return attention.window_mask(pos, pos, window)


@contextlib.contextmanager
def arm(name: str) -> Iterator[None]:
    """The engine's windowed prefill as `name` says, restored after."""
    original = model.blocked_attend
    model.blocked_attend = whole_mask if name == "whole mask" else original  # type: ignore[assignment]
    try:
        yield
    finally:
        model.blocked_attend = original  # type: ignore[assignment]
        _mask.cache_clear()  # no mask kept past the prefill that built it


def sizes_for(spec: Any, cap: int, quick: bool) -> list[int]:
    """Odd prompt sizes n·step − 31 (where a profile's knots sit) at quarters of the context up
    to `cap`, and one past each window or chunk; each is paired with p + 1."""
    top = min(spec.max_context, cap) - 2
    if quick:
        return [9, 17, 33]
    step = max(64, top // 4 // 1024 * 1024)
    sizes = {n * step - 31 for n in range(1, 5) if n * step - 31 < top}
    sizes.add(top - 1 if top % 2 == 0 else top - 2)
    if spec.sliding_window and spec.sliding_window + 201 < top:
        sizes.add(spec.sliding_window + 201)  # past the window: odd since W is even
    return sorted(p if p % 2 else p - 1 for p in sizes)


def prefill_times(
    backend: EngineBackend,
    sizes: list[int],
    arms: tuple[str, ...],
    enter: Callable[[str], AbstractContextManager[None]],
    trials: int,
) -> tuple[dict[str, dict[int, float | None]], dict[str, str]]:
    """Per arm and prompt size, the least prefill seconds (the engine's CUDA-event time of a
    1-token generation) over `trials` rounds after a warm-up round; in each round every p
    runs under each arm (`enter(arm)`), the arms' order reversed every other round. Also the
    failures ("arm, p p" -> detail: out of memory), whose sizes have no time (None)."""
    times: dict[str, dict[int, list[float]]] = {a: {p: [] for p in sizes} for a in arms}
    failed: dict[str, str] = {}
    for trial in range(trials + 1):  # trial 0: warm-up
        for p in sizes:
            for which in arms if trial % 2 else arms[::-1]:
                with enter(which):
                    m = backend.measure(Point(p, 1, 1, trial))
                if m.status != "ok":  # out of memory: the arm has no time at p
                    failed.setdefault(f"{which}, p {p}", m.detail or m.status)
                elif trial:
                    times[which][p].append(m.ttft_s or m.runtime_s)
    best = {a: {p: min(ts, default=None) for p, ts in times[a].items()} for a in arms}
    return best, failed


def one_model(name: str, layers: int, device: str, trials: int, cap: int) -> dict[str, Any]:
    spec = truncated(resolve_spec(name), layers)
    dtype = "bfloat16" if device == "cuda" else None
    backend = EngineBackend(device=device, dtype=dtype, cuda_graphs=False)  # see the docstring
    backend.prepare(spec)
    odd = sizes_for(spec, cap, device == "cpu")
    sizes = sorted({q for p in odd for q in (p, p + 1)})
    try:
        times, failed = prefill_times(backend, sizes, ARMS, arm, trials)
    finally:
        backend.close()
    row: dict[str, Any] = {"model": name, "spec": spec.name, "layers": spec.num_layers}
    row["window"] = spec.sliding_window
    row["chunked"] = spec.chunked_attention
    row["sizes"] = sizes
    row["failed"] = failed
    for which in ARMS:
        key = which.replace(" ", "_")
        best = times[which]
        row[f"{key}_prefill_s"] = [best[p] for p in sizes]
        ratios = [best[p] / best[p + 1] for p in odd if best[p] and best[p + 1]]
        row[f"{key}_odd_over_even_pct"] = (statistics.mean(ratios) - 1) * 100 if ratios else None
    row["blocks_over_whole_mask_pct"] = [
        None if b is None or w is None else (b / w - 1) * 100
        for b, w in zip(row["blocks_prefill_s"], row["whole_mask_prefill_s"], strict=True)
    ]
    return row


def _ms(x: float | None) -> str:
    return "out of memory" if x is None else f"{x * 1e3:.1f}"


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        what = "chunks" if r["chunked"] else "window"
        out.append((f"{r['spec']}: {what}", f"{r['window']}", "-"))
        for which in ARMS:
            key = which.replace(" ", "_")
            out.append(
                (
                    f"{r['spec']}: {which}, PE at odd p over p + 1 (mean)",
                    signed_pct(r[f"{key}_odd_over_even_pct"]),
                    "-",
                )
            )
        cells = ", ".join(
            f"p {p}: {_ms(b)} / {_ms(w)} ms"
            for p, b, w in zip(
                r["sizes"], r["blocks_prefill_s"], r["whole_mask_prefill_s"], strict=True
            )
        )
        out.append((f"{r['spec']}: prefill, blocks / whole mask", cells, "-"))
    return out


def engine_cli(
    doc: str, record: str, gpu_models: str, quick_models: str, more: Callable[[Any], None]
) -> tuple[argparse.ArgumentParser, argparse.Namespace, str, list[tuple[str, Any]]]:
    """A prefill script's command line: --models, --layers, --trials, --quick, --out and the
    options `more(parser)` adds; refused in one line (exit 2) before any work: no GPU
    without --quick, counts below 1, an --out that is a file, a model that does not
    resolve. Returns the parser (for the caller's checks of its own options), the options,
    the device and each model with its spec."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=None, help=f"names or config.json paths ({gpu_models})")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3)
    more(parser)
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs, float32")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --quick for the CPU check")
    if args.trials < 1 or args.layers < 1:
        parser.error("--trials and --layers must be at least 1")
    if problem := record_problem(record + ("_quick" if args.quick else ""), args.out):
        parser.error(problem)
    models = []
    for name in (args.models or (quick_models if args.quick else gpu_models)).split(","):
        try:  # a bad name fails before minutes of the others
            models.append((name, resolve_spec(name)))
        except UserError as error:
            parser.error(str(error))
    return parser, args, device, models


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max-context", type=int, default=16384, help="largest p measured")

    _, args, device, models = engine_cli(
        __doc__ or "", "prefill_parity", GPU_MODELS, QUICK_MODELS, more
    )
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    for name, _ in models:
        rows.append(one_model(name, args.layers, device, args.trials, args.max_context))
        r = rows[-1]
        change = zip(r["sizes"], r["blocks_over_whole_mask_pct"], strict=True)
        print(
            f"{r['spec']}: odd/even blocks {signed_pct(r['blocks_odd_over_even_pct'])}, "
            f"whole mask {signed_pct(r['whole_mask_odd_over_even_pct'])}; blocks vs whole "
            + ", ".join(f"{p}: {signed_pct(x)}" for p, x in change)
            + (f"; failed: {r['failed']}" if r["failed"] else "")
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        # written after each model: a run cut short keeps what it measured
        result = {"layers": args.layers, "trials": args.trials, "models": rows}
        name = "prefill_parity" + ("_quick" if args.quick else "")
        path = write_result(name, result, table(rows), args.out)
        print(f"written {path} after {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
