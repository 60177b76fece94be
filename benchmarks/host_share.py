"""How much of a profiled call's wall clock is host work, and how much does it move?

A profile times each call as its caller does (the wall clock around the whole generate()).
The engine also records, per call, the device work inside it (CUDA events from the first
kernel to the last: `device_s`) and, from 7f60083, the host work either side of it
(`host_before_s`: packing the prompt, its copy to the GPU, graph lookups, the sync before;
`host_after_s`: the output tokens' copy back and the result). The rest of wall − device is
the launch and the wake-up from the final sync. This script reads a profile's SQLite store
(no GPU) and reports, for the grid's points and for the validation queries apart, the spread
of wall − device and its parts (from a store before 7f60083, wall − device alone; minimum over
each shape's trials, as the fit takes the runtime), and what it is as a share of the short
calls (under 50 ms). A query's price carries the host part of the knots it is read from; the
query measured later carries its own.

Run: python benchmarks/host_share.py --store MODEL=STORE[#RUN] [--store ...] [--name host_share]
     (a store's newest run unless #RUN names one)
     e.g. --store llama-7b=docs/benchmarks/stores/heldout/llama-7b.store.sqlite
Writes docs/benchmarks/<name>.json and .md: the analysis's own device, date and commit, and
each store's run (device, commit, when it was profiled).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result

SHORT_S = 0.05  # calls shorter than this: where a fraction of a millisecond is a percent
STATS = ("median", "p10", "p90", "min", "max")
SHAPE = ["batch_size", "prompt_tokens", "output_tokens"]


def read_calls(store: Path, run_id: int | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """(one run of the store, the newest unless `run_id`: its id, model, device, commit,
    created_at and how many runs the store holds; its ok calls of points and validation, one
    row per call in the order measured, with wall, device and host parts in seconds). Raises
    SystemExit with one line where the store or the run is missing or records no device
    time."""
    if not store.is_file():
        raise SystemExit(f"host_share: {store}: no such store")
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        runs = db.execute(
            "select id, model, device, commit_sha, created_at from runs order by id"
        ).fetchall()
        if not runs:
            raise SystemExit(f"host_share: {store}: no run in this store")
        chosen = [r for r in runs if run_id is None or r[0] == run_id]
        if not chosen:
            ids = ", ".join(str(r[0]) for r in runs)
            raise SystemExit(f"host_share: {store}: no run {run_id} (its runs: {ids})")
        run = chosen[-1]
        frames = []
        for table in ("points", "validation"):
            frame = pd.read_sql(
                "select batch_size, prompt_tokens, output_tokens, trial, runtime_s, measured_at, "
                "extra_json "
                f"from {table} where run_id = ? and status = 'ok' and runtime_s is not null "
                "order by measured_at, trial",
                db,
                params=(run[0],),
            )
            frames.append(frame.assign(kind=table))
    calls = pd.concat(frames, ignore_index=True)  # an empty table's columns come as objects
    calls["runtime_s"] = calls["runtime_s"].astype(float)
    extra = [json.loads(text or "{}") for text in calls.pop("extra_json")]
    for key in ("device_s", "host_before_s", "host_after_s"):
        calls[key] = pd.to_numeric(pd.Series([e.get(key) for e in extra]), errors="coerce")
    calls = calls.dropna(subset=["device_s"])
    if calls.empty:
        raise SystemExit(f"host_share: {store}: run {run[0]} records no device time (an API?)")
    calls = calls.assign(
        host_s=calls.runtime_s - calls.device_s,
        launch_sync_s=calls.runtime_s - calls.device_s - calls.host_before_s - calls.host_after_s,
    )
    info = {
        "run_id": run[0], "runs_in_store": len(runs), "model": run[1], "device": run[2],
        "commit": run[3], "profiled_at": run[4],
    }  # fmt: skip
    return info, calls


def fastest(calls: pd.DataFrame) -> pd.DataFrame:
    """Each shape's call of least runtime (the trial the fit's runtime comes from)."""
    return calls.loc[calls.groupby(SHAPE)["runtime_s"].idxmin()]


def persistence(calls: pd.DataFrame) -> dict[str, Any]:
    """How alike a shape's trials are in wall − device against how it moves overall: the
    median over shapes of (most − least) over their trials (ms), and the correlation of
    consecutive calls' wall − device in the order measured."""
    spread = calls.groupby(SHAPE)["host_s"].agg(np.ptp)
    host = calls["host_s"].to_numpy()
    corr = float(np.corrcoef(host[:-1], host[1:])[0, 1]) if len(host) > 2 else None
    return {"trials_spread_median_ms": float(1e3 * spread.median()), "consecutive_corr": corr}


def summary(all_calls: pd.DataFrame) -> dict[str, Any]:
    """Over each shape's fastest call: milliseconds of wall − device and its parts (median,
    10th and 90th percentile, least, most) and, for calls under SHORT_S, wall − device as a
    share of the wall clock (%); with persistence() over every call."""
    if all_calls.empty:
        return {"shapes": 0}
    calls = fastest(all_calls)
    out: dict[str, Any] = {"shapes": len(calls), **persistence(all_calls)}
    for key in ("host_s", "host_before_s", "launch_sync_s", "host_after_s"):
        ms = 1e3 * calls[key].dropna().to_numpy()
        name = key.removesuffix("_s")
        if not len(ms):  # a store from before 7f60083: no host parts, wall − device only
            out.update({f"{name}_{stat}_ms": None for stat in STATS})
            continue
        out[f"{name}_median_ms"] = float(np.median(ms))
        out[f"{name}_p10_ms"] = float(np.percentile(ms, 10))
        out[f"{name}_p90_ms"] = float(np.percentile(ms, 90))
        out[f"{name}_min_ms"] = float(ms.min())
        out[f"{name}_max_ms"] = float(ms.max())
    short = calls[calls.runtime_s < SHORT_S]
    share = 100 * short.host_s / short.runtime_s
    out["short_calls"] = len(short)
    out["short_host_share_median_pct"] = float(share.median()) if len(short) else None
    out["short_host_share_max_pct"] = float(share.max()) if len(short) else None
    return out


def store_arg(item: str) -> tuple[str, Path, int | None]:
    """MODEL=PATH[#RUN] -> (label, store path, run id or None for the newest)."""
    label, sep, where = item.partition("=")
    path, hash_, run = where.partition("#")
    if not sep or not label or not path or (hash_ and not run.isdigit()):
        raise argparse.ArgumentTypeError(f"{item!r}: give MODEL=PATH or MODEL=PATH#RUN")
    return label, Path(path), int(run) if hash_ else None


def table_rows(label: str, kind: str, part: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The Markdown rows of one run's points or validation."""
    if not part["shapes"]:
        return [(f"{label}, {kind}", "none in this run", "")]
    parts = (
        f" (before {part['host_before_median_ms']:.2f}, launch and sync "
        f"{part['launch_sync_median_ms']:.2f}, after {part['host_after_median_ms']:.2f}, medians)"
        if part["host_before_median_ms"] is not None
        else " (no host parts recorded: a store from before 7f60083)"
    )
    corr = part["consecutive_corr"]
    rows = [(
        f"{label}, {kind} ({part['shapes']} shapes): wall − device, ms",
        f"median {part['host_median_ms']:.2f}, 10-90 % {part['host_p10_ms']:.2f}-"
        f"{part['host_p90_ms']:.2f}, range {part['host_min_ms']:.2f}-"
        f"{part['host_max_ms']:.2f}{parts}; a shape's trials {part['trials_spread_median_ms']:.2f}"
        " apart (median)"
        + ("" if corr is None else f", consecutive calls correlated at {corr:.2f}"),
        "",
    )]  # fmt: skip
    if part["short_calls"]:
        rows.append((
            f"{label}, {kind}: calls under {1e3 * SHORT_S:.0f} ms ({part['short_calls']})",
            f"wall − device {part['short_host_share_median_pct']:.1f} % of the wall clock "
            f"(median), at most {part['short_host_share_max_pct']:.1f} %",
            "",
        ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", action="append", required=True, type=store_arg,
        help="MODEL=PATH of a profile's store (its newest run), or MODEL=PATH#RUN",
    )  # fmt: skip
    parser.add_argument("--name", default="host_share")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    models, rows = [], []
    for label, path, run_id in args.store:
        info, calls = read_calls(path, run_id)
        entry: dict[str, Any] = {"label": label, "store": str(path), **info}
        rows.append((
            f"{label}: profiled",
            f"{info['device']}, {info['profiled_at']}, commit {info['commit']} (run "
            f"{info['run_id']} of {info['runs_in_store']} in its store)",
            "",
        ))  # fmt: skip
        for kind in ("points", "validation"):
            part = summary(calls[calls.kind == kind])
            entry[kind] = part
            rows += table_rows(label, kind, part)
        models.append(entry)
    path = write_result(args.name, {"short_s": SHORT_S, "models": models}, rows, args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
