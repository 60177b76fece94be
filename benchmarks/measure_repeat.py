"""How repeatable is one measurement of a query, on one machine, in one process?

`benchmarks/heldout_noise.py` found that the held-out benchmark's measurement of a query of
1-5 output tokens (the minimum of 3 wall-clock trials back to back) moves by about 1% (std)
from one run to the next, each run's speed taken out, and a longer query's by about 0.2%. Runs
differ in machine and commit; this script asks how much moves on one machine, in one process,
measuring the same queries several times two ways:

- back_to_back, as heldout_bench.py measures: per query, one untimed call of the shape, 3 timed
  trials back to back, then 1 s more of the query back to back (the benchmark's energy window,
  not read here); the query's figure is the minimum of its 3 trials. Repeated in passes.
- spread: each pass measures every query once (an untimed call of the shape, then one timed
  trial); a query's figure is the minimum over 3 passes, so its trials come apart, with every
  other query in between (seconds for 24 short queries, minutes where long outputs are in).

Per protocol: the std (%) of log(figure) between two repeats of the protocol over the queries,
divided by sqrt 2 (one measurement's share), and the median difference between the protocols.
If spread trials repeat much better than back-to-back ones, the noise is in the card's state
over the seconds a query's trials share, which spreading them averages out. While it runs,
every finished pass is in measure_repeat_<model>.partial.json under --out (removed once the
record holds it).

Run: python benchmarks/measure_repeat.py [--models llama-7b,llama-13b] [--queries N]
     python benchmarks/measure_repeat.py --quick      (CPU: gpt2, 6 queries, short passes)
Queries: docs/benchmarks/stores/heldout/<model>.queries.csv (the held-out benchmark's), or
drawn as heldout_bench.py draws them where that file is missing. Writes
docs/benchmarks/measure_repeat.json and .md (or measure_repeat_quick.*, or --name).
The records measure_repeat_llama-7b and measure_repeat_llama-13b came from
`--models llama-7b --queries 24` and `--models llama-13b --queries 24`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, write_result  # noqa: E402
from _timing import generate_timer, prepared_backend  # noqa: E402

STORES = DOCS / "stores" / "heldout"
TRIALS = 3


def line(text: str) -> None:
    print(text, flush=True)


def queries_for(model: str, count: int, context: int) -> pd.DataFrame:
    """The held-out benchmark's stored queries for `model`, else `count` drawn the same way."""
    stored = STORES / f"{model}.queries.csv"
    if stored.exists():
        return pd.read_csv(stored).head(count)
    from heldout_bench import draw_queries

    return draw_queries(context, set(), count, seed=0)


def repeat_std_pct(a: np.ndarray, b: np.ndarray) -> float:
    """One measurement's std (%) from two repeats of it over the queries."""
    return float(np.std(np.log(a / b)) / np.sqrt(2) * 100)


def one_model(
    model: str, count: int, device: str, passes: int, window_s: float, out: Path
) -> dict[str, Any]:
    spec, backend = prepared_backend(model, device)
    engine = backend._engine
    call = generate_timer(engine, device)
    queries = queries_for(model, count, spec.max_context)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, spec.vocab_size, int(p)).tolist() for p in queries.prompt_tokens]
    outputs = [int(o) for o in queries.output_tokens]
    started = time.perf_counter()

    back_to_back = np.zeros((passes, len(prompts)))
    spread = np.zeros((2 * TRIALS, len(prompts)))
    partial = out / f"measure_repeat_{model}.partial.json"
    out.mkdir(parents=True, exist_ok=True)

    def keep() -> None:  # every finished pass on disk: a cut-off run keeps what it measured
        partial.write_text(
            json.dumps({"back_to_back_s": back_to_back.tolist(), "spread_s": spread.tolist()})
        )

    # Alternate the protocols so that neither has the card all to itself early or late.
    for index in range(max(passes, 2)):
        if index < passes:
            for q, (prompt, o) in enumerate(zip(prompts, outputs, strict=True)):
                call(prompt, o)  # the shape's setup, untimed
                back_to_back[index, q] = min(call(prompt, o) for _ in range(TRIALS))
                window = time.perf_counter()
                while time.perf_counter() - window < window_s:
                    call(prompt, o)
            keep()
            line(f"  {model}: back_to_back pass {index + 1} of {passes} done")
        for k in range(TRIALS):
            row = index * TRIALS + k
            if row >= spread.shape[0]:
                break
            for q, (prompt, o) in enumerate(zip(prompts, outputs, strict=True)):
                call(prompt, o)
                spread[row, q] = call(prompt, o)
            keep()
            line(f"  {model}: spread pass {row + 1} of {spread.shape[0]} done")
    backend.close()

    first = spread[:TRIALS].min(axis=0)
    second = spread[TRIALS:].min(axis=0)
    result: dict[str, Any] = {
        "model": model,
        "queries": len(prompts),
        "wall_s": time.perf_counter() - started,
        "window_s": window_s,
        "spread_repeat_std_pct": repeat_std_pct(first, second),
        "spread_single_trial_repeat_std_pct": repeat_std_pct(spread[0], spread[TRIALS]),
        "spread_minus_back_to_back_median_pct": float(
            np.median(np.log(first / back_to_back[0])) * 100
        ),
        "rows": [
            {
                "prompt_tokens": int(p),
                "output_tokens": int(o),
                "back_to_back_s": back_to_back[:, q].tolist(),
                "spread_s": spread[:, q].tolist(),
            }
            for q, (p, o) in enumerate(zip(queries.prompt_tokens, outputs, strict=True))
        ],
    }
    if passes >= 2:
        result["back_to_back_repeat_std_pct"] = repeat_std_pct(back_to_back[0], back_to_back[1])
        result["back_to_back_repeat_max_pct"] = float(
            np.max(np.abs(np.expm1(np.log(back_to_back[0] / back_to_back[1])))) * 100
        )
    result["spread_repeat_max_pct"] = float(np.max(np.abs(np.expm1(np.log(first / second)))) * 100)
    return result


def table_rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for r in results:
        m = r["model"]
        if "back_to_back_repeat_std_pct" in r:
            rows.append(
                (
                    f"{m}: back to back (min of 3, as heldout_bench.py), pass against pass",
                    f"std {r['back_to_back_repeat_std_pct']:.2f} %, largest move "
                    f"{r['back_to_back_repeat_max_pct']:.2f} % ({r['queries']} queries)",
                    "-",
                )
            )
        rows.append(
            (
                f"{m}: spread (min of 3 passes), 3 passes against the next 3",
                f"std {r['spread_repeat_std_pct']:.2f} %, largest move "
                f"{r['spread_repeat_max_pct']:.2f} %; one trial alone: std "
                f"{r['spread_single_trial_repeat_std_pct']:.2f} %",
                "-",
            )
        )
        rows.append(
            (
                f"{m}: spread against back to back (median over the queries)",
                f"{r['spread_minus_back_to_back_median_pct']:+.2f} %",
                "-",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="llama-7b,llama-13b")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--passes", type=int, default=2, help="back-to-back passes (default 2)")
    parser.add_argument("--quick", action="store_true", help="CPU: gpt2, 6 queries")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", help="record name (default measure_repeat[_quick])")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.quick:
        models, count, device, window_s = ["gpt2"], 6, "cpu", 0.2
    else:
        models, count, device, window_s = args.models.split(","), args.queries, "cuda", 1.0
    results = [one_model(m, count, device, args.passes, window_s, args.out) for m in models]
    name = args.name or ("measure_repeat_quick" if args.quick else "measure_repeat")
    path = write_result(name, {"models": results}, table_rows(results), args.out)
    for model in models:  # all of it is in the record's rows now
        (args.out / f"measure_repeat_{model}.partial.json").unlink(missing_ok=True)
    line(f"written {path}")


if __name__ == "__main__":
    main()
