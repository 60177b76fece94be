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

Run: python benchmarks/host_share.py --store MODEL=STORE [--store MODEL=STORE ...]
         [--name host_share]
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


def read_calls(store: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the store's first run: model, device, commit, created_at; its ok calls of points and
    validation, one row per shape at the trial of least runtime, with wall, device, host
    parts in seconds). Raises SystemExit with one line where the store lacks them."""
    if not store.is_file():
        raise SystemExit(f"host_share: {store}: no such store")
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        run = db.execute("select model, device, commit_sha, created_at from runs").fetchone()
        if run is None:
            raise SystemExit(f"host_share: {store}: no run in this store")
        frames = []
        for table in ("points", "validation"):
            frame = pd.read_sql(
                f"select prompt_tokens, output_tokens, trial, runtime_s, extra_json from {table} "
                "where status = 'ok' and runtime_s is not null",
                db,
            )
            frames.append(frame.assign(kind=table))
    calls = pd.concat(frames, ignore_index=True)
    extra = [json.loads(text or "{}") for text in calls.pop("extra_json")]
    for key in ("device_s", "host_before_s", "host_after_s"):
        calls[key] = [e.get(key) for e in extra]
    calls = calls.dropna(subset=["device_s"])
    if calls.empty:
        raise SystemExit(f"host_share: {store}: its calls record no device time (not the engine?)")
    fastest = calls.loc[
        calls.groupby(["kind", "prompt_tokens", "output_tokens"])["runtime_s"].idxmin()
    ]
    fastest = fastest.assign(
        host_s=fastest.runtime_s - fastest.device_s,
        launch_sync_s=fastest.runtime_s
        - fastest.device_s
        - fastest.host_before_s
        - fastest.host_after_s,
    )
    info = {"model": run[0], "device": run[1], "commit": run[2], "profiled_at": run[3]}
    return info, fastest


def summary(calls: pd.DataFrame) -> dict[str, Any]:
    """Milliseconds of wall − device and its parts (median, 10th and 90th percentile, least,
    most) and, for calls under SHORT_S, wall − device as a share of the wall clock (%)."""
    out: dict[str, Any] = {"shapes": len(calls)}
    for key in ("host_s", "host_before_s", "launch_sync_s", "host_after_s"):
        ms = 1e3 * calls[key].dropna().to_numpy()
        name = key.removesuffix("_s")
        if not len(ms):  # a store from before 7f60083: no host parts, wall − device only
            out.update(
                {f"{name}_{stat}_ms": None for stat in ("median", "p10", "p90", "min", "max")}
            )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", action="append", required=True, help="MODEL=PATH of a profile's store"
    )
    parser.add_argument("--name", default="host_share")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    models, rows = [], []
    for item in args.store:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--store {item!r}: give MODEL=PATH")
        info, calls = read_calls(Path(path))
        entry: dict[str, Any] = {"label": label, "store": path, **info}
        rows.append((f"{label}: profiled", f"{info['device']}, {info['profiled_at']}, "
                     f"commit {info['commit']}", ""))  # fmt: skip
        for kind in ("points", "validation"):
            part = summary(calls[calls.kind == kind])
            entry[kind] = part
            parts = (
                f" (before {part['host_before_median_ms']:.2f}, launch and sync "
                f"{part['launch_sync_median_ms']:.2f}, after {part['host_after_median_ms']:.2f}, "
                "medians)"
                if part["host_before_median_ms"] is not None
                else " (no host parts recorded: a store from before 7f60083)"
            )
            rows.append((
                f"{label}, {kind} ({part['shapes']} shapes): wall − device, ms",
                f"median {part['host_median_ms']:.2f}, 10-90 % {part['host_p10_ms']:.2f}-"
                f"{part['host_p90_ms']:.2f}, range {part['host_min_ms']:.2f}-"
                f"{part['host_max_ms']:.2f}{parts}",
                "",
            ))  # fmt: skip
            if part["short_calls"]:
                rows.append((
                    f"{label}, {kind}: calls under {1e3 * SHORT_S:.0f} ms "
                    f"({part['short_calls']})",
                    f"wall − device {part['short_host_share_median_pct']:.1f} % of the wall "
                    f"clock (median), at most {part['short_host_share_max_pct']:.1f} %",
                    "",
                ))  # fmt: skip
        models.append(entry)
    path = write_result(args.name, {"short_s": SHORT_S, "models": models}, rows, args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
