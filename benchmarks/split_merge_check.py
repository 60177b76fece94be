"""Does flash-decoding's fused merge hold on a GPU, launch after launch? (issue 20)

With INFERMETER_SPLIT_MERGE=1, kernels.decode_attention merges its key splits in the last
split program of each (sequence, KV head) to finish: an arrival count in device memory, a
block barrier and an acq_rel atomic publish each split's partial output, and the last
program reads them through the L2. The
CPU interpreter runs programs one after another and so cannot show an ordering fault; this
runs the fused merge on the GPU many times, eagerly and replayed from a CUDA graph, for shapes
of the models the engine serves, and compares every output with the same attention merged by
a kernel of its own (INFERMETER_SPLIT_MERGE=0's path) and with float32 math. A merge that
read a partial before its writer published it gives garbage (or a stale launch's output),
far beyond the rounding of a different summation order.

Run (GPU): PYTHONPATH=src python benchmarks/split_merge_check.py [--launches 200]
Writes docs/benchmarks/<NAME>.json and .md (default split_merge_check) with device, date
and commit; exits 1 if any launch disagreed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, record_problem, write_result

# (name, batch, query heads, KV heads, head dim, cache length, sinks): Qwen3-30B-A3B,
# gpt-oss-20b (with and without its per-head sink logits), LLaMA-7B and Mixtral's layouts at
# one and several sequences, short and long caches
SHAPES = [
    ("qwen3 b1 L512", 1, 32, 4, 128, 512, False),
    ("qwen3 b1 L8192", 1, 32, 4, 128, 8192, False),
    ("qwen3 b8 L2048", 8, 32, 4, 128, 2048, False),
    ("gpt-oss b1 L1024", 1, 64, 8, 64, 1024, False),
    ("gpt-oss sinks b2 L1024", 2, 64, 8, 64, 1024, True),
    ("llama-7b b1 L4096", 1, 32, 32, 128, 4096, False),
    ("llama-7b b32 L1024", 32, 32, 32, 128, 1024, False),
    ("mixtral b4 L700", 4, 32, 8, 128, 700, False),
]
# relative to the output's largest value: a bfloat16 output's rounding is up to 2^-8 of it
# (two summation orders may round one element apart), a stale or missing partial is O(1)
TOLERANCE = 1e-2


def check_shape(shape: tuple[Any, ...], launches: int, seed: int) -> dict[str, Any]:
    """One shape: `launches` fused merges (half eager, half graph replays), each against
    the two-kernel path and float32 math."""
    import torch

    from infermeter.engine import kernels

    name, b, nq, nkv, d, length, with_sinks = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, nq, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    cache = torch.randn(b, length, 2, nkv, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    lens = torch.randint(1, length + 1, (b,), device="cuda", generator=gen, dtype=torch.int32)
    lens[0] = length
    group = nq // nkv
    k = cache[:, :, 0].float().repeat_interleave(group, 2)
    v = cache[:, :, 1].float().repeat_interleave(group, 2)
    keys = torch.arange(length, device="cuda")
    masked = keys[None, None, :] >= lens[:, None, None]

    sinks = torch.randn(nq, device="cuda", generator=gen) if with_sinks else None

    def reference() -> Any:
        scores = torch.einsum("bhd,bnhd->bhn", q.float(), k) * d**-0.5
        scores = scores.masked_fill(masked, float("-inf"))
        if sinks is not None:  # a per-head logit joins the softmax; its value row is zero
            sink = sinks.float()[None, :, None].expand(b, nq, 1)
            probs = torch.cat([scores, sink], -1).softmax(-1)[..., :-1]
        else:
            probs = scores.softmax(-1)
        return torch.einsum("bhn,bnhd->bhd", probs, v)

    def run(merge: bool) -> Any:
        kernels.SPLIT_MERGE = merge
        return kernels.decode_attention(q, cache, lens, sinks=sinks)

    before = kernels.SPLIT_MERGE
    try:
        run(True)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = run(True)
        worst_vs_kernel, worst_vs_float, bad = 0.0, 0.0, 0
        for i in range(launches):
            # new queries every launch: a merge that read a partial left by the launch
            # before would read another query's output
            q.copy_(torch.randn(q.shape, device="cuda", generator=gen, dtype=q.dtype))
            want, apart = reference(), run(False).float()
            if i % 2:
                graph.replay()
                got = captured.float()
            else:
                got = run(True).float()
            scale = want.abs().max().item()
            vs_kernel = (got - apart).abs().max().item() / scale
            vs_float = (got - want).abs().max().item() / scale
            worst_vs_kernel = max(worst_vs_kernel, vs_kernel)
            worst_vs_float = max(worst_vs_float, vs_float)
            bad += vs_kernel > TOLERANCE or vs_float > TOLERANCE
        torch.cuda.synchronize()
        counts_left = int(kernels._merge_counts(q.device).abs().sum().item())
    finally:
        kernels.SPLIT_MERGE = before
    splits = kernels.split_plan(length, b * nkv, q.device)[0]
    return {"shape": name, "batch": b, "q_heads": nq, "kv_heads": nkv, "head_dim": d,
            "sinks": with_sinks,
            "cache_length": length, "splits": splits, "launches": launches,
            "max_error_vs_kernel_merge": worst_vs_kernel, "max_error_vs_float32": worst_vs_float,
            "launches_off": bad, "counts_left": counts_left}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--name", default="split_merge_check")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if problem := record_problem(args.name, args.out):
        parser.error(problem)
    if args.launches < 2:
        parser.error("--launches must be at least 2 (one eager, one graph replay)")
    import torch

    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: the interpreter cannot show an ordering fault")
    start = time.perf_counter()
    rows = [check_shape(s, args.launches, seed) for seed, s in enumerate(SHAPES)]
    for r in rows:
        print(f"{r['shape']:20s} splits {r['splits']:3d}  off {r['launches_off']}  "
              f"vs kernel {r['max_error_vs_kernel_merge']:.2e}  "
              f"vs float {r['max_error_vs_float32']:.2e}  counts {r['counts_left']}",
              flush=True)  # fmt: skip
    ok = all(r["launches_off"] == 0 and r["counts_left"] == 0 for r in rows)
    table = [
        (f"{r['shape']} ({r['splits']} splits): launches off / made",
         f"{r['launches_off']} / {r['launches']}; max error vs the merge kernel "
         f"{r['max_error_vs_kernel_merge']:.1e}, vs float32 {r['max_error_vs_float32']:.1e}; "
         f"counts left {r['counts_left']}", f"0; errors <= {TOLERANCE:g}")
        for r in rows
    ]  # fmt: skip
    result = {"shapes": rows, "tolerance": TOLERANCE, "all_held": ok,
              "wall_s": time.perf_counter() - start}  # fmt: skip
    print(f"wrote {write_result(args.name, result, table, args.out)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
