"""Batch-1 GEMV kernels at the shapes of today's MoE models, one kernel at a time (issue 20).

decode_breakdown.md found the batch-1 decode step of fine-grained MoE models made by its GEMVs
(the expert GEMVs near 46% of the copy bandwidth, the M = 1 linears 64-80%), not by launch
gaps. This script times each GEMV of a layer alone, for each kernel that can run it:

- `rows`: gemv_kernels.rows_gemv (whole rows of K a program), as the engine runs it
  (`autotuned`) and at each tile that fits (BLOCK_N, warps, K split or not): the fastest tile
  beside the autotuned one says what the tuner's choice costs;
- `looped`: kernels._small_linear (K walked in blocks), the kernel one token took before,
  and `cublas` (torch's F.linear), for the dense linears;
- `grouped`: a whole batch-1 expert layer by the grouped GEMM (align, two grouped GEMMs, the
  sum over k), the engine's other batch-1 path, for the experts.
The looped expert GEMV (moe_kernels._expert_gemv) that rows_gemv replaced is gone; its
figures at the same shapes are in gemv_sweep_before.md.

Each timing is a CUDA graph of R launches of the kernel (with PDL where the engine uses it),
each launch on another copy of the weights (and, for experts, other experts: R random top-k
rows over two layers' tables), so that the L2 cache holds none of it; replayed 10 times, the
median over R. Bytes are those the launch must read (the chosen experts' rows, or the whole
matrix); `bw_frac` is that over the copy bandwidth of models_bench.copy_bandwidth.

Run (GPU): PYTHONPATH=src python benchmarks/gemv_sweep.py [--models qwen3-30b-a3b,...]
CPU check (Triton's interpreter, tiny shapes, arithmetic only): --quick
Writes docs/benchmarks/gemv_sweep.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F

from _record import DOCS, write_result
from infermeter.spec.catalog import get_spec

GPU_MODELS = "qwen3-30b-a3b,deepseek-v2-lite,gpt-oss-20b,mixtral-8x7b"
L2_SPILL_BYTES = 256 * 2**20  # weights cycled per graph: several times any Hopper L2
MAX_LAUNCHES = 128
WARPS = (2, 4, 8, 16)
BLOCK_NS = (1, 2, 4, 8, 16, 32)
PER_THREAD = (8, 64)  # bf16 weight elements a thread loads: the tiles worth compiling


def dense_shapes(name: str) -> list[tuple[str, int, int, bool]]:
    """(op, N, K, bias) of a layer's M = 1 linears and the LM head, from the catalog spec."""
    s = get_spec(name)
    h = s.hidden_size
    rows: list[tuple[str, int, int, bool]] = []
    if s.mla is None:
        d = s.head_dim or h // s.num_heads
        q = s.num_heads * d
        rows += [("qkv", q + 2 * s.num_kv_heads * d, h, name.startswith("gpt-oss"))]
        rows += [("o", h, q, name.startswith("gpt-oss"))]
    else:  # MLA (DeepSeek-V2-Lite): the projections decode_breakdown's small_linear counts
        rows += [("q", 3072, h, False), ("kv_a", 576, h, False), ("o", h, 2048, False)]
    moe = s.moe
    assert moe is not None
    if moe.shared_ffn_size:
        rows += [("shared_in", 2 * moe.shared_ffn_size, h, False)]
        rows += [("shared_down", h, moe.shared_ffn_size, False)]
    rows += [("lm_head", s.vocab_size, h, False)]
    return rows


def tiles(elements: int) -> list[tuple[int, int]]:
    """(BLOCK_N, warps) whose per-thread weight load (elements·BLOCK_N / threads) is in
    PER_THREAD: `elements` is what one column of the tile loads (P·K_PAD, ×2 with gate/up)."""
    lo, hi = PER_THREAD
    return [(bn, w) for bn in BLOCK_NS for w in WARPS if lo <= elements * bn // (32 * w) <= hi]


def graph_time_s(launch: Callable[[int], None], launches: int, replays: int = 10) -> float:
    """Seconds per launch: median replay of a CUDA graph of `launches` launches."""
    for i in range(launches):  # compile and warm outside capture
        launch(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for i in range(launches):
            launch(i)
    torch.cuda.synchronize()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / launches)
    del graph
    return statistics.median(times)


def reference_close(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = want.float().abs().max().item() + 1e-6
    return (got.float() - want.float()).abs().max().item() <= 2e-2 * scale


def sweep_model(name: str, bw_Bps: float, quick: bool) -> list[dict[str, Any]]:
    from infermeter.engine import gemv_kernels as gk
    from infermeter.engine import kernels as kern
    from infermeter.engine import moe_kernels as mk

    dev = "cpu" if quick else "cuda"
    s = get_spec(name)
    moe = s.moe
    assert moe is not None
    E, k, h, inter = moe.num_experts, moe.experts_per_token, s.hidden_size, moe.expert_ffn_size
    if quick:
        E, k, h, inter = 8, 2, 96, 40
    act = "clamped_swiglu" if name.startswith("gpt-oss") else "swiglu"
    dtype = torch.float32 if quick else torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    results: list[dict[str, Any]] = []

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, device=dev, generator=gen) * 0.02).to(dtype)

    def record(op: str, variant: str, tile: str, secs: float, nbytes: int, ok: bool) -> None:
        row = {
            "model": name, "op": op, "variant": variant, "tile": tile, "us": secs * 1e6,
            "bytes": nbytes, "bw_frac": nbytes / secs / bw_Bps, "ok": ok,
        }  # fmt: skip
        results.append(row)
        print(f"  {op:12s} {variant:14s} {tile:18s} {row['us']:9.2f} us {row['bw_frac']:6.1%}"
              f" {'ok' if ok else 'WRONG'}", flush=True)  # fmt: skip

    def timed(launch: Callable[[int], Any], launches: int) -> float:
        if quick:
            launch(0)
            return 1.0
        return graph_time_s(launch, launches)

    def sweep(op: str, call: Callable[..., torch.Tensor], want: torch.Tensor, launches: int,
              nbytes: int, k_len: int, lanes_per_col: int) -> None:  # fmt: skip
        """The engine's autotuned call, then every tile of the rows kernel that fits."""
        record(op, "rows", "autotuned", timed(call, launches), nbytes, True)
        for split in (False, True):
            if split and sum(gk.k_pieces(k_len, True)) >= sum(gk.k_pieces(k_len, False)):
                continue
            lanes = sum(gk.k_pieces(k_len, split)) * lanes_per_col
            for bn, warps in tiles(lanes) if not quick else [(4, 4)]:
                tile = {"BLOCK_N": bn, "SPLIT": split, "num_warps": warps}

                def run(i: int, tile: dict[str, Any] = tile) -> torch.Tensor:
                    return call(i, tile)

                ok = reference_close(run(1), want)
                label = f"n{bn} w{warps}" + (" split" if split else "")
                record(op, "rows", label, timed(run, launches), nbytes, ok)

    # ---- experts: two layers' tables, R random top-k rows --------------------------------
    gpt = name.startswith("gpt-oss")
    w13 = [rnd(E, 2 * inter, h) for _ in range(2)]
    w2 = [rnd(E, h, inter) for _ in range(2)]
    b13 = [rnd(E, 2 * inter) if gpt else None for _ in range(2)]
    b2 = [rnd(E, h) if gpt else None for _ in range(2)]
    R = 2 if quick else 64
    ids = torch.stack([torch.randperm(E, device=dev, generator=gen)[:k] for _ in range(R)])
    scale = torch.rand(R, k, device=dev, generator=gen)
    x, mid = rnd(1, h), rnd(k, inter)

    def gate_up(i: int, tile: dict[str, Any] | None = None) -> torch.Tensor:
        return gk.rows_gemv(x, w13[i % 2], ids=ids[i], a_div=k, bias=b13[i % 2], act=act, tile=tile)

    def down(i: int, tile: dict[str, Any] | None = None) -> torch.Tensor:
        return gk.rows_gemv(
            mid, w2[i % 2], ids=ids[i], bias=b2[i % 2], scale=scale[i], total=True, tile=tile
        )

    def grouped(i: int) -> torch.Tensor:  # the grouped GEMM's batch-1 layer, for scale
        rows, blocks = mk.align(ids[i][None], E, mk.DECODE_BLOCK_M)
        y = mk.grouped_linear(x, w13[i % 2], rows, blocks, k, k, b13[i % 2], act=act)
        y = mk.grouped_linear(y, w2[i % 2], rows, blocks, k, 1, b2[i % 2], scale[i])
        return y.sum(0, keepdim=True)

    gu_bytes, dn_bytes = k * 2 * inter * h * 2, k * h * inter * 2
    record("experts", "grouped", "autotuned", timed(grouped, R), gu_bytes + dn_bytes, True)
    want = mk.expert_gemv(x, w13[1], ids[1][None], k, b13[1], act=act)
    sweep("gate_up", gate_up, want, R, gu_bytes, h, 2)
    want = torch.stack([  # the down GEMV summed over k by torch: the reference
        mk.expert_gemv(mid[j : j + 1], w2[1], ids[1][j : j + 1], 1, b2[1], scale[1][j : j + 1])
        for j in range(k)
    ]).sum(0)  # fmt: skip
    sweep("down", down, want, R, dn_bytes, inter, 1 << (k - 1).bit_length())

    # ---- dense M = 1 linears: copies enough to spill L2 ------------------------------------
    for op, n, kdim, has_bias in dense_shapes(name) if not quick else [("o", 72, 96, True)]:
        nbytes = n * kdim * 2
        copies = 2 if quick else max(2, min(MAX_LAUNCHES, math.ceil(L2_SPILL_BYTES / nbytes)))
        ws = [rnd(n, kdim) for _ in range(copies)]
        bs = [rnd(n) if has_bias else None for _ in range(copies)]
        xin = rnd(1, kdim)

        def dense(
            i: int, tile: dict[str, Any] | None = None, ws: Any = ws, bs: Any = bs, xin: Any = xin
        ) -> torch.Tensor:
            return gk.rows_gemv(xin, ws[i % len(ws)], bias=bs[i % len(ws)], tile=tile)

        def cublas(i: int, ws: Any = ws, bs: Any = bs, xin: Any = xin) -> torch.Tensor:
            return F.linear(xin, ws[i % len(ws)], bs[i % len(ws)])

        def looped(i: int, ws: Any = ws, bs: Any = bs, xin: Any = xin) -> torch.Tensor:
            return kern.small_linear(xin, ws[i % len(ws)], bs[i % len(ws)], whole_rows=False)

        want = cublas(1)
        record(op, "cublas", "-", timed(cublas, copies), nbytes, True)
        ok = reference_close(looped(1), want)
        record(op, "looped", "autotuned", timed(looped, copies), nbytes, ok)
        sweep(op, dense, want, copies, nbytes, kdim, 1)
        del ws, bs
        if not quick:
            torch.cuda.empty_cache()
    return results


def best_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, op): each variant's time (the rows kernel autotuned, as the engine runs
    it), and the fastest correct tile of the rows kernel."""
    out = []
    for key in sorted({(r["model"], r["op"]) for r in results}):
        rows = [r for r in results if (r["model"], r["op"]) == key]
        fixed = {r["variant"]: r for r in rows if r["tile"] in ("autotuned", "-")}
        tiles_ok = [r for r in rows if r["variant"] == "rows" and r["tile"] != "autotuned"]
        fastest = min((r for r in tiles_ok if r["ok"]), key=lambda r: r["us"], default=None)
        out.append({
            "model": key[0], "op": key[1],
            **{f"{v}_us": r["us"] for v, r in fixed.items()},
            **{f"{v}_bw_frac": r["bw_frac"] for v, r in fixed.items()},
            "fastest_tile": fastest["tile"] if fastest else None,
            "fastest_tile_us": fastest["us"] if fastest else None,
            "wrong_tiles": [r["tile"] for r in tiles_ok if not r["ok"]],
        })  # fmt: skip
    return out


def table(best: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows: the rows kernel as the engine runs it against the
    kernel it replaced (looped GEMV, or the grouped GEMM for a whole expert layer)."""
    rows = []
    for b in best:
        parts = [
            f"{v} {b[f'{v}_us']:.1f} µs ({b[f'{v}_bw_frac']:.0%})"
            for v in ("rows", "looped", "cublas", "grouped")
            if f"{v}_us" in b
        ]
        if b["fastest_tile"]:
            parts.append(f"fastest tile {b['fastest_tile']} {b['fastest_tile_us']:.1f} µs")
        if b["wrong_tiles"]:
            parts.append(f"WRONG: {', '.join(b['wrong_tiles'])}")
        rows.append((f"{b['model']} {b['op']}", "; ".join(parts), "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None)
    parser.add_argument("--quick", action="store_true", help="CPU interpreter, tiny shapes")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.quick:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
    from models_bench import copy_bandwidth

    started = time.perf_counter()
    bw = 1.0 if args.quick else copy_bandwidth("cuda")
    names = (args.models or ("qwen3-30b-a3b" if args.quick else GPU_MODELS)).split(",")
    results: list[dict[str, Any]] = []
    for name in names:
        print(f"{name}:", flush=True)
        results += sweep_model(name, bw, args.quick)
    best = best_rows(results)
    rows = table(best)
    name = "gemv_sweep_quick" if args.quick else "gemv_sweep"
    record = {
        "copy_bandwidth_Bps": bw, "best": best, "results": results,
        "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    print(write_result(name, record, rows, args.out))


if __name__ == "__main__":
    main()
