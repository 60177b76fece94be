"""Decode throughput against batch size: the batch curve behind both papers' runtime story.

For each model, the reference engine decodes 64 tokens after a 480-token prompt (contexts
480..543, so the mean step is the step at context 512) at batch 1, 8, 32, 64 and 128, and the
step time's median over repeats gives tokens/s = batch / step. A batch that does not fit in
the GPU's memory is recorded as infeasible with the reason, and the sweep goes on.

Run on a GPU: python benchmarks/batch_curve.py [--models llama-7b,llama-13b]
    [--batches 1,8,32,64,128] [--out DIR] [--name batch_curve]
Writes <out>/<name>.json and .md with device, date and commit; a MoE model's rows also say
its batch-1 expert path and its routing's warps (the engine's description).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, name_problem, write_result
from engine_bench import medians
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.errors import UserError, is_oom
from infermeter.spec.catalog import get_spec


def curve(model: str, batches: list[int], repeats: int) -> list[dict[str, Any]]:
    spec = get_spec(model)
    backend = EngineBackend(device="cuda", dtype="bfloat16")
    backend.prepare(spec)
    ran = backend._engine.describe()  # MoE: the batch-1 expert path and the routing's warps
    engine = {key: ran.get(key) for key in ("moe_batch1_gemv", "moe_route_warps") if key in ran}
    rows: list[dict[str, Any]] = []
    try:
        for batch in batches:
            row: dict[str, Any] = {"model": model, "batch": batch, "context": 512, **engine}
            try:
                got = medians(backend, Point(480, 65, batch), repeats)
                step = got["tpot_s"]
                row.update(
                    step_ms=1e3 * step,
                    tokens_per_s=batch / step,
                    bytes_per_s=spec.decode_bytes(512, batch) / step,
                    feasible=True,
                )
            except (RuntimeError, UserError) as error:
                if not (is_oom(error) or "memory" in str(error).lower()):
                    raise
                row.update(feasible=False, reason=str(error).splitlines()[0][:200])
                torch.cuda.empty_cache()
            print(row, flush=True)
            rows.append(row)
    finally:
        backend.close()
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def moe_note(row: dict[str, Any]) -> str:
    """What a MoE model's row ran with (its batch-1 expert path, its routing's warps), for
    the table: empty for a dense model."""
    if "moe_route_warps" not in row:
        return ""
    return f" (batch-1 experts {row['moe_batch1_gemv']}, routing warps {row['moe_route_warps']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="llama-7b,llama-13b")
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="batch_curve", help="record name")
    args = parser.parse_args()
    if problem := name_problem(args.name):
        parser.error(problem)
    if not torch.cuda.is_available():
        sys.exit("batch_curve needs a CUDA GPU")
    batches = [int(b) for b in args.batches.split(",")]
    try:
        rows = [r for model in args.models.split(",") for r in curve(model, batches, args.repeats)]
    except UserError as error:  # an unknown model, a misspelt INFERMETER_* setting
        sys.exit(f"batch_curve: {error}")
    table = [
        (
            f"{r['model']} batch {r['batch']}" + moe_note(r),
            f"{r['tokens_per_s']:,.0f} tokens/s ({r['step_ms']:.2f} ms/step)"
            if r["feasible"]
            else f"infeasible: {r['reason']}",
            "-",
        )
        for r in rows
    ]
    write_result(args.name, {"rows": rows, "repeats": args.repeats}, table, args.out)
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
