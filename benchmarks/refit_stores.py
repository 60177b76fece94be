"""Every stored profile refitted by this checkout and priced on its own validation queries,
beside the same with another checkout's source: what a change to the fit does to every
profile measured so far. No GPU needed.

Each SQLite store under --stores (default docs/benchmarks/stores, searched recursively) whose
latest run holds validation queries (infermeter profile's, never profiled) is read as `show`
reads it (infermeter.model.fitted.fit_run), and each fitted quantity (runtime_s, energy_j) is
priced at those queries (infermeter.model.fit.validation_errors): MAPE, max |error| and mean
error in percent. With --baseline-src DIR (a source tree, e.g. `git archive COMMIT src | tar
-x -C /tmp/base`, then /tmp/base/src) the same is done by that code in a subprocess, and each
store's change is recorded; the pooled figures are over every validation query of every
store, each store's own 16 or so counted once. Stores are opened as `show` opens them (read-only:
nothing is written beside them, and frames a writer left in a -wal file are read).

Run: python benchmarks/refit_stores.py [--stores DIR] [--baseline-src DIR [--baseline-commit C]]
     [--name refit_stores]
Writes docs/benchmarks/refit_stores.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, write_result  # noqa: E402

QUANTITIES = ("runtime_s", "energy_j")
# With a baseline, the table lists the stores whose MAPE or max moved by more than this (points).
TABLE_MOVE_PT = 0.1


def stores_under(root: Path) -> list[Path]:
    """Every *.sqlite file under `root` (or `root` itself), sorted."""
    return [root] if root.is_file() else sorted(root.rglob("*.sqlite"))


def refit(path: Path) -> dict[str, Any] | None:
    """Per quantity: n, MAPE, max and mean error (%) on the latest run's validation queries,
    and each query's (p, o, error %); None for a store without them (or not a profile's)."""
    from infermeter.errors import UserError
    from infermeter.model.fit import validation_errors
    from infermeter.model.fitted import fit_run
    from infermeter.store.db import Store

    try:
        with Store(path, read_only=True) as store:  # writes nothing, -wal frames included
            run_id = store.latest_run_id()
            queries = store.validation(run_id)
            models = fit_run(store, run_id) if not queries.empty else []
    except UserError:
        return None
    out = {}
    for model in models:
        errors = validation_errors(model, queries)
        if errors.get("n") and model.quantity in QUANTITIES:
            out[model.quantity] = {
                "n": errors["n"],
                "mape_pct": errors["mape_pct"],
                "max_error_pct": errors["max_error_pct"],
                "bias_pct": errors["bias_pct"],
                "queries": [
                    [int(q["prompt_tokens"]), int(q["output_tokens"]), float(q["error_pct"])]
                    for q in errors["queries"]
                ],
            }
    return out or None


def refit_all(paths: list[Path], root: Path) -> dict[str, dict[str, Any]]:
    """refit() of each store, by its path relative to `root` (stores without queries left out)."""
    out = {}
    for path in paths:
        figures = refit(path)
        if figures:
            out[str(path.relative_to(root) if root.is_dir() else path.name)] = figures
    return out


def refit_with(source: Path, stores: Path) -> dict[str, dict[str, Any]]:
    """refit_all() by the infermeter source tree `source`, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, __file__, "--stores", str(stores), "--json-only"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"--baseline-src {source}: its refit failed ({tail})")
    return json.loads(done.stdout)


def pooled(figures: dict[str, dict[str, Any]], quantity: str) -> dict[str, Any]:
    """MAPE and mean error over every query of every store, the stores' largest max, and
    how many stores have `quantity`."""
    errors = [q[2] for f in figures.values() if quantity in f for q in f[quantity]["queries"]]
    maxima = [f[quantity]["max_error_pct"] for f in figures.values() if quantity in f]
    if not errors:
        return {"stores": 0}
    return {
        "stores": len(maxima),
        "queries": len(errors),
        "mape_pct": float(np.mean(np.abs(errors))),
        "bias_pct": float(np.mean(errors)),
        "largest_max_error_pct": float(max(maxima)),
    }


def compared(now: dict, before: dict, quantity: str) -> dict[str, Any]:
    """Stores whose MAPE and max went down or up (by more than 0.005 points) from `before`."""
    both = [k for k in now if quantity in now[k] and quantity in before.get(k, {})]
    change = {
        figure: [now[k][quantity][figure] - before[k][quantity][figure] for k in both]
        for figure in ("mape_pct", "max_error_pct")
    }
    return {
        "stores": len(both),
        **{f"{f}_lower": sum(d < -0.005 for d in v) for f, v in change.items()},
        **{f"{f}_higher": sum(d > 0.005 for d in v) for f, v in change.items()},
    }


def cell(f: dict[str, Any] | None) -> str:
    if not f:
        return "-"
    return f"{f['mape_pct']:.2f} / {f['max_error_pct']:.2f} / {f['bias_pct']:+.2f}"


def table_rows(
    figures: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]] | None
) -> list[tuple[str, str, str]]:
    rows = []
    for quantity in QUANTITIES:
        for label, source in (("this checkout", figures), ("baseline", baseline)):
            if source is None:
                continue
            p = pooled(source, quantity)
            if p["stores"]:
                rows.append((
                    f"{quantity}, {label}: pooled MAPE / mean error / largest store max (%)",
                    f"{p['mape_pct']:.3f} / {p['bias_pct']:+.3f} / {p['largest_max_error_pct']:.2f}"
                    f" ({p['queries']} queries, {p['stores']} stores)",
                    "-",
                ))  # fmt: skip
    for store, f in figures.items():
        for quantity in QUANTITIES:
            if quantity in f:
                before = (baseline or {}).get(store, {}).get(quantity)
                if baseline is not None and not moved(f[quantity], before):
                    continue
                value = cell(f[quantity]) + (f" (baseline {cell(before)})" if baseline else "")
                rows.append((f"{store}: {quantity} MAPE / max / mean error (%)", value, "-"))
    return rows


def moved(now: dict[str, Any], before: dict[str, Any] | None) -> bool:
    """Whether a store's MAPE or max moved by more than TABLE_MOVE_PT from the baseline's (the
    table lists those stores only when a baseline is given; the JSON holds every store)."""
    if before is None:
        return True
    return any(abs(now[f] - before[f]) > TABLE_MOVE_PT for f in ("mape_pct", "max_error_pct"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", type=Path, default=DOCS / "stores")
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--baseline-commit", default=None, help="recorded: the baseline's commit")
    parser.add_argument("--name", default="refit_stores")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.stores.exists():
        sys.exit(f"--stores {args.stores} does not exist: name a folder of stores or a store")
    if args.baseline_src is not None and not (args.baseline_src / "infermeter").is_dir():
        sys.exit(f"--baseline-src {args.baseline_src} holds no infermeter/: name a source tree")
    figures = refit_all(stores_under(args.stores), args.stores)
    if args.json_only:
        print(json.dumps(figures))
        return
    if not figures:
        sys.exit(f"no store under {args.stores} holds validation queries")
    baseline = refit_with(args.baseline_src, args.stores) if args.baseline_src else None
    result: dict[str, Any] = {
        "stores_root": str(args.stores),
        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
        "baseline_commit": args.baseline_commit,
        "pooled": {q: pooled(figures, q) for q in QUANTITIES},
        "stores": figures,
    }
    if baseline is not None:
        result["baseline_pooled"] = {q: pooled(baseline, q) for q in QUANTITIES}
        result["against_baseline"] = {q: compared(figures, baseline, q) for q in QUANTITIES}
        result["baseline_stores"] = baseline
    path = write_result(args.name, result, table_rows(figures, baseline), args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
