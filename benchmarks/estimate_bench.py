"""How fast `estimate` prices a benchmark: 1,000,000 queries, goal under 2 s.

Run: .venv/bin/python benchmarks/estimate_bench.py [--queries N]
Writes docs/benchmarks/estimate.json and estimate.md with device, date and commit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import write_result
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import Pricing, estimate_queries, read_queries, write_table
from infermeter.spec.hardware import get_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    queries = pd.DataFrame(
        {
            "id": np.arange(args.queries),
            "prompt_tokens": rng.integers(1, 2048, args.queries),
            "output_tokens": rng.integers(1, 512, args.queries),
        }
    )
    runtime = CostModel([1, 256, 512, 1024, 1536], [0.02, 0.05, 0.09, 0.2, 0.33], 0.021)
    energy = CostModel(
        [1, 256, 512, 1024, 1536], [8.0, 20.0, 36.0, 80.0, 130.0], 8.4, quantity="energy_j"
    )
    pricing = Pricing.of(get_accelerator("a100"), 1)

    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        estimates = estimate_queries(queries, runtime, pricing, energy)
        timings.append(time.perf_counter() - start)
    seconds = float(np.median(timings))

    # The whole file path too: read a CSV of queries, price, write the CSV of estimates.
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "q.csv", Path(tmp) / "e.csv"
        queries.to_csv(src, index=False)
        start = time.perf_counter()
        write_table(estimate_queries(read_queries(src), runtime, pricing, energy), dst)
        file_seconds = time.perf_counter() - start

    result = {
        "queries": args.queries,
        "seconds": seconds,
        "seconds_all_repeats": timings,
        "file_round_trip_seconds": file_seconds,
        "goal_seconds": 2.0,
        "rows_out": len(estimates),
    }
    path = write_result(
        "estimate",
        result,
        [
            (
                f"estimate {args.queries:,} queries (median of {args.repeats})",
                f"{seconds:.3f} s",
                "< 2 s",
            ),
            ("read CSV + estimate + write CSV", f"{file_seconds:.2f} s", "-"),
        ],
    )
    print(f"{args.queries:,} queries in {seconds:.3f} s (file round trip {file_seconds:.2f} s)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
