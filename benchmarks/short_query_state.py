"""Does a short query take as long in the profile's conditions as in a user's process?

At a card's power limit the clock follows the recent load, so a 1-3 token query's time depends
on what ran just before it. For each (p, o), one after the other in one process (the engine,
the stack `infermeter profile` uses), the minimum of 3 wall-clock trials of the whole call:

- `profile`: measure_point as the profile runs it (meter sampling every 0.1 s, an energy
  window of >= 1 s, its untimed pre-roll, fresh random prompts);
- `user`: as heldout_bench times a query: the sampler stopped, a short idle (0.15 s here; in
  heldout_bench the wait for the NVML counter's next step and the query's setup), one
  untimed call, then 3 trials back to back of one fixed prompt (then 1 s of it back to back,
  as its energy window does);
- `sustained`: measure_point without a window (no pre-roll) right after that second of load.

The three ways run in that order for every shape. It also gives the first decode step each
way, D(p, 2) = t(p, 2) − t(p, 1) (`first_steps`), a difference of two medians over --reps.
(The LLaMA-13B record of 3b91f5a, written before that key, has those rows inside `shapes`,
as first_step_<way>_s.)

Run: python benchmarks/short_query_state.py [--model llama-13b] [--prompts 336,954,1093,1505]
         [--reps 2]
Writes docs/benchmarks/short_query_state_<model>.json and .md with device, date and commit.
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
from _timing import generate_timer
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.experiments.profile import measure_point
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec

WAYS = ("profile", "user", "sustained")
OUTPUTS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-13b")
    parser.add_argument("--prompts", default="336,954,1093,1505", help="prompt sizes, p,...")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()

    spec = get_spec(args.model)
    sizes = [int(p) for p in args.prompts.split(",")]
    backend = get_backend("engine", device="cuda")
    backend.prepare(spec)
    engine = backend._engine
    meter = Meter.for_device("cuda", 1, interval_s=0.1)
    meter.measure_idle(1.0)
    started = time.perf_counter()
    while time.perf_counter() - started < 8:  # the card warm, as after a profile's warm-up
        backend.measure(Point(1024, 64, 1, 0))
    rng = np.random.default_rng(7)

    call = generate_timer(engine, "cuda")

    def user(p: int, o: int) -> list[float]:
        prompt = rng.integers(0, spec.vocab_size, p).tolist()
        call(prompt, o)
        trials = [call(prompt, o) for _ in range(3)]
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:
            call(prompt, o)
        return trials

    def timed(shape: Point, with_meter: bool) -> list[float]:
        measured = measure_point(backend, shape, [0, 1, 2], meter if with_meter else None, 1.0)
        return [m.runtime_s for _, m in measured]

    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for p in sizes:
            for o in OUTPUTS:
                shape = Point(p, o, 1, 0)
                meter.start()
                profile = timed(shape, True)
                meter.stop()
                time.sleep(0.15)
                row = {"rep": rep, "prompt_tokens": p, "output_tokens": o,
                       "profile_s": profile, "user_s": user(p, o),
                       "sustained_s": timed(shape, False)}  # fmt: skip
                shown = {k: round(1e3 * min(v), 2) for k, v in row.items() if k.endswith("_s")}
                print(f"p = {p}, o = {o}, rep {rep}: {shown} ms", flush=True)
                runs.append(row)
    backend.close()
    rows, shapes, first_steps = [], [], []
    for p in sizes:
        best = {
            (way, o): float(np.median([min(r[f"{way}_s"]) for r in runs
                                       if (r["prompt_tokens"], r["output_tokens"]) == (p, o)]))
            for way in WAYS for o in OUTPUTS
        }  # fmt: skip
        for o in OUTPUTS:
            user_s = best[("user", o)]
            entry = {"prompt_tokens": p, "output_tokens": o,
                     **{f"{way}_s": best[(way, o)] for way in WAYS},
                     **{f"{way}_over_user_pct": 100 * (best[(way, o)] / user_s - 1)
                        for way in ("profile", "sustained")}}  # fmt: skip
            shapes.append(entry)
            rows.append((
                f"p = {p}, o = {o}: time (ms), median over {args.reps} of the minimum of 3",
                f"profile {1e3 * best[('profile', o)]:.2f}, user {1e3 * user_s:.2f}, sustained "
                f"{1e3 * best[('sustained', o)]:.2f} (profile {entry['profile_over_user_pct']:+.1f}"
                f" %, sustained {entry['sustained_over_user_pct']:+.1f} % over user)", "-",
            ))  # fmt: skip
        first = {way: best[(way, 2)] - best[(way, 1)] for way in WAYS}
        first_steps.append({"prompt_tokens": p, **{f"{way}_s": v for way, v in first.items()}})
        rows.append((
            f"p = {p}: first decode step D(p, 2) = t(p, 2) - t(p, 1) (ms)",
            ", ".join(f"{way} {1e3 * v:.2f}" for way, v in first.items()), "-",
        ))  # fmt: skip
    result = {"model": args.model, "reps": args.reps, "shapes": shapes,
              "first_steps": first_steps, "runs": runs}  # fmt: skip
    write_result(f"short_query_state_{args.model}", result, rows, args.out)


if __name__ == "__main__":
    main()
