"""What an L2 prefetch buys a batch-1 decode GEMV on this GPU, kernel by kernel (issue 20).

Tried in the engine at b20f553 and backed out: the decode GEMVs asked the L2 for a later
GEMV's weights (`cp.async.bulk.prefetch.L2`) so that they would stream while the small
attention and routing kernels ran, and whole models ran slower (docs/benchmarks/
decode_power_l2_prefetch.md). This measures why, each arm a CUDA graph of `--repeats`
repeats timed by CUDA events, every repeat on the next of several weights of `--mb` MiB
(at least 8, and three times the L2 together, so each repeat starts from HBM). The prefetch
here is issued by a kernel of its own; b20f553 issued it at the end of the GEMVs' programs.

- empty / issue: a kernel of `--programs` programs that exits at once, or that first asks
  the L2 for the weight (one bulk prefetch a program);
- wait: a one-program kernel that spins `--wait-us` µs (the attention kernels' place);
  issue, wait: the fetch asked for, then the wait (one fetch a repeat, so HBM is not the
  limit: if the issuer ends before its fetch lands, this takes empty + wait);
- gemv: the whole-rows GEMV (gemv_kernels.rows_gemv, 1 x K by N x K, bfloat16, its tile
  tuned as the engine tunes it, recorded) alone, and on one weight every repeat where one
  fits in half the L2 (L2-hot: is it faster from L2?);
- wait, gemv / issue, wait, gemv: the GEMV after the wait, with the fetch asked for first,
  in the same stream;
- issue beside wait, gemv: the fetch on a second stream beside the wait, joined before the
  GEMV (a fork in the graph); empty beside wait, gemv: the same fork with an empty kernel,
  the fork's own cost;
- torch's sum of the weight and a persistent, pipelined GEMV at a few tiles: other ways
  to read the same bytes;
- with --tiles, the whole-rows GEMV at each tile (rows a program, warps), from HBM and from
  L2: is any tile's stream faster than the tuned one's?

Run on a GPU (sm_90+): python benchmarks/l2_prefetch_probe.py [--mb 16] [--wait-us 5]
    [--programs 132] [--repeats 64] [--tiles] [--out DIR] [--name l2_prefetch_probe]
Writes DIR/NAME.json and .md (µs a repeat) with device, date and commit.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from _record import DOCS, write_result  # noqa: E402
from gemv_sweep import graph_time_s, reference_close  # noqa: E402

WEIGHTS = 8  # distinct weights cycled, at least (and at least three times the L2 together)
K = 2048


@triton.jit
def share_range(nbytes, part, parts):
    """(start, size) in bytes of share `part` of `parts` of an `nbytes`-byte region: equal
    shares rounded up to 16 bytes, the last ones shorter or empty (size <= 0)."""
    share = tl.cdiv(tl.cdiv(nbytes, parts), 16) * 16
    start = part.to(tl.int64) * share
    return start, tl.minimum(share, nbytes - start)


@triton.jit
def prefetch_grid(Base, nbytes):
    """Ask the L2 for this program's share of the `nbytes` bytes at Base (16-aligned, a
    multiple of 16): one bulk prefetch (cp.async.bulk.prefetch.L2, PTX ISA 8.0, sm_90) from
    the program's first thread."""
    part = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    start, size = share_range(nbytes, part, tl.num_programs(0) * tl.num_programs(1))
    if size > 0:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r",
            [Base.to(tl.pointer_type(tl.int8)) + start, size.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )


@triton.jit
def _issue(Pre, nbytes):
    prefetch_grid(Pre, nbytes)


@triton.jit
def _empty(Pre, nbytes):
    pass


@triton.jit
def _clock(like):
    return tl.inline_asm_elementwise(
        "mov.u64 $0, %globaltimer;", "=l,l", [like], dtype=tl.int64, is_pure=False, pack=1
    )


@triton.jit
def _spin(ns):
    start = _clock(ns)
    now = start
    while now - start < ns:
        now = _clock(ns)


@triton.jit
def _stream_gemv(
    X, W, Out, N,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    """A persistent GEMV: each program walks its row blocks (pid, pid + programs, ...) tile
    by tile along K in one pipelined loop (STAGES tiles in flight), out [N] in float32."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    tiles_k: tl.constexpr = K // BLOCK_K
    mine = tl.cdiv(tl.cdiv(N, BLOCK_N) - pid, programs)
    m = tl.arange(0, 16)  # x as the first of 16 rows: the smallest tensor-core tile
    acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
    for t in tl.range(0, mine * tiles_k, num_stages=STAGES):
        rows = (pid + (t // tiles_k) * programs) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = (t % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        w = tl.load(W + rows.to(tl.int64)[:, None] * K + cols[None, :], mask=rows[:, None] < N)
        x = tl.load(X + m[:, None] * 0 + cols[None, :], mask=m[:, None] < 1, other=0.0)
        acc += tl.dot(x, tl.trans(w))
        if t % tiles_k == tiles_k - 1:
            out = tl.sum(acc, 0)  # rows 1-15 are zero
            tl.store(Out + rows, out, mask=rows < N)
            acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)


STREAM_TILES = [  # (BLOCK_N, BLOCK_K, STAGES, warps, programs per SM)
    (16, 256, 4, 4, 1), (16, 256, 4, 4, 2), (8, 512, 4, 4, 2), (32, 256, 3, 8, 1),
    (16, 512, 3, 8, 1), (16, 256, 6, 4, 2),
]  # fmt: skip


# whole-rows tiles (BLOCK_N, warps) that load 8-128 weight elements a thread at K = 2048
TILES = [(n, w) for n in (1, 2, 4, 8, 16) for w in (2, 4, 8, 16) if 8 <= K * n // (32 * w) <= 128]


def weight_rows(mb: float) -> int:
    """Rows of K bfloat16s in a weight of `mb` MiB (whole rows, rounded down)."""
    return int(mb * 2**20) // (2 * K)


def cycled(nbytes: int, l2_bytes: int) -> int:
    """How many distinct weights of `nbytes` the arms cycle through: at least WEIGHTS and
    three times the L2 together, so each repeat reads its weight from HBM."""
    return max(WEIGHTS, -(-3 * l2_bytes // nbytes))


def graph_us(step: Callable[[int], None], repeats: int) -> float:
    """µs a repeat of `step(i)`, i = 0..repeats-1, in one CUDA graph (gemv_sweep's timing)."""
    return graph_time_s(step, repeats) * 1e6


def probe(
    mb: float, wait_us: float, programs: int, repeats: int, tiles: bool = False
) -> dict[str, Any]:
    """{"arms_us": µs a repeat of each arm (see the module docstring)} and what they ran on
    (weight_bytes, weights_cycled: cycled(), l2_bytes, l2_hot_arms: whether one weight fits
    in half the L2, where the L2-hot arms run; tuned_tile). With `tiles`, the whole-rows
    GEMV at each of TILES too. Every GEMV is checked against the tuned one's output first."""
    import torch

    from infermeter.engine.gemv_kernels import _rows_gemv, rows_gemv

    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    n = weight_rows(mb)
    nbytes = n * K * 2
    count = cycled(nbytes, l2_bytes)
    weights = [torch.randn(n, K, device="cuda", dtype=torch.bfloat16) for _ in range(count)]
    hot = nbytes <= l2_bytes // 2
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    wait_ns = int(wait_us * 1000)
    other = torch.cuda.Stream()
    want = rows_gemv(x, weights[0]).float()  # tunes the whole-rows GEMV for this shape
    tuned = str(getattr(_rows_gemv, "best_config", None))

    def check(label: str, got: torch.Tensor) -> None:
        if not reference_close(got.reshape(-1), want[0]):
            raise SystemExit(f"{label} disagrees with the tuned whole-rows GEMV")

    def w(i: int) -> torch.Tensor:
        return weights[i % count]

    def ask(i: int) -> None:
        _issue[(programs,)](w(i), nbytes)

    def wait() -> None:
        _spin[(1,)](wait_ns)

    def empty(i: int) -> None:
        _empty[(programs,)](w(i), nbytes)

    def beside(i: int, fetch: bool = True) -> None:
        main = torch.cuda.current_stream()
        other.wait_stream(main)
        with torch.cuda.stream(other):
            (ask if fetch else empty)(i)
        wait()
        main.wait_stream(other)
        rows_gemv(x, w(i))

    arms: dict[str, Callable[[int], None]] = {
        "empty": empty,
        "issue": ask,
        "wait": lambda i: wait(),
        "issue, wait": lambda i: (ask(i), wait()),
        "gemv": lambda i: rows_gemv(x, w(i)),
        "wait, gemv": lambda i: (wait(), rows_gemv(x, w(i))),
        "issue, wait, gemv": lambda i: (ask(i), wait(), rows_gemv(x, w(i))),
        "issue beside wait, gemv": beside,
        "empty beside wait, gemv": lambda i: beside(i, fetch=False),
    }
    if hot:
        arms["gemv, L2-hot"] = lambda i: rows_gemv(x, weights[0])
    arms["torch sum of the weight"] = lambda i: torch.sum(w(i), dtype=torch.float32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for bn, bk, stages, warps, per_sm in STREAM_TILES:
        out = torch.empty(n, device="cuda", dtype=torch.float32)

        def stream(i: int, bn=bn, bk=bk, stages=stages, warps=warps, per_sm=per_sm, out=out):
            _stream_gemv[(per_sm * sms,)](
                x, w(i), out, n, K=K, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps
            )

        stream(0)
        check(f"stream GEMV {bn}x{bk}", out)
        arms[f"stream gemv {bn}x{bk}, {stages} stages, {warps} warps, {per_sm}/SM"] = stream
    for bn, warps in TILES if tiles else ():
        tile = {"BLOCK_N": bn, "SPLIT": False, "num_warps": warps}
        check(f"tile n{bn} w{warps}", rows_gemv(x, weights[0], tile=tile))
        arms[f"gemv tile n{bn} w{warps}"] = lambda i, t=tile: rows_gemv(x, w(i), tile=t)
        if hot:
            arms[f"gemv tile n{bn} w{warps}, L2-hot"] = lambda i, t=tile: rows_gemv(
                x, weights[0], tile=t
            )
    setup = {
        "weight_bytes": nbytes,
        "weights_cycled": count,
        "l2_bytes": l2_bytes,
        "l2_hot_arms": hot,
        "tuned_tile": tuned,
    }
    return {"arms_us": {name: graph_us(step, repeats) for name, step in arms.items()}, **setup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=16.0, help="MiB (2^20 bytes) of each weight")
    parser.add_argument("--wait-us", type=float, default=5.0)
    parser.add_argument("--programs", type=int, default=132, help="programs of the issuer")
    parser.add_argument("--repeats", type=int, default=64)
    parser.add_argument(
        "--tiles", action="store_true", help="also the whole-rows GEMV at each tile, cold and hot"
    )
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="l2_prefetch_probe", help="record name")
    args = parser.parse_args()
    if not math.isfinite(args.mb) or weight_rows(args.mb) < 1:
        parser.error(f"--mb must hold at least one row of {K} bfloat16s, not {args.mb:g}")
    for option, value in (("--programs", args.programs), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{option} must be at least 1, not {value}")
    if args.mb * 2**20 / args.programs >= 2**31:  # one bulk prefetch's size is 32-bit
        parser.error("--mb / --programs: a program's share must be under 2 GiB")
    if not math.isfinite(args.wait_us) or args.wait_us < 0:
        parser.error(f"--wait-us must be a number of at least 0, not {args.wait_us:g}")
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        raise SystemExit("l2_prefetch_probe needs an sm_90+ GPU (cp.async.bulk.prefetch.L2)")
    nbytes = weight_rows(args.mb) * K * 2
    need = cycled(nbytes, torch.cuda.get_device_properties(0).L2_cache_size) * nbytes
    if need > 0.8 * torch.cuda.mem_get_info()[0]:
        raise SystemExit(
            f"--mb {args.mb:g}: the cycled weights need {need / 2**30:.1f} GiB, "
            "more than this GPU has free"
        )
    result = probe(args.mb, args.wait_us, args.programs, args.repeats, args.tiles)
    print(result, flush=True)
    mib = result["weight_bytes"] / 2**20
    rows = [
        (
            "setup",
            f"weights of {mib:.2f} MiB, {result['weights_cycled']} cycled (L2 "
            f"{result['l2_bytes'] / 2**20:.0f} MiB; L2-hot arms "
            f"{'run' if result['l2_hot_arms'] else 'left out: one weight is over half the L2'}"
            f"); wait {args.wait_us:g} µs; the issuer {args.programs} programs; "
            f"{args.repeats} repeats a graph; tuned whole-rows tile {result['tuned_tile']}",
            "-",
        )
    ]
    rows += [(name, f"{value:.2f} µs", "-") for name, value in result["arms_us"].items()]
    record = {
        "mb": args.mb,
        "wait_us": args.wait_us,
        "programs": args.programs,
        "repeats": args.repeats,
        **result,
    }
    print("written", write_result(args.name, record, rows, args.out))


if __name__ == "__main__":
    main()
