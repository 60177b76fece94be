"""Why do profiles price short queries and energy low? The candidate causes, measured.

Issue 15 found a profile's estimates a few percent low on short-output queries and its energy
~7% low against sustained work. This script measures each candidate cause on one GPU, for a
model on the engine, so the method can be fixed where the bias comes from:

1. runtime_s as stored (CUDA events around prefill and decode) against the wall clock of the
   whole generate() call a user times (token ids in, token ids back on the host);
2. PE(p) at o = 1 for dense p (every 16 tokens and both sides of every multiple of 64), over
   the whole context: steps between and beyond the default knots;
3. t(p, o) for o = 1 .. 320 at three prompt sizes: per-step decode cost against context, and
   the o = 1 point against the per-p line's intercept;
4. energy per query three ways: the profile's window (measure_point; until 42b47d9 an isolated
   window of at least 0.5 s, now the point's trials and further runs for at least 1 s), the counter
   over >= 1 s of the query back to back (what a user measures), and the slope of the counter
   over >= 2 s of back-to-back runs after a pre-roll (insensitive to counter lag);
5. whether PE(p)'s roughness from one prompt size to the next is the shape's or noise: the
   dense sweep twice, in opposite orders, each p first run back to back for 0.3 s (clocks up)
   and then timed as a user times it (wall clock of the whole call, minimum of 3).

Run: python benchmarks/bias_diagnosis.py [--model llama-7b] [--quick]
Writes docs/benchmarks/bias_diagnosis.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, read_record, write_record, write_result
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.experiments.profile import measure_point
from infermeter.measure.meter import Meter, load_nvml
from infermeter.spec.catalog import get_spec
from infermeter.store.provenance import git_commit


def line(text: str) -> None:
    print(text, flush=True)


def wall_vs_timed(backend: Any, shapes: list[tuple[int, int]], runs: int) -> list[dict]:
    """Minimum over `runs` of the whole generate() call and of the timed region, per shape."""
    engine = backend._engine
    out = []
    rng = np.random.default_rng(0)
    for p, o in shapes:
        walls, timed = [], []
        for _ in range(runs):
            prompt = rng.integers(0, backend.spec.vocab_size, p).tolist()
            start = time.perf_counter()
            generation = engine.generate([prompt], o)
            walls.append(time.perf_counter() - start)
            timed.append(generation.prefill_s + generation.decode_s + _first_s(generation))
        row = {
            "prompt_tokens": p,
            "output_tokens": o,
            "wall_s": min(walls),
            "timed_s": min(timed),
            "measure_s": min(backend.measure(Point(p, o, 1, i)).runtime_s for i in range(runs)),
        }
        row["wall_over_timed_ms"] = 1e3 * (row["wall_s"] - row["timed_s"])
        row["wall_over_measure_pct"] = 100 * (row["wall_s"] / row["measure_s"] - 1)
        line(f"  wall vs timed {p=} {o=}: {row}")
        out.append(row)
    return out


def _first_s(generation: Any) -> float:
    return generation.ttft_s - generation.prefill_s


def runtime_grid(backend: Any, shapes: list[tuple[int, int]], runs: int) -> list[dict]:
    rows = []
    for p, o in shapes:
        best = min(backend.measure(Point(p, o, 1, i)).runtime_s for i in range(runs))
        rows.append({"prompt_tokens": p, "output_tokens": o, "runtime_s": best})
    return rows


def pe_repeatability(
    backend: Any, prompts: list[int], runs: int, knots_at: set[int]
) -> dict[str, Any]:
    """Two sweeps of PE(p) (wall clock, min of `runs`, after 0.3 s of the shape back to back)
    in opposite orders; their agreement says how much of PE's roughness is noise."""
    engine = backend._engine
    rng = np.random.default_rng(2)

    def one(p: int) -> float:
        prompt = rng.integers(0, backend.spec.vocab_size, p).tolist()
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            engine.generate([prompt], 1)
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            engine.generate([prompt], 1)
            walls.append(time.perf_counter() - start)
        return min(walls)

    first = {p: one(p) for p in prompts}
    second = {p: one(p) for p in reversed(prompts)}
    return sweep_summary(
        prompts, [first[p] for p in prompts], [second[p] for p in prompts], knots_at
    )


def sweep_summary(
    prompts: list[int], first_s: list[float], second_s: list[float], knots_at: set[int]
) -> dict[str, Any]:
    """The two sweeps, their difference, PE's roughness and the knots' interpolation error."""
    a, b = np.array(first_s), np.array(second_s)
    diff = 100 * (b / a - 1)
    # Roughness: each point against the mean of its two neighbours, in each sweep, where the
    # three sizes are equally spaced (a gap between two ranges is not a neighbour).
    sizes = np.array(prompts)
    inner = np.flatnonzero(sizes[1:-1] - sizes[:-2] == sizes[2:] - sizes[1:-1]) + 1
    rough_a = 100 * (a[inner] / ((a[inner - 1] + a[inner + 1]) / 2) - 1)
    rough_b = 100 * (b[inner] / ((b[inner - 1] + b[inner + 1]) / 2) - 1)
    return {
        "prompt_tokens": list(prompts),
        "first_s": a.tolist(),
        "second_s": b.tolist(),
        "sweep_difference_std_pct": float(np.std(diff)),
        "roughness_std_pct": float(np.std(np.concatenate([rough_a, rough_b]))),
        "roughness_correlation": float(np.corrcoef(rough_a, rough_b)[0, 1]),
        **parity(sizes, np.minimum(a, b)),
        **knot_interpolation(sizes, np.minimum(a, b), knots_at),
        **knot_spacing(sizes, a, b),
    }


def parity(sizes: np.ndarray, pe_s: np.ndarray) -> dict[str, Any]:
    """PE at each odd prompt size against the mean of its two even neighbours (where the sweep
    has all three): whether a kernel's speed depends on the alignment of p."""
    at = {int(p): float(t) for p, t in zip(sizes, pe_s, strict=True)}
    odd = [p for p in at if p % 2 and p - 1 in at and p + 1 in at]
    if not odd:
        return {}
    ratio = [100 * (at[p] / ((at[p - 1] + at[p + 1]) / 2) - 1) for p in odd]
    return {"odd_over_even_neighbours_pct": float(np.mean(ratio)), "odd_sizes": len(odd)}


# A gap in a sweep: consecutive sizes more than GAP_FACTOR times both the sweep's median
# spacing and the smaller of their neighbouring spacings apart.
GAP_FACTOR = 3
# Knot spacings knot_spacing tries (tokens), and the error a query may have (issue 15's max).
KNOT_SPACINGS = (128, 64, 32, 16, 8)
OFF_BY_PCT = 3.0


def _segments(sizes: np.ndarray) -> list[np.ndarray]:
    """The sweep's stretches without a gap (indices of two or more sizes each). A gap: two
    consecutive sizes more than GAP_FACTOR times the sweep's median spacing apart and more
    than GAP_FACTOR times the smaller spacing beside them (so 449-641:4,737-1121:16 is two
    stretches, 449-641:4,645-1121:12 and 449-641:16,511-513:1 one each). A lone size between
    two gaps is in none; where the spacing grows over GAP_FACTOR-fold at once, the pair at the
    change is read as a gap."""
    if len(sizes) < 2:
        return []
    spacing = np.diff(sizes)
    beside = np.minimum(np.r_[np.inf, spacing[:-1]], np.r_[spacing[1:], np.inf])
    gap = (spacing > GAP_FACTOR * np.median(spacing)) & (spacing > GAP_FACTOR * beside)
    cuts = np.flatnonzero(gap) + 1
    return [run for run in np.split(np.arange(len(sizes)), cuts) if len(run) >= 2]


def knot_interpolation(sizes: np.ndarray, pe_s: np.ndarray, knots_at: set[int]) -> dict[str, Any]:
    """How far straight lines between the profile's knots (`knots_at`: the default GPU grid's
    prompt sizes) run from PE measured between them, and the steps (a rise of more than 2 %
    from one size to the next within a stretch of the sweep, _segments: never across a gap)."""
    knots = np.isin(sizes, sorted(knots_at))
    if knots.sum() < 2:
        return {}
    between = ~knots & (sizes > sizes[knots].min()) & (sizes < sizes[knots].max())
    if not between.any():
        return {}
    line = np.interp(sizes[between], sizes[knots], pe_s[knots])
    error = 100 * (line / pe_s[between] - 1)
    rise = 100 * (pe_s[1:] / pe_s[:-1] - 1)
    neighbours = np.zeros(len(rise), dtype=bool)
    for run in _segments(sizes):
        neighbours[run[:-1]] = True
    return {
        "knots_in_sweep": [int(p) for p in sizes[knots]],
        "knot_interpolation_mape_pct": float(np.mean(np.abs(error))),
        "knot_interpolation_max_error_pct": float(error[np.argmax(np.abs(error))]),
        "knot_interpolation_bias_pct": float(np.mean(error)),
        "steps": [
            {"after_prompt_tokens": int(sizes[i]), "rise_pct": float(rise[i])}
            for i in np.flatnonzero((rise > 2) & neighbours)
        ],
    }


def knot_spacing(sizes: np.ndarray, first_s: np.ndarray, second_s: np.ndarray) -> dict[str, Any]:
    """Would closer knots price PE to OFF_BY_PCT? For each spacing of KNOT_SPACINGS and each
    placement of knots that many tokens apart (a placement: the knots' p mod spacing, the same
    in every equally spaced stretch of the sweep, _segments; a stretch with uneven spacing, or
    whose spacing does not divide the knots', is skipped): the knots' PE read from one sweep,
    and straight lines between them priced against the other sweep at every size strictly
    between a stretch's first and last knot that is no knot, both ways round. A profile's knots
    carry their own noise, so they are not read from the sweep they price. Pooled over
    placements and both ways (`prices`: how many), with each placement's share off by more
    than OFF_BY_PCT (the least and the most): how much where the knots fall matters."""
    rows = []
    for spacing in KNOT_SPACINGS:
        by_phase: dict[int, list[np.ndarray]] = {}
        sizes_between: set[int] = set()
        for run in _segments(sizes):
            at = sizes[run]
            steps = np.diff(at)
            if np.any(steps != steps[0]) or spacing % steps[0]:
                continue
            every = spacing // int(steps[0])
            for offset in range(every):
                picked = np.arange(offset, len(run), every)
                if len(picked) < 2:
                    continue
                inside = np.setdiff1d(np.arange(picked[0], picked[-1] + 1), picked)
                if not inside.size:
                    continue
                phase = by_phase.setdefault(int(at[picked[0]]) % spacing, [])
                for known, truth in ((first_s[run], second_s[run]), (second_s[run], first_s[run])):
                    line = np.interp(at[inside], at[picked], known[picked])
                    phase.append(100 * (line / truth[inside] - 1))
                sizes_between.update(int(p) for p in at[inside])
        if not by_phase:
            continue
        error = np.concatenate([e for errors in by_phase.values() for e in errors])
        shares = [
            float(100 * np.mean(np.abs(np.concatenate(errors)) > OFF_BY_PCT))
            for errors in by_phase.values()
        ]
        rows.append({
            "spacing_tokens": spacing,
            "placements": len(by_phase),
            "sizes_between": len(sizes_between),
            "prices": int(error.size),
            "mape_pct": float(np.mean(np.abs(error))),
            "max_error_pct": float(error[np.argmax(np.abs(error))]),
            "share_off_by_more_pct": float(100 * np.mean(np.abs(error) > OFF_BY_PCT)),
            "share_least_pct": min(shares),
            "share_most_pct": max(shares),
        })  # fmt: skip
    return {"knot_spacing": rows, "off_by_pct": OFF_BY_PCT} if rows else {}


def counter_j(nvml: Any, handles: list[Any]) -> float:
    return sum(nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1e3


def energy_three_ways(backend: Any, meter: Meter, shapes: list[tuple[int, int]]) -> list[dict]:
    nvml, _ = load_nvml()
    handles = [nvml.nvmlDeviceGetHandleByIndex(g) for g in meter.gpus]
    engine = backend._engine
    rng = np.random.default_rng(1)
    rows = []
    for p, o in shapes:
        prompt = rng.integers(0, backend.spec.vocab_size, p).tolist()
        engine.generate([prompt], o)  # warm this shape
        # (a) the profile's way: the point's trials and further runs in one window >= 1 s
        isolated = []
        for _ in range(2):
            (_, m), *_ = measure_point(backend, Point(p, o, 1, 0), [0, 1, 2], meter, 1.0)
            isolated.append(m.energy_j)
            time.sleep(0.2)
        # (b) the user's reference: the counter over >= 1 s of the query back to back
        meter.begin("ref")
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < 1.0:
            engine.generate([prompt], o)
            runs += 1
        window = meter.end("ref")
        reference = window.total_j / runs
        integrated = (window.integrated_j or float("nan")) / runs
        time.sleep(0.2)
        # (c) slope of the counter over >= 2 s of back-to-back runs after a 0.3 s pre-roll
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            engine.generate([prompt], o)
        stamps, values, n = [], [], 0
        first = time.perf_counter()
        stamps.append(first)
        values.append(counter_j(nvml, handles))
        while time.perf_counter() - first < 2.0:
            engine.generate([prompt], o)
            n += 1
            stamps.append(time.perf_counter())
            values.append(counter_j(nvml, handles))
        slope_w = float(np.polyfit(np.array(stamps) - first, np.array(values), 1)[0])
        period_s = (stamps[-1] - first) / n
        sustained = slope_w * period_s
        row = {
            "prompt_tokens": p,
            "output_tokens": o,
            "isolated_j": float(np.median(isolated)),
            "reference_j": reference,
            "reference_integrated_j": integrated,
            "sustained_slope_j": sustained,
            "sustained_power_w": slope_w,
            "period_s": period_s,
            "isolated_vs_reference_pct": 100 * (np.median(isolated) / reference - 1),
            "slope_vs_reference_pct": 100 * (sustained / reference - 1),
        }
        line(f"  energy {p=} {o=}: {row}")
        rows.append(row)
        time.sleep(0.2)
    return rows


def grid_knots(spec: Any) -> set[int]:
    """The prompt sizes `infermeter profile` measures PE at on a GPU for `spec` (curves and
    knots of experiments.profile.default_grid)."""
    from infermeter.experiments.profile import default_grid

    grid = default_grid(spec, on_gpu=True)
    return grid.profiled_sizes


def parse_ranges(text: str) -> list[int]:
    """'320-352:2,865-1001:4' -> the prompt sizes of those ranges (ends included), sorted."""
    sizes: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition(":")
        start, _, end = span.partition("-")
        sizes |= set(range(int(start), int(end or start) + 1, int(step or 1)))
    return sorted(sizes)


def table(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows of the parts `result` measured."""
    rows = []
    if result.get("wall_vs_timed"):
        rows.append(("wall clock over timed region (mean)",
                     f"{result['mean_wall_over_timed_ms']:.3f} ms", "-"))  # fmt: skip
    if result.get("energy"):
        rows += [
            ("isolated-window energy vs >= 1 s back to back",
             f"{result['mean_isolated_vs_reference_pct']:.2f} %", "-"),
            ("counter-slope energy vs >= 1 s back to back",
             f"{result['mean_slope_vs_reference_pct']:.2f} %", "-"),
        ]  # fmt: skip
    if result.get("pe_dense"):
        rows.append(("prompt sizes in the dense PE sweep", str(len(result["pe_dense"])), "-"))
    repeat = result.get("pe_repeatability") or {}
    if repeat:
        sizes = repeat["prompt_tokens"]
        rows += [
            ("PE sweeps: prompt sizes", f"{len(sizes)} ({min(sizes)}-{max(sizes)})", "-"),
            ("PE sweep-to-sweep std", f"{repeat['sweep_difference_std_pct']:.2f} %", "-"),
            ("PE roughness std (point vs neighbours)",
             f"{repeat['roughness_std_pct']:.2f} %", "-"),
            ("roughness correlation between sweeps",
             f"{repeat['roughness_correlation']:.2f}", "-"),
        ]  # fmt: skip
    if repeat.get("odd_sizes"):
        rows.append((f"PE at an odd p over its even neighbours' mean ({repeat['odd_sizes']} odd "
                     "sizes, min of the two sweeps)",
                     f"{repeat['odd_over_even_neighbours_pct']:+.2f} %", "-"))  # fmt: skip
    if repeat.get("knots_in_sweep"):
        steps = ", ".join(f"{s['after_prompt_tokens']} (+{s['rise_pct']:.1f} %)"
                          for s in repeat["steps"])  # fmt: skip
        rows += [
            (f"lines between the default grid's knots {repeat['knots_in_sweep']} against PE "
             "between them: MAPE / max / mean",
             f"{repeat['knot_interpolation_mape_pct']:.2f} / "
             f"{repeat['knot_interpolation_max_error_pct']:+.2f} / "
             f"{repeat['knot_interpolation_bias_pct']:+.2f} %", "-"),
            ("steps in PE (a rise of over 2 % from one size to the next, after p)",
             steps or "none", "-"),
        ]  # fmt: skip
    for row in repeat.get("knot_spacing") or []:
        rows.append((f"knots {row['spacing_tokens']} tokens apart, at each of "
                     f"{row['placements']} placements (p mod {row['spacing_tokens']}; one "
                     "sweep's knots priced against the "
                     f"other sweep's sizes between them, both ways: {row['prices']} prices at "
                     f"{row['sizes_between']} sizes): MAPE / max / share off by over "
                     f"{repeat['off_by_pct']:g} % (placements' least-most)",
                     f"{row['mape_pct']:.2f} / {row['max_error_pct']:+.2f} / "
                     f"{row['share_off_by_more_pct']:.1f} % ({row['share_least_pct']:.1f}-"
                     f"{row['share_most_pct']:.1f} %)", "-"))  # fmt: skip
    return rows


def resummarise(path: Path, out: Path, name: str | None = None) -> None:
    """Summarise a part-5 record's sweeps again (sweep_summary, the knots of the model's
    default grid at this commit) and write it under `name` (default: its own), its device,
    date and commit of measurement kept, and a note naming the commit that summarised it."""
    needs = ("device", "date", "commit", "model", "pe_repeatability")
    record = read_record(path, "--summary-from", needs)
    sweeps = record["pe_repeatability"]
    knots = grid_knots(get_spec(record["model"]))
    record["pe_repeatability"] = sweep_summary(
        sweeps["prompt_tokens"], sweeps["first_s"], sweeps["second_s"], knots
    )
    record["summary_note"] = (
        f"the sweeps as measured at {record['commit']}, summarised again by --summary-from at "
        f"{(git_commit() or 'an unknown commit')[:7]} against that commit's default grid knots"
    )
    name = name or path.stem
    rows = [*table(record), ("summary", record["summary_note"], "-")]
    write_record(name, record, rows, out)
    line(f"written {out / name}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--quick", action="store_true", help="CPU: a tiny model, few points")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--parts", default="1,2,3,4,5", help="which measurements, e.g. 5")
    parser.add_argument(
        "--prompts",
        default=None,
        help="part 5's prompt sizes as ranges START-END:STEP, comma separated (default: every 16)",
    )
    parser.add_argument("--name", default=None, help="record name (default: from --parts)")
    parser.add_argument(
        "--summary-from",
        type=Path,
        help="a part-5 record (JSON): summarise its sweeps again at this commit, measure "
        "nothing; written to --out under --name if given, else under the record's own name",
    )
    args = parser.parse_args()
    if args.summary_from:
        resummarise(args.summary_from, args.out, args.name)
        return
    parts = {int(x) for x in args.parts.split(",")}
    began = time.perf_counter()
    spec = get_spec("tiny-llama" if args.quick else args.model)
    backend = get_backend("engine", device="cpu" if args.quick else "cuda")
    backend.prepare(spec)
    context = spec.max_context
    meter = Meter.for_device("cuda", 1, interval_s=0.1)
    metered = meter.available
    line(f"{spec.name} on {backend.describe().get('device')}; metered: {metered}")
    if metered:
        meter.start()
        warm_end = time.perf_counter() + 10
        while time.perf_counter() < warm_end:
            backend.measure(Point(min(1024, context // 2), 64, 1, 0))
    runs = 2 if args.quick else 3
    short_shapes = [(1, 1), (1, 8), (512, 1), (1000, 4), (1662, 1), (1487, 6), (1357, 7)]
    short_shapes += [(700, 64), (1500, 256)]
    scale = context / 2048
    short_shapes = [(max(1, int(p * scale)), max(1, int(o * scale))) for p, o in short_shapes]
    wall: list[dict] = []
    if 1 in parts:
        line("1. wall clock of generate() against the timed region")
        wall = wall_vs_timed(backend, short_shapes[: 4 if args.quick else None], runs)

    step = 16 if not args.quick else 64
    pe: list[dict] = []
    if 2 in parts:
        line("2. PE(p) at o = 1, dense")
        dense_p = set(range(1, context, step))
        for k in range(1, context // 64):
            dense_p |= {64 * k - 1, 64 * k, 64 * k + 1}
        dense_p = sorted(p for p in dense_p if p + 2 <= context)
        pe = runtime_grid(backend, [(p, 1) for p in dense_p], runs)
        line(f"  {len(pe)} prompt sizes measured")

    along: list[dict] = []
    if 3 in parts:
        line("3. t(p, o) along o at three prompt sizes")
        outs = (1, 2, 4, 8, 16, 32, 64, 128, 256, 320)
        for p in (1, context // 2 - 24, context - 348):
            along += runtime_grid(backend, [(p, o) for o in outs if p + o <= context], runs)
        for row in along:
            line(f"  {row}")

    repeat: dict[str, Any] = {}
    if 5 in parts:
        line("5. PE(p) twice, in opposite orders, clocks up")
        sweep = parse_ranges(args.prompts) if args.prompts else list(range(1, context - 1, step))
        repeat = pe_repeatability(backend, sweep, runs, grid_knots(spec))
        line(
            f"  sweep-to-sweep std {repeat['sweep_difference_std_pct']:.2f}%, roughness std "
            f"{repeat['roughness_std_pct']:.2f}%, correlation {repeat['roughness_correlation']:.2f}"
        )

    energy: list[dict] = []
    if metered and 4 in parts:
        line("4. energy per query: isolated window, >= 1 s back to back, counter slope")
        idle = meter.measure_idle(1.0)
        line(f"  idle {idle} W")
        shapes = [(1, 1), (512, 1), (1600, 2), (1000, 16), (200, 64), (1500, 128), (100, 256)]
        energy = energy_three_ways(backend, meter, shapes)
        meter.stop()
    backend.close()

    def mean(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    result = {
        "model": spec.name,
        "wall_vs_timed": wall,
        "pe_dense": pe,
        "along_output": along,
        "energy": energy,
        "pe_repeatability": repeat,
        "mean_wall_over_timed_ms": mean(wall, "wall_over_timed_ms"),
        "mean_isolated_vs_reference_pct": mean(energy, "isolated_vs_reference_pct"),
        "mean_slope_vs_reference_pct": mean(energy, "slope_vs_reference_pct"),
        "wall_s": time.perf_counter() - began,
    }
    rows = table(result)
    name = "bias_diagnosis" + ("_quick" if args.quick else "")
    if parts != {1, 2, 3, 4, 5}:
        name += "_parts" + "".join(str(x) for x in sorted(parts))
    name = args.name or name
    write_result(name, result, rows, args.out)
    line(f"written {args.out / name}.json in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
