"""How far does the held-out measurement itself move? The same queries, measured by two runs.

heldout_bench.py draws its queries from a fixed seed, so two runs of it measure the same 60
queries per model, each in a fresh process (minimum of 3 wall-clock trials; joules over at
least 1 s back to back). This script compares two such runs' stored measurements (no GPU):
per model and query shape, the spread of run B's measurement over run A's (std, mean and
largest |B / A − 1|, in %), and how alike the two runs' estimate errors are (their
correlation: near 1 where the estimate misses the same queries both times, near 0 where
the misses are the measurement's own scatter). An estimate can be no closer to a measurement
than the measurement is to itself: the largest |B / A − 1| bounds what a maximum-error goal
can ask of the estimates on the same queries.

Each run folder holds, per model, `<model>.measured.csv` (heldout_bench's measurement) and
`heldout_<model>.json` (its record: device, date, commit, and each query's error).

Run: python benchmarks/heldout_repeat.py --a docs/benchmarks/stores/heldout/64afd9d
                                          --b docs/benchmarks/stores/heldout/131bb40
Writes docs/benchmarks/heldout_repeat.json and .md (or --name's), with device, date and
commit of both runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, _refuse, read_record, write_result

QUANTITIES = {
    "runtime": ("measured_s", "runtime_error_pct"),
    "energy": ("measured_j", "energy_error_pct"),
}


def load_run(folder: Path, model: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(measurements joined with the record's per-query errors, the record's provenance)."""
    option = f"--a/--b ({folder})"
    needs = ("device", "date", "commit", "models")
    record = read_record(folder / f"heldout_{model}.json", option, needs, ("rows",))
    path = folder / f"{model}.measured.csv"
    if not path.is_file():
        _refuse(option, path, "no such file (a run folder holds <model>.measured.csv)")
    measured = pd.read_csv(path)
    rows = pd.DataFrame(record["models"][0]["rows"])[
        ["id", "shape", "runtime_error_pct", "energy_error_pct"]
    ]
    where = {k: record[k] for k in ("device", "date", "commit")}
    return measured.merge(rows, on="id", validate="one_to_one"), where


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """Per shape (and all): spread of B over A and the correlation of their errors."""
    both = a.merge(b, on=["id", "prompt_tokens", "output_tokens", "shape"], suffixes=("_a", "_b"))
    if len(both) != len(a) or len(both) != len(b):
        sys.exit("the two runs measured different queries; compare two runs of one seed")
    out: dict[str, Any] = {"queries": len(both)}
    for shape, part in [("all", both), *both.groupby("shape")]:
        figures: dict[str, Any] = {"queries": len(part)}
        for quantity, (column, error) in QUANTITIES.items():
            ratio_pct = (part[f"{column}_b"] / part[f"{column}_a"] - 1) * 100
            figures[f"{quantity}_repeat_std_pct"] = float(ratio_pct.std())
            figures[f"{quantity}_repeat_mean_pct"] = float(ratio_pct.mean())
            figures[f"{quantity}_repeat_max_pct"] = float(ratio_pct.abs().max())
            figures[f"{quantity}_error_correlation"] = float(
                np.corrcoef(part[f"{error}_a"], part[f"{error}_b"])[0, 1]
            )
        out[str(shape)] = figures
    return out


def table(models: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for m in models:
        for run in ("run_a", "run_b"):
            w = m[run]
            figure = f"{m['model']}: {run.replace('_', ' ')} measured on"
            rows.append((figure, f"{w['device']}, {w['date']}, commit {w['commit']}", ""))
        for shape in ("workload", "uniform"):
            f = m[shape]
            for quantity in QUANTITIES:
                rows.append((
                    f"{m['model']}, {shape} ({f['queries']} queries): {quantity}, B / A − 1",
                    f"std {f[f'{quantity}_repeat_std_pct']:.2f} %, mean "
                    f"{f[f'{quantity}_repeat_mean_pct']:+.2f} %, largest "
                    f"{f[f'{quantity}_repeat_max_pct']:.2f} %; errors' correlation "
                    f"{f[f'{quantity}_error_correlation']:.2f}",
                    "-",
                ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", type=Path, required=True, help="run folder A")
    parser.add_argument("--b", type=Path, required=True, help="run folder B")
    parser.add_argument("--models", default="llama-7b,llama-13b")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="heldout_repeat", help="record name")
    args = parser.parse_args()
    models = []
    for model in args.models.split(","):
        a, run_a = load_run(args.a, model)
        b, run_b = load_run(args.b, model)
        models.append({"model": model, "run_a": run_a, "run_b": run_b, **compare(a, b)})
    path = write_result(args.name, {"models": models}, table(models), args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
