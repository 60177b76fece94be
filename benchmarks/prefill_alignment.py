"""Prefill time at every prompt size of a range: does p's alignment (a multiple of 2, 4, 8 or
16) change the time, and is the engine's key padding the cause (issue 15's PE(p) between
knots)?

Why: a profile's PE knots sit at odd prompt sizes (n·step − 31), so a prefill that runs faster
at aligned p is priced high there. Every Gemma-2-9B profile since the key padding (models.md,
1cfb365) priced its two validation queries at multiples of 16 (p = 496 and 1,840) 1.7-2.6 %
high, while the others were within ±1.2 % (but one, +2.36 %). The explicit attention path
(soft-capping, sinks: engine/attention.py:attend), and masked SDPA (windows, chunks), pad keys
and values to a multiple of 16 (_aligned_keys: a copy of keys, values and mask at each
attention call) unless the key count already is one, so at aligned p those copies are
skipped; aligned p may also run faster for other reasons (aligned query rows, cuBLAS's
kernels on the unpadded strided keys).

Per model (each cut to --layers layers, random weights, bf16, the engine without CUDA graphs),
at every p of --sizes, three arms in one process, alternating (prefill_parity.prefill_times):
- "padded keys": the engine as it is;
- "unpadded keys": _aligned_keys a no-op (the engine before the padding: odd rows of scores);
- "copied keys": the engine, and at aligned key counts a contiguous copy of keys, values and
  mask all the same, so every p pays the copies.
Copied over padded at multiples of 16 is the copies' cost where the engine skips them: if the
dip at aligned p is that size, the copies are why. Padded and unpadded run the same work at
multiples of 16, as all arms do everywhere for a model whose prefill never pads (LLaMA-7B, the
control; `pads_keys` in the record says which, from the calls seen): their ratio there is
the run's noise.
Figures per arm: PE at p of each alignment class (the largest power of two up to 16 dividing
p) against a quadratic in p through the odd sizes of its own range, as a mean residual (%);
unpadded over padded at odd p and at multiples of 16; copied over padded at multiples of 16.

Run (GPU): PYTHONPATH=src python benchmarks/prefill_alignment.py
           [--models gemma-2-9b,gpt-oss-20b,llama-7b] [--sizes 480-512,1800-1870]
           [--layers 8] [--trials 3]
CPU check (tiny specs, float32, times meaningless): ... --quick
Writes docs/benchmarks/prefill_alignment.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import signed_pct, write_result
from decode_breakdown import truncated
from infermeter.backends.engine import EngineBackend
from infermeter.engine import attention
from infermeter.spec.catalog import resolve_spec
from prefill_parity import engine_cli, prefill_times

GPU_MODELS = "gemma-2-9b,gpt-oss-20b,llama-7b"
QUICK_MODELS = "tiny-gemma2,tiny-gpt-oss,tiny-llama"
GPU_SIZES = "480-512,1800-1870"
QUICK_SIZES = "9-24"
ARMS = ("padded keys", "unpadded keys", "copied keys")
CLASSES = (1, 2, 4, 8, 16)  # the largest power of two up to 16 that divides p
RATIOS = {  # the record's <key>_pct: what it is
    "copied_over_padded_16": "copied over padded keys, at multiples of 16 (the copies' cost)",
    "unpadded_over_padded_odd": "unpadded over padded keys, at odd p (the padding's gain)",
    "unpadded_over_padded_16": "unpadded over padded keys, at multiples of 16 (same work: noise)",
}


def parse_sizes(text: str, most: int | None = None) -> list[int]:
    """'480-512,1800' -> [480, ..., 512, 1800]; ValueError (one line) for anything else, or a
    size past `most` (checked before a range is expanded)."""
    bounds = []
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not found:
            raise ValueError(f"--sizes: {part!r} is not a size or a range like 480-512")
        a, b = int(found[1]), int(found[2] or found[1])
        if not 1 <= a <= b:
            raise ValueError(f"--sizes: {part!r} must be sizes of at least 1, low to high")
        if most is not None and b > most:
            raise ValueError(
                f"--sizes: {b} is past {most}, the largest prompt that leaves room for its "
                "1 output token"
            )
        bounds.append((a, b))
    return sorted({p for a, b in bounds for p in range(a, b + 1)})


def alignment(p: int) -> int:
    """The largest power of two up to 16 that divides p (1 for odd p)."""
    return min(p & -p, 16)


def class_residuals_pct(sizes: list[int], times: list[float | None]) -> dict[str, float | None]:
    """Per alignment class ("1", "2", "4", "8", "16"), the mean residual (%) of its sizes'
    times against a quadratic in p through the odd sizes of their own range (sizes at most
    8 apart; a line where a range has only two odd sizes with a time); None for a class with
    no size in a range that has such a fit. The odd class reads about 0 by construction."""
    ranges: list[list[tuple[int, float]]] = []
    for s, t in sorted((s, t) for s, t in zip(sizes, times, strict=True) if t is not None):
        if ranges and s - ranges[-1][-1][0] <= 8:
            ranges[-1].append((s, t))
        else:
            ranges.append([(s, t)])
    residuals: dict[int, list[float]] = {c: [] for c in CLASSES}
    for run in ranges:
        odd = [(s, t) for s, t in run if s % 2]
        if len(odd) < 2:
            continue
        x0 = statistics.mean(s for s, _ in odd)  # centred: a well-conditioned fit
        fit = np.polyfit([s - x0 for s, _ in odd], [t for _, t in odd], min(2, len(odd) - 1))
        for s, t in run:
            residuals[alignment(s)].append((t / float(np.polyval(fit, s - x0)) - 1) * 100)
    return {str(c): float(np.mean(r)) if r else None for c, r in residuals.items()}


SEEN: dict[str, int] = {}  # arm -> _aligned_keys calls whose key count is not aligned


def _unpadded(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> Any:
    return k, v, mask


def _copied(pad: Any) -> Any:
    """`pad` (the engine's _aligned_keys), and at aligned key counts contiguous copies."""

    def copy(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> Any:
        if k.shape[2] % attention.KEY_ALIGN:
            return pad(k, v, mask)
        dense = torch.contiguous_format
        kept = None if mask is None else mask.clone(memory_format=dense)
        return k.clone(memory_format=dense), v.clone(memory_format=dense), kept

    return copy


@contextlib.contextmanager
def arm(name: str) -> Iterator[None]:
    """The engine's key padding as `name` says (ARMS), restored after; the calls whose key
    count is not a multiple of KEY_ALIGN are counted in SEEN[name]."""
    original = attention._aligned_keys
    inner = {"unpadded keys": _unpadded, "copied keys": _copied(original)}.get(name, original)

    def counted(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> Any:
        if k.shape[2] % attention.KEY_ALIGN:
            SEEN[name] = SEEN.get(name, 0) + 1
        return inner(k, v, mask)

    attention._aligned_keys = counted  # type: ignore[assignment]
    try:
        yield
    finally:
        attention._aligned_keys = original  # type: ignore[assignment]


def _ratio_pct(a: list[float | None], b: list[float | None], keep: list[bool]) -> float | None:
    """Mean of a/b − 1 (%) where `keep` and both have a time."""
    ratios = [x / y for x, y, k in zip(a, b, keep, strict=True) if k and x and y]
    return (statistics.mean(ratios) - 1) * 100 if ratios else None


def one_model(name: str, sizes: list[int], layers: int, device: str, trials: int) -> dict[str, Any]:
    spec = truncated(resolve_spec(name), layers)
    dtype = "bfloat16" if device == "cuda" else None
    backend = EngineBackend(device=device, dtype=dtype, cuda_graphs=False)  # as prefill_parity
    backend.prepare(spec)
    SEEN.clear()
    try:
        times, failed = prefill_times(backend, sizes, ARMS, arm, trials)
    finally:
        backend.close()
    row: dict[str, Any] = {"model": name, "spec": spec.name, "layers": spec.num_layers}
    return row | summary(sizes, times, failed, SEEN.get(ARMS[0], 0))


def summary(
    sizes: list[int],
    times: dict[str, dict[int, float | None]],
    failed: dict[str, str],
    padded_calls: int,
) -> dict[str, Any]:
    """A model's figures from its least prefill seconds per arm and p (prefill_times) and the
    padded arm's calls of _aligned_keys at unaligned key counts."""
    row: dict[str, Any] = {"pads_keys": padded_calls > 0, "padded_calls": padded_calls}
    row["sizes"] = sizes
    row["failed"] = failed
    for which in ARMS:
        key = which.replace(" ", "_")
        row[f"{key}_prefill_s"] = [times[which][p] for p in sizes]
        row[f"{key}_residual_vs_odd_pct"] = class_residuals_pct(sizes, row[f"{key}_prefill_s"])
    padded = row["padded_keys_prefill_s"]
    odd, aligned = [p % 2 == 1 for p in sizes], [p % 16 == 0 for p in sizes]
    row["unpadded_over_padded_odd_pct"] = _ratio_pct(row["unpadded_keys_prefill_s"], padded, odd)
    row["unpadded_over_padded_16_pct"] = _ratio_pct(row["unpadded_keys_prefill_s"], padded, aligned)
    row["copied_over_padded_16_pct"] = _ratio_pct(row["copied_keys_prefill_s"], padded, aligned)
    return row


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        pads = (
            f"keys padded at unaligned p ({r['padded_calls']} calls in the run)"
            if r["pads_keys"]
            else "keys never padded (a control)"
        )
        out.append((f"{r['spec']}: prefill; sizes", f"{pads}; {_span(r['sizes'])}", "-"))
        for which in ARMS:
            res = r[f"{which.replace(' ', '_')}_residual_vs_odd_pct"]
            cells = ", ".join(f"{c}: {signed_pct(res[str(c)])}" for c in CLASSES[1:])
            what = "PE against the odd-p curve, at p whose largest power-of-2 divisor (≤ 16) is"
            out.append((f"{r['spec']}: {which}, {what}", cells, "-"))
        for key, what in RATIOS.items():
            out.append((f"{r['spec']}: {what}", signed_pct(r[f"{key}_pct"]), "-"))
        if r["failed"]:
            failed = "; ".join(f"{k}: {v}" for k, v in r["failed"].items())
            out.append((f"{r['spec']}: failed", failed, "-"))
    return out


def _span(sizes: list[int]) -> str:
    """[480, 481, ..., 512, 1800] -> '480-512, 1800'."""
    parts: list[list[int]] = []
    for s in sizes:
        if parts and s == parts[-1][-1] + 1:
            parts[-1].append(s)
        else:
            parts.append([s])
    return ", ".join(f"{p[0]}-{p[-1]}" if len(p) > 1 else f"{p[0]}" for p in parts)


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        sizes = f"prompt sizes and ranges ({GPU_SIZES}; with --quick {QUICK_SIZES})"
        parser.add_argument("--sizes", default=None, help=sizes)

    parser, args, device, models = engine_cli(
        __doc__ or "", "prefill_alignment", GPU_MODELS, QUICK_MODELS, more
    )
    name, spec = min(models, key=lambda m: m[1].max_context)
    try:  # p and its one output token within every model's context
        text = args.sizes or (QUICK_SIZES if args.quick else GPU_SIZES)
        sizes = parse_sizes(text, spec.max_context - 1)
    except ValueError as error:
        context = (
            f" ({name}'s context is {spec.max_context} tokens)" if "past" in str(error) else ""
        )
        parser.error(f"{error}{context}")
    name = "prefill_alignment" + ("_quick" if args.quick else "")
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    for model, _ in models:
        rows.append(one_model(model, sizes, args.layers, device, args.trials))
        r = rows[-1]
        res = r["padded_keys_residual_vs_odd_pct"]
        print(
            f"{r['spec']}: padded keys at multiples of 16 {signed_pct(res['16'])} against the "
            f"odd-p curve; copied over padded there {signed_pct(r['copied_over_padded_16_pct'])}"
            f"; unpadded over padded at odd p {signed_pct(r['unpadded_over_padded_odd_pct'])}"
            + (f"; failed: {r['failed']}" if r["failed"] else "")
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        # written after each model: a run cut short keeps what it measured
        result = {"layers_asked": args.layers, "trials": args.trials, "models": rows}
        path = write_result(name, result, table(rows), args.out)
        print(f"written {path} after {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
