"""Whole default profiles with each prefill attention of soft-capped and sink layers.

engine/flex.py serves the prefill of Gemma-2's soft-capped and gpt-oss's sink layers with
compiled FlexAttention (INFERMETER_PREFILL_ATTENTION=auto, the default since 2026-12-05) or
the explicit path (=explicit). benchmarks/flex_prefill.py times one prefill of each; this
runs what a user runs, `infermeter profile MODEL` (defaults but --max-context and
--warmup-s, as models_bench), once per mode in a process of its own, and records from each
profile's store: the attention the engine took (its backend record), the validation figures
the profile printed (runtime and energy on queries it never profiled), the prefill time at
the largest knot (PE), the least per-p R^2 and how long the profile took.

Run (GPU):  PYTHONPATH=src python benchmarks/prefill_attention.py [--models gemma-2-9b,...]
            [--max-context 4096] [--stores DIR (kept there: MODEL_MODE.sqlite)]
Render only, from stores measured before (their runs' device, date and commit):
            ... --from-stores DIR
Writes docs/benchmarks/prefill_attention.json and .md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from _command import infermeter_command, run_command
from _record import DOCS, write_record
from infermeter.engine.flex import SWITCH
from infermeter.model.fitted import fit_run
from infermeter.store.db import Store

MODES = ("explicit", "auto")
MODELS = ("gemma-2-9b", "gpt-oss-20b")


def profile(model: str, mode: str, store: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run `infermeter profile` with INFERMETER_PREFILL_ATTENTION=`mode` into `store`."""
    command = infermeter_command(
        "profile", model, "--store", str(store), "--max-context", str(args.max_context),
        "--warmup-s", str(args.warmup_s),
    )  # fmt: skip
    before = os.environ.get(SWITCH)
    os.environ[SWITCH] = mode  # run_command passes this process's environment on
    try:
        done = run_command(command, timeout_s=args.timeout_s)
    finally:  # the caller's own setting back
        if before is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = before
    return {"command": f"{SWITCH}={mode} {done['command']}", "exit_code": done["exit_code"],
            "wall_s": done["wall_s"]}  # fmt: skip


def read_store(store: Path) -> dict[str, Any]:
    """A profile's figures from its store (its latest run), with the run's provenance: from
    the fits the profile stored, which hold what it printed (a refit by later code can
    differ: model/decode.py's gaps since 1a67c1b), or a refit where it stored none."""
    with Store(store, read_only=True) as db:
        run_id = db.latest_run_id()
        run = db.get_run(run_id)
        models = [m for m in db.latest_fits(run_id) if m.batch_size == 1]
        fitted_by = "the profile (its stored fits)"
        if not models or models[0].quantity != "runtime_s":
            models, fitted_by = fit_run(db, run_id), "this checkout (the store kept no fit)"
    runtime = models[0]
    energy = next((m for m in models[1:] if m.quantity == "energy_j"), None)
    largest = max(runtime.prompt_sizes)
    pe = dict(zip(runtime.prompt_sizes, runtime.prompt_encoding, strict=True))
    info = run.backend_info or {}
    return {
        "device": run.device,
        "commit": run.commit_sha,
        "started": run.created_at,
        "profile_store_s": _seconds(run.created_at, run.updated_at),
        "prefill_attention": info.get("prefill_attention"),
        "prefill_attention_note": info.get("prefill_attention_note"),
        "min_r2_per_p": min(row["r2"] for row in runtime.fit["per_prompt"]),
        "largest_knot_p": largest,
        "pe_at_largest_knot_s": pe[largest],
        "fitted_by": fitted_by,
        "runtime_validation": runtime.fit.get("validation"),
        "energy_validation": energy.fit.get("validation") if energy is not None else None,
    }


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _validation(v: dict[str, Any] | None) -> str:
    if not v:
        return "-"
    return (
        f"MAPE {v['mape_pct']:.2f} %, max {v['max_error_pct']:.2f} %, "
        f"mean error {v['bias_pct']:+.2f} % ({v['n']} queries)"
    )


def rows(runs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The record's table: one row per figure, the two modes side by side in each."""
    out: list[tuple[str, str, str]] = []
    for model in dict.fromkeys(r["model"] for r in runs):
        by_mode = {r["mode"]: r for r in runs if r["model"] == model}

        def cell(key: str, show: Any, model: str = model, by_mode: Any = by_mode) -> str:
            return "; ".join(
                f"{mode}: {show(by_mode[mode].get(key)) if mode in by_mode else '-'}"
                for mode in MODES
            )

        out += [
            (f"{model}: prefill attention the engine took", cell("prefill_attention", str), "-"),
            (f"{model}: runtime on validation queries", cell("runtime_validation", _validation),
             "-"),
            (f"{model}: energy on validation queries", cell("energy_validation", _validation),
             "-"),
            (f"{model}: PE at the largest knot, s", cell(
                "pe_at_largest_knot_s", lambda x: "-" if x is None else f"{x:.4f}"), "-"),
            (f"{model}: least per-p R²", cell(
                "min_r2_per_p", lambda x: "-" if x is None else f"{x:.6f}"), "≥ 0.9999"),
            (f"{model}: profile, first to last write of its run, s", cell(
                "profile_store_s", lambda x: "-" if x is None else f"{x:.0f}"), "-"),
        ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-context", type=int, default=4096)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per profile")
    parser.add_argument("--stores", type=Path, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--from-stores", type=Path, help="render from MODEL_MODE.sqlite there")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.from_stores is not None and not args.from_stores.is_dir():
        parser.error(f"--from-stores {args.from_stores} is not a folder")
    folder = args.from_stores or args.stores or Path(tempfile.mkdtemp(prefix="prefill_attn_"))
    folder.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for model in models:
        for mode in MODES:
            store = folder / f"{model}_{mode}.sqlite"
            row: dict[str, Any] = {"model": model, "mode": mode, "store": store.name}
            if args.from_stores is None:
                row.update(profile(model, mode, store, args))
                print(f"{model} {mode}: exit {row['exit_code']} after {row['wall_s']:.0f} s")
            if store.exists():
                row.update(read_store(store))
            else:
                print(f"{model} {mode}: no store at {store}")
            runs.append(row)
    measured = [r for r in runs if "device" in r]
    if not measured:
        parser.error("no profile was stored: nothing to record")
    record: dict[str, Any] = {  # the stores' own (one device and commit where run here)
        "device": " / ".join(dict.fromkeys(r["device"] for r in measured)),
        "date": min(r["started"] for r in measured),
        "commit": " / ".join(dict.fromkeys(str(r["commit"]) for r in measured)),
    }
    if args.from_stores is None:
        record.update(max_context=args.max_context, warmup_s=args.warmup_s)
    else:  # what was run is the stores' (their README), not this invocation's options
        record["rendered_from_stores"] = str(args.from_stores)
    record["runs"] = runs
    path = write_record("prefill_attention", record, rows(runs), args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
