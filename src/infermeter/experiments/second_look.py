"""A second look at grid points whose measurement contradicts their neighbours.

A GPU at its power limit runs a compute-bound prefill at a clock that depends on its recent
history and temperature, so one point's trials can all be slow. Measured on an H200 (LLaMA-7B,
a default profile at 42b47d9, then benchmarks/window_diagnosis.py): the o = 1 point at p = 737
took 19.22 ms in the profile and 17.8-18.1 ms in two later measurements of the same kind. The
decode curve's first step, D(737, 2) = t(737, 2) − t(737, 1), then came out at 2.58 ms against
4.03 ms for each later step, though the first step after a prompt is never the cheapest, and
every 2-5 token query between the curves was priced 1-5% low (held-out errors up to -5.2%).

After the grid, `suspects` names the points to measure again:
- a curve's o = 1 and first decode length when its first decode step costs less than
  FIRST_STEP_SHARE of the steps after it (each with the curve's point at that length);
- a PE knot (o = 1) more than KNOT_EXCESS above the straight line between its neighbours.
Each is measured once more with as many trials again (trial numbers after the grid's), and
the fit takes the minimum over all of them (runtime) or the median (energy), as for any
point. A point measured again is never suspected twice, so a resumed profile does not repeat
the look.
"""

from __future__ import annotations

import pandas as pd

from infermeter.backends.base import Point
from infermeter.model.decode import FIRST_STEP_SHARE
from infermeter.store.extra import succeeded

# A PE knot this much above its neighbours' line (LLaMA-7B on an H200: the prefill time's own
# roughness from one prompt size to the next is 1.7% (std), docs/benchmarks/bias_diagnosis.md).
KNOT_EXCESS = 0.04


def suspects(points: pd.DataFrame, curve_sizes: tuple[int, ...], trials: int) -> list[Point]:
    """The grid shapes (trial 0, batch 1 or the grid's) to measure again, from `points` (the
    store's rows: prompt_tokens, output_tokens, batch_size, trial, runtime_s, status) of a grid
    with decode curves at `curve_sizes` and `trials` trials per point. Shapes already measured
    with more than `trials` trials are left out."""
    ok = succeeded(points)
    if ok.empty:
        return []
    keys = ["batch_size", "prompt_tokens", "output_tokens"]
    fastest = ok.groupby(keys)["runtime_s"].min()
    counts = ok.groupby(keys)["trial"].max()
    wanted: list[tuple[int, int, int]] = []
    for batch in sorted(ok["batch_size"].unique()):
        times = fastest.loc[batch]
        for p in curve_sizes:
            if p not in times.index.get_level_values(0):
                continue
            curve = times.loc[p].sort_index()
            outputs = [int(o) for o in curve.index]
            if len(outputs) < 3 or outputs[0] != 1:
                continue
            o1, o2 = outputs[1], outputs[2]
            first = (curve[o1] - curve[1]) / (o1 - 1)
            later = (curve[o2] - curve[o1]) / (o2 - o1)
            if later > 0 and first < FIRST_STEP_SHARE * later:
                wanted += [(int(batch), p, 1), (int(batch), p, o1)]
        knots = times.xs(1, level="output_tokens").sort_index()
        sizes = [int(p) for p in knots.index]
        for before, here, after in zip(sizes, sizes[1:], sizes[2:], strict=False):
            share = (here - before) / (after - before)
            line = knots[before] + share * (knots[after] - knots[before])
            if knots[here] > (1 + KNOT_EXCESS) * line:
                wanted.append((int(batch), here, 1))
    fresh = []
    for batch, p, o in dict.fromkeys(wanted):
        if counts.get((batch, p, o), 0) < trials:  # not measured again yet
            fresh.append(Point(p, o, batch, 0))
    return fresh
