"""Does the decode path compute what the prefill path computes? Greedy tokens against the
prefill's argmax, per model (issue 20: a check for any change to the decode kernels).

A change to the batch-1 decode kernels (their order of loads against the PDL wait, fused
stages) can be fast and wrong: read a buffer before the kernel that writes it has finished,
and a decode step picks other experts or attends to stale keys. Timings cannot see that. This
script decodes `--new` greedy tokens after a random prompt on the engine as profiles run it
(CUDA graphs, the batch-1 decode kernels), then feeds prompt + tokens to one prefill (other
kernels: the tensor-core GEMMs, the grouped expert GEMM, flash attention) and takes the
argmax at each position that produced a decoded token. Both paths compute the same function
in bfloat16 with different summation orders, so near-ties may flip a few tokens, and once a
token differs the rest of the sequence still agrees (the prefill is teacher-forced on the
decoded tokens). A race in the decode path shows as a low agreement, a flip of near-ties as a
few percent at most. Each model is cut to its first --layers layers (random weights).

Run (GPU): PYTHONPATH=src python benchmarks/decode_agreement.py
           [--models qwen3-30b-a3b,gpt-oss-20b,deepseek-v2-lite] [--layers 8] [--new 64]
CPU check (tiny specs, no CUDA graphs, the reference paths): ... --quick
Writes docs/benchmarks/decode_agreement.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from decode_breakdown import truncated
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import get_spec

GPU_MODELS = "qwen3-30b-a3b,gpt-oss-20b,deepseek-v2-lite"
QUICK_MODELS = "tiny-qwen3-moe,tiny-gpt-oss"
PROMPTS = 4  # random prompts per model, one sequence each (batch 1): --prompts


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _routing(moes: list[Any]) -> list[torch.Tensor]:
    """Each MoE layer's expert choices of its last forward, sorted per token [T, k]."""
    return [moe.last_ids.sort(-1).values.cpu() for moe in moes]


def _flipped(moes: list[Any], chosen: list[torch.Tensor], row: int, position: int) -> bool:
    """Whether any MoE layer's last forward chose, at its `row`, other experts than the
    prefill chose at `position`."""
    now = _routing(moes)
    return any(not torch.equal(r[row], c[position]) for r, c in zip(now, chosen, strict=True))


@torch.inference_mode()
def teacher_forced(
    engine: Any, tokens: torch.Tensor, decoded: list[int]
) -> list[tuple[float, bool]]:
    """Per decoded position: the relative error ‖decode − prefill‖ / ‖prefill‖ of the logits,
    and whether any MoE layer chose other experts there than the prefill did. The prompt is
    prefilled, then decoded[j] fed one step at a time through the decode step's own modules
    and kernels (eager: the graphs replay the same kernels), each step's logits against one
    prefill of prompt + decoded[:-1] (engine.score). Both see the same tokens, so this
    measures the arithmetic alone. A MoE router's top-k is discontinuous: where two experts'
    scores are within rounding, the paths' different summation orders may pick different
    experts and the logits jump, which is rounding, not a wrong kernel; the steps whose
    routing agrees in every layer show the arithmetic itself."""
    p, n, device = tokens.shape[1], len(decoded), engine.device
    model = engine.model
    moes = [blk.moe for blk in model.layers if blk.moe is not None]
    for moe in moes:
        moe.record = True
    try:
        reference = engine.score(torch.cat([tokens, torch.tensor([decoded[:-1]])], dim=1))[0]
        chosen = _routing(moes)  # [p + n - 1, k] per layer
        engine._ensure_state(1, p + n + 1)
        logits = engine._prefill_logits(tokens.to(device), None)[0]
        out = [(_relative(logits, reference[p - 1]), _flipped(moes, chosen, -1, p - 1))]
        for j in range(n - 1):
            pos = torch.full((1,), p + j, device=device, dtype=torch.long)
            ctx = model.decode_context(pos, engine._span(p + j), engine.attention)
            x = model(torch.tensor([[decoded[j]]], device=device), ctx)
            error = _relative(model.logits(x, ctx.fast)[0], reference[p + j])
            out.append((error, _flipped(moes, chosen, 0, p + j)))
    finally:
        for moe in moes:
            moe.record = False
    return out


def agreement(
    name: str, layers: int, device: str, new: int, prompt: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Per model: tokens decoded, how many the prefill's argmax agrees with, first mismatch.
    args.eager: no CUDA graphs; args.attention "sdpa": the decode step on torch's attention
    and the MoE layers' grouped GEMM (the engine's reference decode), not the decode kernels."""
    spec = truncated(get_spec(name), layers)
    dtype = "bfloat16" if device == "cuda" else None
    backend = EngineBackend(device=device, dtype=dtype, cuda_graphs=not args.eager)
    backend.prepare(spec)
    engine = backend._engine
    if args.attention == "sdpa":
        engine.attention = "sdpa"  # before the first generate(): its graphs capture this path
    agree = total = 0
    first_miss: list[int | None] = []
    errors: list[tuple[float, bool]] = []
    first_steps: list[tuple[float, bool]] = []
    try:
        for i in range(args.prompts):
            draw = torch.Generator().manual_seed(i)
            tokens = torch.randint(0, spec.vocab_size, (1, prompt), generator=draw)
            decoded = engine.generate(tokens, new, seed=i).tokens[0]
            assert len(decoded) == new
            full = torch.cat([tokens, torch.tensor([decoded[:-1]])], dim=1)
            logits = engine.score(full)[0]  # [prompt + new - 1, vocab]
            predicted = logits[prompt - 1 :].argmax(-1).tolist()
            same = [a == b for a, b in zip(predicted, decoded, strict=True)]
            agree += sum(same)
            total += len(same)
            first_miss.append(next((j for j, s in enumerate(same) if not s), None))
            steps = teacher_forced(engine, tokens, decoded)
            errors += steps
            first_steps.append(steps[1])  # the first decode step: its cache is the prefill's
        info = backend.describe()
        same_routing = [e for e, flip in errors if not flip]
        first_alike = [e for e, flip in first_steps if not flip]
        apart = [e for e, flip in errors if flip]
    finally:
        backend.close()
    return {
        "model": name,
        "spec": spec.name,
        "tokens": total,
        "agree": agree,
        "agreement_pct": 100.0 * agree / total,
        "first_mismatch_per_prompt": first_miss,
        "logits_rel_error_median": statistics.median(e for e, _ in errors),
        "logits_rel_error_max": max(e for e, _ in errors),
        "steps_routed_alike": len(same_routing),
        "routed_alike_rel_error_median": _median(same_routing),
        "routed_alike_rel_error_max": max(same_routing, default=None),
        "routed_apart_rel_error_median": _median(apart),
        "first_steps": len(first_steps),
        "first_steps_routed_alike": len(first_alike),
        "first_step_alike_rel_error_median": _median(first_alike),
        "first_step_alike_rel_error_max": max(first_alike, default=None),
        "prompt_tokens": prompt,
        "new_tokens": new,
        "decode_path": engine.attention,
        "backend_info": info,
    }


def _alike(r: dict[str, Any]) -> str:
    """The error split by whether every MoE layer routed as the prefill did (MoE only)."""
    if "routed_alike_rel_error_max" not in r or r["backend_info"].get("moe_experts") is None:
        return ""
    text = f"; routed alike in {r['steps_routed_alike']} of {r['tokens']} steps"
    if r["routed_alike_rel_error_max"] is not None:
        text += (f": {r['routed_alike_rel_error_median']:.2%} (median), "
                 f"{r['routed_alike_rel_error_max']:.2%} (max)")  # fmt: skip
    if r["routed_apart_rel_error_median"] is not None:
        text += f", the others {r['routed_apart_rel_error_median']:.2%} (median)"
    if r.get("first_step_alike_rel_error_max") is not None:
        text += (f"; first decode steps (a cache the prefill wrote) routed alike "
                 f"{r['first_steps_routed_alike']} of {r['first_steps']}: "
                 f"{r['first_step_alike_rel_error_median']:.2%} (median), "
                 f"{r['first_step_alike_rel_error_max']:.2%} (max)")  # fmt: skip
    return text


def row_text(r: dict[str, Any]) -> tuple[str, str, str]:
    info = r["backend_info"]
    return (
        f"{r['spec']}, p = {r['prompt_tokens']}, o = {r['new_tokens']}: greedy decode tokens "
        "the prefill's argmax agrees with",
        f"{r['agree']} of {r['tokens']} ({r['agreement_pct']:.1f}%); teacher-forced logits "
        f"off the prefill's by {r['logits_rel_error_median']:.2%} (median), "
        f"{r['logits_rel_error_max']:.2%} (max){_alike(r)}; decode path "
        f"{r['decode_path']}, CUDA graphs {info.get('cuda_graphs')}, PDL "
        f"{info.get('decode_pdl')}, batch-1 experts {info.get('moe_batch1_gemv')}",
        "-",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--new", type=int, default=64, help="decoded tokens per prompt")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="random prompts a model")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (GPU 480)")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--attention", choices=("auto", "sdpa"), default="auto",
        help="sdpa: decode on torch's attention (the reference decode), not the kernels",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default=None, help="record name (default decode_agreement)")
    args = parser.parse_args()
    device = "cpu" if args.quick else "cuda"
    models = (args.models or (QUICK_MODELS if args.quick else GPU_MODELS)).split(",")
    prompt = args.prompt or (480 if device == "cuda" else 24)
    new = max(2, args.new if device == "cuda" else min(args.new, 8))
    name = args.name or "decode_agreement" + ("_quick" if args.quick else "")
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in models:  # written after each model: a run cut short keeps what it measured
        rows.append(agreement(model, args.layers, device, new, prompt, args))
        print(row_text(rows[-1]), flush=True)
        result = {"layers": args.layers, "new_tokens": new, "prompt_tokens": prompt,
                  "models": rows, "wall_s": time.perf_counter() - began}  # fmt: skip
        path = write_result(name, result, [row_text(r) for r in rows], args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
