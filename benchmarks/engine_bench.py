"""The reference engine against its hardware floors and against transformers generate().

Run on a GPU: .venv/bin/python benchmarks/engine_bench.py [--out DIR] [--quick]

1. Decode step, LLaMA-7B shape, batch 1, context 512, against the floor
   spec.decode_bytes(512) / copy bandwidth (a large device-to-device copy, read + write bytes).
   Goal: <= 1.15x the floor.
2. Prefill of 1536 tokens: spec.prefill_flops(1536, lm_head=True) / time, as a share of the
   bf16 matmul rate (8192^3 products). Goal: >= 60%.
3. transformers generate() on the same spec, GPU and dtype (random weights): per-output-token
   time ratio and end to end at p=512, o=128. Goal: engine >= 5x faster per token.
Before timing, checks that the CUDA-graph decode agrees with eager decode and with a full
recompute. Every figure is a median over repeats, timed with CUDA events after warm-up; both
ceilings are measured in the same run. Writes DIR/engine.json and DIR/engine.md.

engine.json also carries the results of the other engine benchmarks found beside it in DIR,
each with its own device, date and commit: profile_engine.json (profile_bench.py: R², wall
time, held-out error), batch_curve.json (batch_curve.py) and profile_engine_*.json (larger
models' profiles). `--merge-only` folds them in again without measuring (no GPU needed).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, read_record, write_record
from infermeter.backends.base import Measurement, Point
from infermeter.backends.engine import EngineBackend
from infermeter.engine import Engine
from infermeter.spec.catalog import get_spec
from infermeter.spec.model import ModelSpec

LLAMA_7B = get_spec("llama-7b")  # the catalog entry: the shape the issue names


def cuda_time(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy."""
    src = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    dst = torch.empty_like(src)
    seconds = cuda_time(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * src.element_size() / seconds


def matmul_rate(repeats: int) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = cuda_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds


def medians(backend: Any, point: Point, repeats: int) -> dict[str, float]:
    runs: list[Measurement] = [backend.measure(replace(point, trial=i)) for i in range(repeats)]
    bad = [m for m in runs if m.status != "ok"]
    if bad:
        raise RuntimeError(f"{point}: {bad[0].status}: {bad[0].detail}")
    out = {
        "runtime_s": statistics.median(m.runtime_s for m in runs),
        "ttft_s": statistics.median(m.ttft_s or 0.0 for m in runs),
    }
    if point.output_tokens > 1:  # time per output token after the first
        per_token = [(m.runtime_s - (m.ttft_s or 0.0)) / (point.output_tokens - 1) for m in runs]
        out["per_token_s"] = statistics.median(per_token)
    for key in ("prefill_s", "tpot_s"):
        values = [m.extra[key] for m in runs if m.extra.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


CHECK_SPECS = {  # small, on the GPU in bf16: the flash-varlen path and the masked (ALiBi) path
    "llama-gqa": replace(LLAMA_7B, name="check-llama", hidden_size=512, num_layers=4,
                         num_heads=8, num_kv_heads=2, ffn_size=1024),
    "gptj-partial-rotary": ModelSpec(name="check-gptj", hidden_size=512, num_layers=4,
                                     num_heads=4, vocab_size=32000, position="rotary",
                                     rotary_fraction=0.25, parallel_attn_ffn=True),
    "bloom-alibi": ModelSpec(name="check-bloom", hidden_size=512, num_layers=4, num_heads=8,
                             vocab_size=32000, position="alibi", tie_embeddings=True),
}  # fmt: skip


def check_decode(spec: ModelSpec) -> dict[str, Any]:
    """Graph decode == eager decode; each greedy token is (near) the argmax of a recompute;
    top-p is reproducible per seed; a stop token ends its sequence."""
    graphs = Engine(spec, device="cuda", dtype=torch.bfloat16, seed=1)
    eager = Engine(spec, device="cuda", dtype=torch.bfloat16, seed=1, cuda_graphs=False)
    prompts = [list(range(5, 140)), list(range(100, 117))]  # different lengths: padded batch
    fast = graphs.generate(prompts, 150).tokens
    same = fast == eager.generate(prompts, 150).tokens
    worst = 0.0
    for prompt, tokens in zip(prompts, fast, strict=True):
        logits = graphs.score(torch.tensor([prompt + tokens]))[0, len(prompt) - 1 : -1]
        chosen = logits.gather(-1, torch.tensor(tokens, device="cuda")[:, None]).squeeze(-1)
        gap = (logits.max(-1).values - chosen) / logits.std(-1)  # 0 when exactly the argmax
        worst = max(worst, float(gap.max()))
    sampler = Engine(spec, device="cuda", dtype=torch.bfloat16, sampling="top_p")
    a, b = (sampler.generate(prompts, 50, seed=s).tokens for s in (7, 7))
    c = sampler.generate(prompts, 50, seed=8).tokens
    stop = fast[0][20]
    stopped = graphs.generate(prompts, 150, stop_tokens=[stop]).tokens[0]
    reproducible = a == b and a != c
    honoured = stopped == fast[0][: fast[0].index(stop) + 1]
    return {
        "graph_equals_eager": same,
        "decode_vs_recompute_worst_gap_std": worst,
        "decode_attention": graphs.describe()["decode_attention"],
        "decode_attention_skipped": graphs.describe()["decode_attention_skipped"],
        "graphs_captured": len(graphs._graph_cache),
        "top_p_reproducible": reproducible,
        "stop_token_honoured": honoured,
        "ok": same and worst < 0.5 and reproducible and honoured,
    }


def hf_backend() -> Any:
    try:
        from infermeter.backends.hf import HFBackend

        return HFBackend(device="cuda", dtype="bfloat16")
    except ImportError:
        return _DirectHF()


class _DirectHF:
    """Fallback when the hf backend cannot be imported: LlamaForCausalLM.generate() directly."""

    def prepare(self, spec: ModelSpec) -> None:
        import transformers

        config = transformers.LlamaConfig(
            hidden_size=spec.hidden_size, intermediate_size=spec.ffn_dim,
            num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab_size,
            max_position_embeddings=spec.max_context, rms_norm_eps=spec.norm_eps,
        )  # fmt: skip
        with torch.device("cuda"):
            self.model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()

    def measure(self, point: Point) -> Measurement:
        ids = torch.randint(10, 32000, (point.batch_size, point.prompt_tokens), device="cuda")
        o = point.output_tokens
        options = {"max_new_tokens": o, "min_new_tokens": o, "do_sample": False}
        with torch.inference_mode():
            self.model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            first = cuda_time(lambda: self.model.generate(ids, **{**options, "max_new_tokens": 1,
                              "min_new_tokens": 1}), 1, warmup=0)  # fmt: skip
            total = cuda_time(lambda: self.model.generate(ids, **options), 1, warmup=0)
        return Measurement(runtime_s=total, ttft_s=first, output_tokens_actual=o)

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers LlamaForCausalLM.generate (direct)"}

    def close(self) -> None:
        self.model = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--merge-only", action="store_true", help="re-merge DIR's results")
    args = parser.parse_args()
    if args.merge_only:
        needs = ("decode", "prefill_1536", "vs_hf_generate")
        finish(read_record(args.out / "engine.json", "--merge-only", needs), args.out)
        return
    if not torch.cuda.is_available():
        sys.exit("engine_bench needs a CUDA GPU")
    reps = 3 if args.quick else 7
    spec = LLAMA_7B

    checks: dict[str, Any] = {name: check_decode(s) for name, s in CHECK_SPECS.items()}
    checks["ok"] = all(c["ok"] for c in checks.values())
    print("checks:", checks, flush=True)
    gc.collect()
    torch.cuda.empty_cache()

    bandwidth = copy_bandwidth(20 if args.quick else 50)
    flops = matmul_rate(10 if args.quick else 30)
    print(f"copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s", flush=True)

    engine = EngineBackend(device="cuda", dtype="bfloat16")
    engine.prepare(spec)
    engine_info = engine.describe()
    # Steps at contexts 480..543: their mean cost is the cost at 512 (linear in context).
    decode = medians(engine, Point(prompt_tokens=480, output_tokens=65), reps)
    floor_s = spec.decode_bytes(512) / bandwidth
    prefill = medians(engine, Point(prompt_tokens=1536, output_tokens=1), reps)
    prefill_rate = spec.prefill_flops(1536, lm_head=True) / prefill["prefill_s"]
    e2e_engine = medians(engine, Point(prompt_tokens=512, output_tokens=128), reps)
    engine.close()
    gc.collect()
    torch.cuda.empty_cache()
    print(f"engine decode {decode}, prefill {prefill}, e2e {e2e_engine}", flush=True)

    hf = hf_backend()
    hf.prepare(spec)
    hf_info = hf.describe()
    e2e_hf = medians(hf, Point(prompt_tokens=512, output_tokens=128), max(2, reps // 2))
    hf.close()
    print(f"hf e2e {e2e_hf}", flush=True)

    step = decode["tpot_s"]
    per_token_ratio = e2e_hf["per_token_s"] / e2e_engine["per_token_s"]
    result = {
        "spec": spec.to_dict(),
        "checks": checks,
        "copy_bandwidth_Bps": bandwidth,
        "bf16_matmul_flops": flops,
        "decode": {
            "step_s": step,
            "floor_s": floor_s,
            "decode_bytes_512": spec.decode_bytes(512),
            "ratio_to_floor": step / floor_s,
            "achieved_Bps": spec.decode_bytes(512) / step,
        },
        "prefill_1536": {
            "prefill_s": prefill["prefill_s"],
            "ttft_s": prefill["ttft_s"],
            "flops": spec.prefill_flops(1536, lm_head=True),
            "achieved_flops": prefill_rate,
            "share_of_matmul_rate": prefill_rate / flops,
        },
        "vs_hf_generate": {
            "engine": e2e_engine,
            "hf": e2e_hf,
            "per_token_speedup": per_token_ratio,
            "end_to_end_speedup": e2e_hf["runtime_s"] / e2e_engine["runtime_s"],
        },
        "engine": engine_info,
        "hf": hf_info,
        "repeats": reps,
    }
    from infermeter.store.provenance import provenance

    finish({**provenance(), **result}, args.out)


def finish(record: dict[str, Any], out: Path) -> None:
    """Headline keys, the other engine results found in `out`, then engine.json and .md."""
    decode, prefill, vs_hf = record["decode"], record["prefill_1536"], record["vs_hf_generate"]
    record["decode_floor_ratio"] = decode["ratio_to_floor"]
    record["prefill_peak_fraction"] = prefill["share_of_matmul_rate"]
    record["speedup_vs_hf_per_token"] = vs_hf["per_token_speedup"]
    rows = [
        (
            "graph decode checks (vs eager, vs recompute, top-p, stop)",
            str(record["checks"]["ok"]),
            "True",
        ),
        ("decode step, b=1, ctx 512", f"{decode['step_s'] * 1e3:.2f} ms", ""),
        ("decode floor (bytes / copy bandwidth)", f"{decode['floor_s'] * 1e3:.2f} ms", ""),
        ("decode step / floor", f"{decode['ratio_to_floor']:.3f}x", "<= 1.15x"),
        ("prefill p=1536", f"{prefill['prefill_s'] * 1e3:.1f} ms", ""),
        ("prefill FLOP/s / bf16 matmul rate", f"{prefill['share_of_matmul_rate']:.0%}", ">= 60%"),
        ("per output token: hf generate / engine", f"{vs_hf['per_token_speedup']:.2f}x", ">= 5x"),
        (
            "end to end p=512 o=128: engine / hf",
            f"{vs_hf['engine']['runtime_s']:.3f} s / {vs_hf['hf']['runtime_s']:.3f} s",
            "",
        ),
        (
            "copy bandwidth; bf16 matmul",
            f"{record['copy_bandwidth_Bps'] / 1e12:.2f} TB/s; "
            f"{record['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s",
            "",
        ),
    ]
    lines: list[str] = []  # sections after the table
    sources: dict[str, Any] = {}
    profile = _load(out / "profile_engine.json")
    if profile is not None:
        sources["profile_engine"] = _origin(profile)
        r2 = profile["r2_per_prompt"].values()
        record.update(
            profile_r2_min=min(r2),
            profile_wall_s=profile["profile_wall_s"],
            holdout_mape=profile["heldout_mape_pct"],
            holdout_max_err=profile["heldout_max_error_pct"],
        )
        lines += [
            "",
            f"## Full profile, {profile['model']} ({_where(profile)})",
            "",
            "| figure | value | goal |",
            "|---|---|---|",
            f"| min per-p R² | {min(r2):.6f} | >= 0.9999 |",
            f"| wall time, init included | {profile['profile_wall_s']:.1f} s | <= 120 s |",
            f"| held-out MAPE | {profile['heldout_mape_pct']:.2f}% | <= 2% |",
            f"| held-out max error | {profile['heldout_max_error_pct']:.2f}% | <= 5% |",
        ]
    curve = _load(out / "batch_curve.json")
    if curve is not None:
        sources["batch_curve"] = _origin(curve)
        record["batch_curve"] = curve["rows"]
        lines += ["", f"## Decode tokens/s by batch, context 512 ({_where(curve)})", ""]
        lines += ["| model | batch | tokens/s | ms/step |", "|---|---|---|---|"]
        for r in curve["rows"]:
            got = (
                f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.2f}"
                if r["feasible"]
                else f"infeasible | {r['reason'][:60]}"
            )
            lines.append(f"| {r['model']} | {r['batch']} | {got} |")
    large = [_load(p) for p in sorted(out.glob("profile_engine_*.json"))]
    large = [p for p in large if p is not None]
    if large:
        record["large_profiles"] = []
        lines += ["", "## Profiles of larger models", ""]
        lines += [
            "| model | device | PE 512 / 1024 / 1536 (s) | g (s) | min R² | paper Table 3 "
            "(A100, Megatron): PE / g |",
            "|---|---|---|---|---|---|",
        ]
        for p in large:
            sources[f"profile_{p['model']}"] = _origin(p)
            pe = p["prompt_encoding_s"]
            at = [pe.get(str(k)) for k in (512, 1024, 1536)]
            paper = p.get("paper_table3") or {}
            paper_text = (
                " / ".join(f"{v:.3f}" for v in paper["paper_idealized_a100_megatron_pe_s"])
                + f" / {paper['paper_idealized_a100_megatron_g_s']}"
                if paper
                else "not in Table 3"
            )
            summary = {
                "model": p["model"],
                "device": p["device"],
                "pe_s": dict(zip(("512", "1024", "1536"), at, strict=True)),
                "g_s": p["per_output_token_s"],
                "r2_min": min(p["r2_per_prompt"].values()),
                "profile_wall_s": p["profile_wall_s"],
                "paper_table3": paper or None,
            }
            record["large_profiles"].append(summary)
            pe_text = " / ".join("-" if v is None else f"{v:.4f}" for v in at)
            lines.append(
                f"| {p['model']} | {p['device']} | {pe_text} | {p['per_output_token_s']:.4f} | "
                f"{summary['r2_min']:.6f} | {paper_text} |"
            )
    record["sources"] = sources
    write_record("engine", record, rows, out, lines)
    print((out / "engine.md").read_text())


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _origin(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("device", "date", "commit")}


def _where(record: dict[str, Any]) -> str:
    return f"{record['device']}, {record['date'][:10]}, commit {str(record['commit'])[:7]}"


if __name__ == "__main__":
    main()
