"""How many warps the decode-time routing kernel should run (issue 20).

moe_kernels.route_align routes a decode step's tokens in one program: scores, top-k by k
rounds of argmax over the E experts, and (for the grouped GEMM) the padded expert-sorted
layout. Each round's argmax and sum is a reduction across the program's threads; with more
than one warp every reduction goes through shared memory and a barrier. This times it per
model's routing (E, k, scoring) and tokens, at 1, 2, 4 and 8 warps, each a CUDA graph of
`--launches` launches one after another (PDL as the engine launches them), µs a launch; every
warp count's output is checked first: ids and weights against torch's routing
(MoELayer.route's arithmetic; tied experts either way), the layout against align() of the same
ids, and the ids against one warp's (the same tie broken the same way).

Run on a GPU: python benchmarks/route_align_bench.py [--models qwen3-30b-a3b,...]
    [--launches 64] [--check-only] [--out DIR]
Writes DIR/route_align_bench.json and .md with device, date and commit; with --check-only
(every token count that fits, not only powers of two, checked at every warp count, nothing
timed) DIR/route_align_check.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, write_result  # noqa: E402

MODELS = "qwen3-30b-a3b,gpt-oss-20b,deepseek-v2-lite,mixtral-8x7b"
WARPS = (1, 2, 4, 8)


def torch_routing(logits: Any, moe: Any, bias: Any) -> dict[str, Any]:
    """The engine's torch route() arithmetic on logits [T, E]: "scores" and "choice" [T, E]
    (float32; the top-k is taken of choice), "ids" [T, k] and "weights" [T, k] (float32)."""
    scores = logits.float().softmax(-1) if moe.scoring == "softmax" else logits.float().sigmoid()
    choice = scores if bias is None else scores + bias
    ids = choice.topk(moe.experts_per_token, dim=-1).indices
    return {"scores": scores, "choice": choice, "ids": ids, "weights": weights_of(ids, scores, moe)}


def weights_of(ids: Any, scores: Any, moe: Any) -> Any:
    """The routing weights [T, k] of experts `ids` [T, k]: their scores, renormalised to sum
    1 where the spec says so, times its scale."""
    weights = scores.gather(1, ids)
    if moe.normalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * moe.scale


def same_routing(ids: Any, weights: Any, want: dict[str, Any], moe: Any) -> bool:
    """Whether ids [T, k] are a top-k of `want`'s choice (distinct experts, the same chosen
    values as torch's top-k in any order: bfloat16 logits tie often, and which of two tied
    experts is taken differs between torch's topk and k argmaxes) and weights [T, k] are
    those experts' weights, position by position."""
    import torch

    distinct = all(len(set(row)) == len(row) for row in ids.tolist())
    choice = want["choice"]
    values = choice.gather(1, ids).sort(-1).values
    top = torch.equal(values, choice.gather(1, want["ids"]).sort(-1).values)
    gap = (weights - weights_of(ids, want["scores"], moe)).abs().max().item()
    return distinct and top and gap <= 1e-5


def same_layout(rows: Any, blocks: Any, ids: Any, experts: int) -> bool:
    """Whether route_align's layout (rows [cap], blocks [cap / DECODE_BLOCK_M]) is align()'s
    of the same ids: the same expert per block, the same pairs in each block (in any order
    within it)."""
    import torch

    from infermeter.engine.moe_kernels import DECODE_BLOCK_M, align

    want_rows, want_blocks = align(ids, experts, DECODE_BLOCK_M)
    if not torch.equal(blocks, want_blocks):
        return False
    got, want = rows.view(-1, DECODE_BLOCK_M), want_rows.view(-1, DECODE_BLOCK_M)
    return torch.equal(got.sort(-1).values, want.sort(-1).values)


def cases(models: list[str], every: bool = False) -> list[tuple[str, Any, int, bool]]:
    """(model, its MoE spec, tokens, layout) for the sizes route_align serves: one token
    without the layout (the expert GEMVs' path) and 1, 2, 4, ... tokens with it while the
    pairs fit (moe_kernels.fused_routing), or with `every` each count 1, 2, 3, ... that
    fits. Models without experts, or with group-limited routing (torch's route(), not this
    kernel), have none."""
    from infermeter.engine.moe_kernels import fused_routing
    from infermeter.spec.catalog import resolve_spec

    out = []
    for name in models:
        moe = resolve_spec(name).moe
        if moe is None or moe.groups > 1:
            continue  # group-limited routing is torch's (route()), not this kernel's
        k, experts = moe.experts_per_token, moe.num_experts
        if not fused_routing(1, k, experts):
            continue
        out.append((name, moe, 1, False))
        tokens = 1
        while fused_routing(tokens, k, experts):
            out.append((name, moe, tokens, True))
            tokens = tokens + 1 if every else 2 * tokens
    return out


def routing_inputs(moe: Any, tokens: int, layout: bool, device: str) -> tuple[Any, dict, dict]:
    """(logits [tokens, E] bfloat16, route_align's keyword options, torch_routing's result)
    for one case, seeded by the tokens (a selection bias where the spec has one)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(tokens)
    logits = torch.randn(tokens, moe.num_experts, device=device, generator=gen)
    logits = logits.to(torch.bfloat16)
    bias = None
    if moe.score_correction:
        bias = 0.01 * torch.randn(moe.num_experts, device=device, generator=gen)
    options = {
        "sigmoid": moe.scoring == "sigmoid", "normalize": moe.normalize,
        "scale": moe.scale, "score_bias": bias, "layout": layout,
    }  # fmt: skip
    return logits, options, torch_routing(logits, moe, bias)


def check_warps(label: str, moe: Any, logits: Any, options: dict, want: dict) -> None:
    """route_align at each of WARPS: its ids and weights a top-k of `want` (same_routing),
    its layout align()'s (same_layout, where options ask for one), its ids one warp's.
    Raises SystemExit naming `label` and the warp count where one disagrees."""
    import torch

    from infermeter.engine.moe_kernels import route_align

    k, first = moe.experts_per_token, None
    for warps in WARPS:
        ids, weights, layout_rows, blocks = route_align(logits, k, warps=warps, **options)
        first = ids if first is None else first
        laid = not options["layout"] or same_layout(layout_rows, blocks, ids, moe.num_experts)
        if not (same_routing(ids, weights, want, moe) and laid and torch.equal(ids, first)):
            raise SystemExit(
                f"{label}, {warps} warps: routing or layout disagrees with torch's, or ids "
                f"with {WARPS[0]} warp's"
            )


def bench(models: list[str], launches: int) -> list[dict[str, Any]]:
    """One row a case (see cases()): {"model", "tokens", "layout", "experts", "k",
    "us_by_warps": µs a launch at each of WARPS, "default_warps": route_warps(tokens)}.
    Every case is checked first (check_warps; SystemExit where it disagrees)."""
    from gemv_sweep import graph_time_s
    from infermeter.engine.moe_kernels import route_align, route_warps

    rows = []
    for name, moe, tokens, layout in cases(models):
        logits, options, want = routing_inputs(moe, tokens, layout, "cuda")
        check_warps(f"{name}, {tokens} tokens", moe, logits, options, want)
        us = {}
        for warps in WARPS:
            k, w = moe.experts_per_token, warps
            step = lambda i, x=logits, k=k, w=w, o=options: route_align(x, k, warps=w, **o)  # noqa: E731
            us[warps] = graph_time_s(step, launches) * 1e6
        rows.append({
            "model": name, "tokens": tokens, "layout": layout, "experts": moe.num_experts,
            "k": moe.experts_per_token, "us_by_warps": us, "default_warps": route_warps(tokens),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def check_every(models: list[str]) -> dict[str, str]:
    """check_warps at every token count route_align serves (cases(every=True)) on the GPU:
    {model: the counts checked, as text}; SystemExit at the first that disagrees."""
    checked: dict[str, list[str]] = {}
    for name, moe, tokens, layout in cases(models, every=True):
        logits, options, want = routing_inputs(moe, tokens, layout, "cuda")
        check_warps(f"{name}, {tokens} tokens", moe, logits, options, want)
        checked.setdefault(name, []).append(f"{tokens}{'' if layout else ' (ids only)'}")
    return {name: ", ".join(counts) for name, counts in checked.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=MODELS, help="comma-separated MoE models")
    parser.add_argument("--launches", type=int, default=64, help="launches a CUDA graph")
    parser.add_argument(
        "--check-only", action="store_true",
        help="check every token count route_align serves at every warp count; time nothing",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.launches < 1:
        parser.error(f"--launches must be at least 1, not {args.launches}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        parser.error("--models names no model")
    from infermeter.errors import UserError
    from infermeter.spec.catalog import resolve_spec

    for name in models:
        try:
            moe = resolve_spec(name).moe
        except UserError as err:  # the catalog's own one-line message
            parser.error(f"--models: {err}")
        if moe is None:
            parser.error(f"--models: {name} is not a mixture-of-experts model (no routing)")
    if not cases(models):
        parser.error("--models: none of these routes in route_align (group-limited routing)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("route_align_bench needs a CUDA GPU (it times a Triton kernel)")
    if args.check_only:
        checked = check_every(models)
        table = [(f"{m}: tokens checked at {', '.join(map(str, WARPS))} warps", t, "-")
                 for m, t in checked.items()]  # fmt: skip
        record = {"models": models, "warps": list(WARPS), "checked_tokens": checked}
        print("written", write_result("route_align_check", record, table, args.out))
        return
    rows = bench(models, args.launches)
    table = []
    for r in rows:
        us = r["us_by_warps"]
        fastest = min(us, key=us.get)
        times = ", ".join(f"{w} warps {v:.2f} µs" for w, v in us.items())
        label = f"{r['model']} (E {r['experts']}, k {r['k']}), {r['tokens']} token(s), "
        label += "with the layout" if r["layout"] else "ids only (expert GEMVs)"
        table.append((label, f"{times}; fastest {fastest}, default {r['default_warps']}", "-"))
    record = {"launches": args.launches, "models": models, "cases": rows}
    print("written", write_result("route_align_bench", record, table, args.out))


if __name__ == "__main__":
    main()
