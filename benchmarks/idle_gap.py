"""How much faster does a short query run when the GPU sat idle before it?

The profile prices a query at its time back to back (README: Energy), as a script timing
queries in a loop or a busy server sees it. At a card's power limit a prefill-heavy query
runs at a clock that follows the recent load, so one sent after an idle gap can run faster.
For each (p, o) and each gap g, on the engine (the stack `infermeter profile` uses), one
process: 1 s (--load-s) of the query back to back, then g seconds idle, then ONE call timed
(the wall clock around the whole generate call, as a user's script times it), and the card's
SM clock and power read right after it (NVML). `back_to_back_s` is the median of the last 5 calls of
that second of load. Each (shape, gap) is repeated --reps times, the gaps in a new random
order each time; the figures are medians over the repeats.

Run: python benchmarks/idle_gap.py [--model llama-7b] [--shapes 336x1,1093x1,1505x1,1505x5,737x32]
         [--gaps 0,0.15,0.5,2,8] [--reps 3] [--load-s 1] [--name NAME] [--device cuda]
Writes docs/benchmarks/idle_gap_<model>.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from _timing import generate_timer, prepared_backend

LOAD_S = 1.0  # back-to-back work before each gap (--load-s)
LAST_CALLS = 5  # the back-to-back time: median of this many last calls of that load


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'336x1,1505x5' -> [(336, 1), (1505, 5)]: prompt tokens x output tokens."""
    shapes = []
    for item in text.split(","):
        p, o = item.lower().split("x")
        shapes.append((int(p), int(o)))
    return shapes


def nvml_reader() -> Any:
    """A function giving (SM clock MHz, power W) of GPU 0 now; (None, None) without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no NVML here: the times alone
        return lambda: (None, None)

    def read() -> tuple[int, float]:
        clock = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        return clock, pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0

    return read


def summary(runs: list[dict[str, Any]], shapes: list[tuple[int, int]], gaps: list[float]) -> list:
    """Per (shape, gap): medians over the repeats, and the isolated call against back to back."""
    out = []
    for p, o in shapes:
        for gap in gaps:
            mine = [r for r in runs if (r["prompt_tokens"], r["output_tokens"], r["gap_s"])
                    == (p, o, gap)]  # fmt: skip
            after = float(np.median([r["after_gap_s"] for r in mine]))
            back = float(np.median([r["back_to_back_s"] for r in mine]))
            clocks = [r["sm_clock_after_mhz"] for r in mine if r["sm_clock_after_mhz"]]
            out.append({
                "prompt_tokens": p, "output_tokens": o, "gap_s": gap, "repeats": len(mine),
                "after_gap_s": after, "back_to_back_s": back,
                "after_gap_vs_back_to_back_pct": 100 * (after / back - 1),
                "sm_clock_after_mhz": float(np.median(clocks)) if clocks else None,
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--shapes", default="336x1,1093x1,1505x1,1505x5,737x32")
    parser.add_argument("--gaps", default="0,0.15,0.5,2,8", help="idle seconds, g,...")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the script")
    parser.add_argument("--load-s", type=float, default=LOAD_S, help="back to back before a gap")
    parser.add_argument("--name", default=None, help="record name (default idle_gap_<model>)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    shapes, gaps = parse_shapes(args.shapes), [float(g) for g in args.gaps.split(",")]

    spec, backend = prepared_backend(args.model, args.device)
    call = generate_timer(backend._engine, args.device)
    read = nvml_reader()
    rng = np.random.default_rng(11)
    prompts = {p: rng.integers(0, spec.vocab_size, p).tolist() for p, _ in shapes}
    started = time.perf_counter()
    while time.perf_counter() - started < 8:  # every shape's graphs made, the card warm
        for p, o in shapes:
            call(prompts[p], o)
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for p, o in shapes:
            for gap in rng.permutation(gaps).tolist():
                times = []
                start = time.perf_counter()
                while time.perf_counter() - start < args.load_s:
                    times.append(call(prompts[p], o))
                time.sleep(gap)
                after = call(prompts[p], o)
                clock, power = read()
                runs.append({
                    "rep": rep, "prompt_tokens": p, "output_tokens": o, "gap_s": gap,
                    "after_gap_s": after,
                    "back_to_back_s": float(np.median(times[-LAST_CALLS:])),
                    "sm_clock_after_mhz": clock, "power_after_w": power,
                })  # fmt: skip
                print(f"rep {rep} p={p} o={o} gap {gap:g} s: {1e3 * after:.2f} ms after, "
                      f"{1e3 * runs[-1]['back_to_back_s']:.2f} back to back, {clock} MHz",
                      flush=True)  # fmt: skip
    backend.close()
    shaped = summary(runs, shapes, gaps)
    rows = [
        (
            f"p = {s['prompt_tokens']}, o = {s['output_tokens']}, idle {s['gap_s']:g} s: one "
            "call after the idle vs back to back",
            f"{1e3 * s['after_gap_s']:.2f} vs {1e3 * s['back_to_back_s']:.2f} ms "
            f"({s['after_gap_vs_back_to_back_pct']:+.1f} %), SM clock after "
            f"{s['sm_clock_after_mhz']} MHz",
            "-",
        )
        for s in shaped
    ]
    result = {"model": args.model, "reps": args.reps, "load_s": args.load_s, "shapes": shaped,
              "runs": runs}  # fmt: skip
    write_result(args.name or f"idle_gap_{args.model}", result, rows, args.out)


if __name__ == "__main__":
    main()
