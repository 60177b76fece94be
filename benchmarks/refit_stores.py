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
store (with a baseline, of the stores both priced: one the fit refuses on either side is
named with its one line, not dropped silently). Stores are opened as `show` opens them (read-only:
nothing is written beside them, and frames a writer left in a -wal file are read).

Run: python benchmarks/refit_stores.py [--stores DIR] [--baseline-src DIR [--baseline-commit C]]
     [--name refit_stores] [--out DIR]
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
from _record import DOCS, record_problem, write_result  # noqa: E402

QUANTITIES = ("runtime_s", "energy_j")
# With a baseline, the table lists the stores whose MAPE or max moved by more than this (points).
TABLE_MOVE_PT = 0.1


def stores_under(root: Path) -> list[Path]:
    """Every *.sqlite file under `root` (or `root` itself), sorted."""
    return [root] if root.is_file() else sorted(root.rglob("*.sqlite"))


def refit(path: Path) -> dict[str, Any] | None:
    """Per quantity: n, MAPE, max and mean error (%) on the latest run's validation queries,
    and each query's (p, o, error %); None for a store without them (not a profile's, or one
    from before validation); {"error": the one line} where the store or its fit is refused
    (UserError: a change that makes the fit refuse a store shows, not drops it)."""
    from infermeter.errors import UserError
    from infermeter.model.fit import validation_errors
    from infermeter.model.fitted import fit_run
    from infermeter.store.db import Store

    try:
        with Store(path, read_only=True) as store:  # writes nothing, -wal frames included
            try:
                run_id = store.latest_run_id()
            except UserError:  # no runs
                return None
            if not store.holds("validation", run_id):
                return None
            queries = store.validation(run_id)
            models = fit_run(store, run_id)
    except UserError as error:
        return {"error": str(error)}
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
    return out or {"error": "no quantity could be priced on its validation queries"}


def refit_all(paths: list[Path], root: Path) -> dict[str, dict[str, Any]]:
    """refit() of each store, by its path relative to `root` (stores without queries left out)."""
    out = {}
    for path in paths:
        figures = refit(path)
        if figures:
            out[str(path.relative_to(root) if root.is_dir() else path.name)] = figures
    return out


def refit_with(source: Path, stores: Path) -> dict[str, dict[str, Any]]:
    """refit_all() by the infermeter source tree `source`, in a subprocess; exits in one line
    where it fails or imported infermeter from elsewhere (an installed copy, say)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, __file__, "--stores", str(stores), "--json-only"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"--baseline-src {source}: its refit failed ({tail})")
    answer = json.loads(done.stdout)
    imported = Path(answer["infermeter"]).resolve()
    if not imported.is_relative_to(source.resolve()):
        sys.exit(f"--baseline-src {source}: the refit imported infermeter from {imported}")
    return answer["stores"]


def pooled(
    figures: dict[str, dict[str, Any]], quantity: str, only: set[str] | None = None
) -> dict[str, Any]:
    """MAPE and mean error over every query of every store (of `only`, where given: the
    stores both sides priced), the stores' largest max, and how many stores have `quantity`."""
    chosen = [f for k, f in figures.items() if quantity in f and (only is None or k in only)]
    errors = [q[2] for f in chosen for q in f[quantity]["queries"]]
    if not errors:
        return {"stores": 0}
    return {
        "stores": len(chosen),
        "queries": len(errors),
        "mape_pct": float(np.mean(np.abs(errors))),
        "bias_pct": float(np.mean(errors)),
        "largest_max_error_pct": float(max(f[quantity]["max_error_pct"] for f in chosen)),
    }


def priced_by_both(now: dict, before: dict, quantity: str) -> set[str]:
    """The stores both sides priced `quantity` for."""
    return {k for k in now if quantity in now[k] and quantity in before.get(k, {})}


def compared(now: dict, before: dict, quantity: str) -> dict[str, Any]:
    """Stores whose MAPE and max went down or up (by more than 0.005 points) from `before`."""
    both = sorted(priced_by_both(now, before, quantity))
    change = {
        figure: [now[k][quantity][figure] - before[k][quantity][figure] for k in both]
        for figure in ("mape_pct", "max_error_pct")
    }
    return {
        "stores": len(both),
        **{f"{f}_lower": sum(d < -0.005 for d in v) for f, v in change.items()},
        **{f"{f}_higher": sum(d > 0.005 for d in v) for f, v in change.items()},
        "priced_by_this_checkout_only": sorted(
            k for k in now if quantity in now[k] and k not in both
        ),
        "priced_by_baseline_only": sorted(
            k for k in before if quantity in before[k] and k not in both
        ),
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
        only = priced_by_both(figures, baseline, quantity) if baseline is not None else None
        for label, source in (("this checkout", figures), ("baseline", baseline)):
            if source is None:
                continue
            p = pooled(source, quantity, only)
            if p["stores"]:
                rows.append((
                    f"{quantity}, {label}: pooled MAPE / largest store max / mean error (%)",
                    f"{p['mape_pct']:.3f} / {p['largest_max_error_pct']:.2f} / {p['bias_pct']:+.3f}"
                    f" ({p['queries']} queries, {p['stores']} stores"
                    + (", those both priced)" if only is not None else ")"),
                    "-",
                ))  # fmt: skip
    for label, source in (("this checkout", figures), ("baseline", baseline or {})):
        for store, f in source.items():
            if "error" in f:
                rows.append((f"{store}: refused by {label}", f["error"], "-"))
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
    if problem := record_problem(args.name, args.out):
        sys.exit(problem)
    if not args.json_only:  # this checkout's code, not an installed or another clone's copy
        import infermeter

        imported = Path(infermeter.__file__).resolve()
        if not imported.is_relative_to(HERE.parent / "src"):
            sys.exit(f"infermeter was imported from {imported}: run with PYTHONPATH=src")
    if not args.stores.exists():
        sys.exit(f"--stores {args.stores} does not exist: name a folder of stores or a store")
    if (
        args.baseline_src is not None
        and not (args.baseline_src / "infermeter/__init__.py").is_file()
    ):
        sys.exit(
            f"--baseline-src {args.baseline_src} holds no infermeter/__init__.py: name a source "
            "tree (git archive COMMIT src | tar -x -C DIR, then DIR/src)"
        )
    figures = refit_all(stores_under(args.stores), args.stores)
    if args.json_only:
        import infermeter

        print(json.dumps({"infermeter": infermeter.__file__, "stores": figures}))
        return
    if not figures:
        sys.exit(f"no store under {args.stores} holds validation queries")
    baseline = refit_with(args.baseline_src, args.stores) if args.baseline_src else None
    result: dict[str, Any] = {
        "stores_root": shown(args.stores),
        "baseline_src": shown(args.baseline_src) if args.baseline_src else None,
        "baseline_commit": args.baseline_commit,
        "pooled": {q: pooled(figures, q) for q in QUANTITIES},
        "stores": figures,
    }
    if baseline is not None:
        both = {q: priced_by_both(figures, baseline, q) for q in QUANTITIES}
        result["pooled_where_both_priced"] = {q: pooled(figures, q, both[q]) for q in QUANTITIES}
        result["baseline_pooled"] = {q: pooled(baseline, q, both[q]) for q in QUANTITIES}
        result["against_baseline"] = {q: compared(figures, baseline, q) for q in QUANTITIES}
        result["baseline_stores"] = baseline
    try:
        path = write_result(args.name, result, table_rows(figures, baseline), args.out)
    except OSError as error:
        sys.exit(f"cannot write the record in --out {args.out}: {error.strerror or error}")
    print(f"written {path}")


def shown(path: Path) -> str:
    """`path` relative to the repository where it lies inside it, else as given."""
    repo = HERE.parent
    resolved = path.resolve()
    return str(resolved.relative_to(repo)) if resolved.is_relative_to(repo) else str(path)


if __name__ == "__main__":
    main()
