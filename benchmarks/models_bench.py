"""Today's models on the reference engine (issue 20): profiles, decode against the bytes
floor, and a MoE model's decode throughput by batch beside the distinct-experts prediction.

One GPU (H200), the five single-GPU models and the batch curve:
    PYTHONPATH=src python benchmarks/models_bench.py
Two GPUs, gpt-oss-120b at tensor parallelism 2 (its figures merge into the same record):
    PYTHONPATH=src python benchmarks/models_bench.py --models gpt-oss-120b --tp 2 --curve none
Each run adds its models to the record it finds (--merge, default the committed
docs/benchmarks/models.json) and writes the result to --out (default docs/benchmarks): the
other models' rows, and with --curve none the batch curve, are the record's, with their own
dates and commits.
CPU, tiny specs of the same layouts, a minute (checks the script, no goals):
    PYTHONPATH=src python benchmarks/models_bench.py --quick

For each model (random weights, bf16, CUDA graphs, no download):
1. `infermeter profile MODEL [--tp N]` as a user runs it, in a process of its own, with the
   default grid and trials (decode curves at three prompt sizes with o 1..512, PE knots every
   sixteenth of the context, both up to the default cap of 32,768 tokens; 3 trials; 16
   validation queries the grid never saw) and the engine backend; what it prints is kept.
   From its store: per-p R² (goal >= 0.9999), PE and g, and the error of the runtime and
   energy fits on the profile's validation queries, plus the lines the command printed about
   them. Two deviations from the defaults, both written into the record: `--warmup-s`
   (default here 5 s, the command's own is 10 s) only sets how long the card is loaded before
   a metered profile, to save device time; `--max-context N`, when given (the committed
   record used 4096), caps the grid's prompts below the model's context.
2. Batch-1 decode: the profile's own decode steps at the decode curve's prompt nearest 512
   (with --max-context 4096 the curves sit at p = 1, 1761 and 3553, so p = 1) with the
   longest output (minimum over trials, contexts p .. p + o − 2), against the floor
   spec.decode_bytes(mean context) / (tp × copy bandwidth of this GPU): goal <= 1.3×. For MoE
   the floor counts the k experts of one token (decode_bytes at batch 1); with tp > 1 it
   assumes an ideal split and leaves the all-reduces out.
3. `--curve MODEL` (a MoE model, default qwen3-30b-a3b; `none` to skip): decode tokens/s at
   batch 1..256 after 480-token prompts (64 new tokens, contexts around 512), beside the
   prediction step(b) = step(1) · bytes(b) / bytes(1), bytes counting E·(1 − (1 − k/E)^b)
   experts per MoE layer; and the distinct experts the engine's router actually touched at
   each batch. Random weights route roughly evenly (router std h^-1/2, random tokens): the
   measured counts say how evenly.

Writes docs/benchmarks/models.json and models.md (figure docs/benchmarks/models_batch.png)
with device, date and commit; a later invocation adds or replaces its models' rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _command import infermeter_command, run_command
from _record import DOCS, read_record, write_record
from infermeter.model.fitted import fit_run
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from infermeter.store.provenance import provenance

GPU_MODELS = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v2-lite,gemma-2-9b,gpt-oss-20b"
QUICK_MODELS = "tiny-mixtral,tiny-qwen3-moe,tiny-deepseek-v2,tiny-gemma2,tiny-gpt-oss"
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCHES = (1, 2, 4, 8, 16)
FLOOR_GOAL = 1.3
R2_GOAL = 0.9999


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large copy on `device` (median of 5)."""
    import torch

    n = 2**30 if device == "cuda" else 2**24
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    times = []
    for i in range(8):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    del src, dst
    return 2 * n * 2 / statistics.median(times)


def profile_model(name: str, args: argparse.Namespace, store: Path) -> dict[str, Any]:
    """Run `infermeter profile` on `name`; read back its fit, validation and decode steps."""
    command = infermeter_command("profile", name, "--store", str(store))
    if args.tp > 1:
        command += ["--tp", str(args.tp)]
    if args.quick:
        command += ["--device", "cpu", "--trials", "2"]
    else:
        command += ["--warmup-s", str(args.warmup_s)]
    if args.max_context and get_spec(name).max_context > args.max_context:
        command += ["--max-context", str(args.max_context)]
    done = run_command(command, timeout_s=args.timeout_s)
    result: dict[str, Any] = {
        "model": name,
        "tp": args.tp,
        "measured": provenance(),  # rows of several invocations share one record
        "command": done["command"],
        "exit_code": done["exit_code"],
        "wall_s": done["wall_s"],
        "notes": done["notes"],
        "validation_printed": [
            line.strip()
            for line in done["output"].splitlines()
            if any(word in line.lower() for word in ("valid", "held-out", "mape"))
        ][-12:],
    }
    if done["exit_code"] != 0:
        result["output_tail"] = done["output_tail"]
        return result
    with Store(store) as db:
        run_id = db.latest_run_id()
        run = db.get_run(run_id)
        points = db.points(run_id)
        models = fit_run(db, run_id)  # the profile's own fits, their validation attached
    model = models[0]
    energy = next((m for m in models[1:] if m.quantity == "energy_j"), None)
    per_p = {int(row["prompt_tokens"]): row["r2"] for row in model.fit["per_prompt"]}
    curves, head = split_r2(per_p, run.grid.get("head_sizes") or ())
    result.update(
        run_id=run_id,
        device=run.device,
        backend_info=run.backend_info,
        points=len(points),
        r2_per_prompt=per_p,
        min_r2=min(curves.values()),
        head_r2=head,
        prompt_encoding_s=dict(zip(model.prompt_sizes, model.prompt_encoding, strict=True)),
        per_output_token_s=model.per_output_token,
        validation=model.fit.get("validation"),
        energy_validation=energy.fit.get("validation") if energy is not None else None,
        **decode_step(points),
    )
    return result


def split_r2(per_p: dict[int, float], head_sizes: Any) -> tuple[dict[int, float], dict[int, float]]:
    """Per-p R² of the decode curves (o up to the grid's longest) and of the head curves (o =
    1, 2, 4, 8 at `head_sizes`: four points whose first steps differ from the rest, a fit of
    another kind). The goal is on the decode curves, the straight lines of the paper's fit;
    a grid without head curves has only those."""
    head = {p: r2 for p, r2 in per_p.items() if p in set(head_sizes)}
    return {p: r2 for p, r2 in per_p.items() if p not in head}, head


def decode_step(points: Any) -> dict[str, Any]:
    """Batch-1 decode step from the profile: prompt nearest 512, longest output, min trial."""
    ok = points[(points.status == "ok") & (points.batch_size == 1)]
    o = int(ok.output_tokens.max())
    sizes = sorted(ok[ok.output_tokens == o].prompt_tokens.unique())  # curves, not PE knots
    p = min(sizes, key=lambda s: abs(s - 512))
    chosen = ok[(ok.prompt_tokens == p) & (ok.output_tokens == o)]
    steps = [json.loads(e).get("tpot_s") for e in chosen.extra_json]
    steps = [s for s in steps if s]
    return {
        "decode_point": {"prompt_tokens": int(p), "output_tokens": o},
        "decode_context_mean": p + (o - 2) / 2,
        "tpot_s": min(steps) if steps else None,
    }


def floor_check(row: dict[str, Any], bandwidth: float, tp: int) -> None:
    """Add the bytes floor of the batch-1 decode step and the ratio to it."""
    if row.get("tpot_s") is None:
        return
    spec = get_spec(row["model"])
    context = round(row["decode_context_mean"])
    floor = spec.decode_bytes(context, 1) / (tp * bandwidth)
    row.update(
        decode_bytes=spec.decode_bytes(context, 1),
        copy_bandwidth_Bps=bandwidth,
        floor_s=floor,
        floor_ratio=row["tpot_s"] / floor,
    )


def decode_floor(name: str, repeats: int, tp: int, device: str) -> dict[str, Any]:
    """Batch-1 decode step (median of `repeats`, tpot of 64 new tokens after 480-token
    prompts; on a CPU 8 after 48) of `name` on the engine, for a profile row that lacks it."""
    from infermeter.backends.base import Point
    from infermeter.backends.engine import EngineBackend

    prompt, new = (480, 65) if device == "cuda" else (48, 9)
    backend = EngineBackend(device=device, dtype="bfloat16" if device == "cuda" else None, tp=tp)
    backend.prepare(get_spec(name))
    try:
        runs = [backend.measure(Point(prompt, new, 1, i)) for i in range(repeats)]
        info = backend.describe()
    finally:
        backend.close()
        gc.collect()
    bad = [m.detail for m in runs if m.status != "ok"]
    if bad:
        return {"floor_error": str(bad[0])[:200]}
    return {
        "decode_point": {"prompt_tokens": prompt, "output_tokens": new, "measured": "apart"},
        "decode_context_mean": prompt + (new - 2) / 2,
        "tpot_s": statistics.median(m.extra["tpot_s"] for m in runs),
        "floor_backend_info": info,
        "floor_measured": provenance(),
    }


def batch_curve(name: str, batches: tuple[int, ...], device: str, repeats: int) -> dict:
    """Decode tokens/s by batch at context ~512, the experts the router touched, and the
    distinct-experts prediction scaled from the batch-1 step."""
    import torch

    from infermeter.backends.base import Point
    from infermeter.backends.engine import EngineBackend
    from infermeter.errors import is_oom
    from infermeter.report.moe_figs import distinct_experts_prediction

    spec = get_spec(name)
    prompt, new = (480, 65) if device == "cuda" else (48, 9)
    backend = EngineBackend(device=device, dtype="bfloat16" if device == "cuda" else None)
    backend.prepare(spec)
    rows: list[dict[str, Any]] = []
    try:
        for b in batches:
            row: dict[str, Any] = {"batch": b}
            try:
                runs = [backend.measure(Point(prompt, new, b, i)) for i in range(repeats)]
                if any(m.status != "ok" for m in runs):
                    raise RuntimeError(next(m.detail for m in runs if m.status != "ok"))
                step = statistics.median(m.extra["tpot_s"] for m in runs)
                counts = backend._engine.expert_counts(b, prompt)
                row.update(
                    step_s=step,
                    tokens_per_s=b / step,
                    experts_measured=statistics.mean(counts),
                    experts_measured_min=min(counts),
                    experts_measured_max=max(counts),
                )
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not (is_oom(error) or "memory" in str(error).lower()):
                    raise
                row.update(infeasible=str(error).splitlines()[0][:200])
            print(row, flush=True)
            rows.append(row)
        info = backend.describe()
    finally:
        backend.close()
        gc.collect()
    measured = [r for r in rows if "step_s" in r]
    context = prompt + (new - 2) // 2
    predicted = distinct_experts_prediction(spec, batches, context, measured[0]["step_s"])
    for row, pred in zip(rows, predicted.to_dict(orient="records"), strict=True):
        row.update(pred)
    return {
        "model": name,
        "context": context,
        "rows": rows,
        "backend_info": info,
        "measured": provenance(),
    }


def write_figure(curve: dict[str, Any], out: Path, stem: str) -> str:
    import pandas as pd

    from infermeter.report.moe_figs import fig_moe_batch_curve
    from infermeter.report.plot import encode

    data = pd.DataFrame([r for r in curve["rows"] if "tokens_per_s" in r])
    title = f"{curve['model']}: decode at context ~{curve['context']}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}_batch.png").write_bytes(encode(fig_moe_batch_curve(data, title).figure))
    return f"{stem}_batch.png"


def _merge(old: dict[str, Any], new_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the earlier record, replaced by this run's for the same (model, tp)."""
    keep = {(r["model"], r.get("tp", 1)) for r in new_rows}
    return [r for r in old.get("models", []) if (r["model"], r.get("tp", 1)) not in keep] + new_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None, help=f"default {GPU_MODELS}")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--curve", default=None, help="MoE model for the batch curve, or none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=540.0, help="per profile command")
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="profile prompts up to this many tokens (the command's default cap is 32,768)",
    )
    parser.add_argument(
        "--floor-only",
        action="store_true",
        help="measure the batch-1 decode step of --models already in the record, no profile",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep each model's store here (default: none)"
    )
    parser.add_argument(
        "--render", action="store_true", help="write the record's tables again, measure nothing"
    )
    parser.add_argument("--quick", action="store_true", help="CPU, tiny specs, no goals")
    parser.add_argument("--out", type=Path, default=None, help="default docs/benchmarks")
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="earlier record to add this run's models to (default docs/benchmarks/models.json, "
        "so a run writing elsewhere, e.g. a device's $OUT, still builds on the committed one)",
    )
    args = parser.parse_args()
    if args.out is None:  # a quick CPU run is a check, not a record for the docs
        args.out = Path(tempfile.gettempdir()) / "infermeter-models-quick" if args.quick else DOCS
    name = "models_quick" if args.quick else "models"
    if args.merge:  # named: it must be a record, not skipped as the default is when absent
        old = read_record(args.merge, "--merge", ("models",), ("model", "command"))
    else:
        earlier = DOCS / f"{name}.json" if not args.quick else args.out / f"{name}.json"
        old = json.loads(earlier.read_text()) if earlier.exists() else {}
    import torch

    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and torch.cuda.device_count() < args.tp and not args.render:
        sys.exit(f"needs {args.tp} CUDA GPU(s); use --quick on a CPU")
    models = (args.models or (QUICK_MODELS if args.quick else GPU_MODELS)).split(",")
    curve_model = args.curve or ("tiny-qwen3-moe" if args.quick else "qwen3-30b-a3b")

    if args.render:
        write(name, old, [], None, args)
        return
    bandwidth = copy_bandwidth(device)  # first: the profiles run in processes of their own
    if device == "cuda":
        torch.cuda.empty_cache()
    rows: list[dict[str, Any]] = []
    if args.floor_only:  # the decode floor of rows already profiled, measured apart
        for model in models:
            row = next(r for r in old["models"] if (r["model"], r.get("tp", 1)) == (model, args.tp))
            row = {**row, **decode_floor(model, args.repeats, args.tp, device)}
            floor_check(row, bandwidth, args.tp)
            print({k: row.get(k) for k in ("model", "tpot_s", "floor_s", "floor_ratio")})
            rows.append(row)
            write(name, old, rows, None, args)
        models = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)  # --work keeps the stores, to fit and price them again
        work.mkdir(parents=True, exist_ok=True)
        for model in models:
            print(f"== {model}", flush=True)
            row = profile_model(model, args, work / f"{model.replace('/', '_')}.sqlite")
            floor_check(row, bandwidth, args.tp)
            print({k: v for k, v in row.items() if k != "backend_info"}, flush=True)
            rows.append(row)
            write(name, old, rows, None, args)  # each model's figures kept as they come
    if curve_model != "none" and args.tp == 1:
        batches = QUICK_BATCHES if args.quick else GPU_BATCHES
        curve = batch_curve(curve_model, batches, device, args.repeats)
        write(name, old, rows, curve, args)
    print((args.out / f"{name}.md").read_text())


def write(
    name: str,
    old: dict[str, Any],
    rows: list[dict[str, Any]],
    curve: dict[str, Any] | None,
    args: argparse.Namespace,
) -> None:
    """The record of the earlier run `old` with this run's `rows` (and `curve`) merged in;
    with --render, `old` written again as it is (its tables after a change of this script)."""
    kept = old if args.render else {k: v for k, v in old.items() if k != "findings"}
    record = {  # hand-written findings about earlier rows go with the next measurement
        **kept,
        **({} if args.render else provenance()),
        "models": _merge(old, rows),
        "goals": {"min_r2": R2_GOAL, "batch1_decode_over_floor": FLOOR_GOAL},
        "deviations": old["deviations"]
        if args.render and "deviations" in old
        else "quick check: CPU, its default grid, --trials 2"
        if args.quick
        else f"infermeter profile defaults except --warmup-s {args.warmup_s}"
        + (f" and --max-context {args.max_context}" if args.max_context else ""),
        "routing_note": "random weights: router weights N(0, 1/h), so its logits are O(1) and "
        "random tokens spread over the experts; the curve records the experts touched",
    }
    if curve is not None:
        record["batch_curve"] = curve
        record["batch_figure"] = write_figure(curve, args.out, name)
    table = []
    for r in sorted(record["models"], key=lambda r: (r.get("tp", 1), r["model"])):
        label = f"{r['model']} (tp {r.get('tp', 1)})"
        if r.get("exit_code") != 0:
            table.append((label, f"profile failed: exit {r.get('exit_code')}", "-"))
            continue
        when = r.get("measured") or {}
        stamp = f"{when.get('date', '?')[:16]}, {when.get('commit', '?')[:7]}"
        table += [
            (f"{label}: profiled", stamp, "-"),
            (f"{label}: min per-p R² (decode curves)", f"{r['min_r2']:.6f}", f"≥ {R2_GOAL}"),
            (f"{label}: profile wall time", f"{r['wall_s']:.0f} s", "-"),
        ]
        for p, r2 in sorted((r.get("head_r2") or {}).items()):
            table.append((f"{label}: R² of the head curve (o = 1-8 at p = {p})", f"{r2:.6f}", "-"))
        for key, what in (("validation", "runtime"), ("energy_validation", "energy")):
            val = r.get(key) or {}
            if val.get("n"):
                table.append(
                    (
                        f"{label}: {what} on {val['n']} validation queries",
                        f"MAPE {val['mape_pct']:.2f}%, max {val['max_error_pct']:.2f}%, "
                        f"bias {val['bias_pct']:+.2f}%",
                        "-",
                    )
                )
        if r.get("floor_ratio") is not None:
            point = r["decode_point"]
            where = f"o = {point['output_tokens']} after p = {point['prompt_tokens']}"
            if point.get("measured") == "apart":
                when = (r.get("floor_measured") or {}).get("commit", "?")[:7]
                where += f", measured apart at {when}"
            table.append(
                (
                    f"{label}: batch-1 decode step ({where}) / bytes floor",
                    f"{r['tpot_s'] * 1e3:.2f} ms / {r['floor_s'] * 1e3:.2f} ms = "
                    f"{r['floor_ratio']:.2f}×",
                    f"≤ {FLOOR_GOAL}×",
                )
            )
    sections = []
    if record.get("batch_curve"):
        c = record["batch_curve"]
        sections += [
            "",
            f"## Decode by batch, {c['model']} (context ~{c['context']})",
            "",
            "Measured {}, {}.".format(
                (c.get("measured") or {}).get("date", "?")[:16],
                (c.get("measured") or {}).get("commit", "?")[:7],
            ),
            "",
            f"![decode tokens/s by batch]({record['batch_figure']})",
            "",
            "| batch | tokens/s | predicted | experts touched (mean, min-max) | predicted |",
            "|---|---|---|---|---|",
            *(
                f"| {x['batch']} | {x.get('tokens_per_s', math.nan):,.0f} | "
                f"{x['tokens_per_s_predicted']:,.0f} | {x.get('experts_measured', math.nan):.1f} "
                f"({x.get('experts_measured_min', '-')}-{x.get('experts_measured_max', '-')}) | "
                f"{x['experts_predicted']:.1f} |"
                for x in c["rows"]
            ),
        ]
    sections += ["", f"Deviations: {record['deviations']}. Routing: {record['routing_note']}."]
    if record.get("findings"):  # what the rows' commits did not yet have, written by hand
        sections += ["", "## Read with", "", *(f"- {line}" for line in record["findings"])]
    write_record(name, record, table, args.out, sections)


if __name__ == "__main__":
    main()
