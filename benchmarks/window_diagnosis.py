"""Why do a profile's energy windows and a user's disagree? Both ways, side by side, on one GPU.

The held-out benchmark at 42b47d9 (H200, LLaMA-7B) found the profile's energy per query 6%
below a user's measurement at p ~300 and 15% above it at p ~1760 with o = 1, though both read
the NVML counter over >= 1 s of the same query back to back. At p = 1761 the profile fitted
19 runs into its window and the user 22. This script runs, for a few shapes and one loaded
engine, each way in turn and records every call's start and end, the SM clock and the
throttle reasons, so that the difference can be pinned on its cause:

- profile: infermeter's measure_point (its Meter, sampler on, as `infermeter profile` runs it);
- profile, no sampler: the same with the meter's background sampler stopped;
- user: benchmarks/heldout_bench.py's way (one untimed call, 3 timed trials, then the counter
  over >= 1 s of the same call back to back, idle power taken off the wait for the last step);
- user, sampler on: the same while the meter's sampler runs.

For each: the fastest trial, the mean length of a run inside the window, the mean gap between
runs (host time outside generate()), joules per run, and the SM clock and throttle reasons
after the window.

Run: PYTHONPATH=src python benchmarks/window_diagnosis.py [--model llama-7b] [--out DIR]
Writes window_diagnosis.json and .md (device, date, commit) under --out (default docs/benchmarks).
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
from heldout_bench import Counter
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.experiments.profile import measure_point
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec

SHAPES = [(1761, 1), (1768, 1), (737, 1), (737, 2), (737, 4), (288, 5), (517, 5), (124, 404)]


def line(text: str) -> None:
    print(text, flush=True)


class Gpu(Counter):
    """The held-out bench's counter reader (idle power from the counter at rest, reads on its
    steps), with the card's state beside it."""

    def __init__(self) -> None:
        super().__init__(0)

    def state(self) -> dict[str, Any]:
        nv = self.nvml
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        reasons = reasons or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return {
            "sm_mhz": nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM),
            "mem_mhz": nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_MEM),
            "power_w": nv.nvmlDeviceGetPowerUsage(self.handle) / 1e3,
            "temp_c": nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU),
            "reasons": hex(reasons(self.handle)),
        }

    def sm_mhz(self) -> int:
        return int(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))


class Calls:
    """Wraps a backend's measure() and records each call's (start, end) on perf_counter."""

    def __init__(self, backend: Any, gpu: Gpu) -> None:
        self.backend, self.gpu, self.spans, self.sm_mhz = backend, gpu, [], []

    def measure(self, point: Point, window: Any = None) -> Any:
        start = time.perf_counter()
        out = self.backend.measure(point, window)
        self.spans.append((start, time.perf_counter(), out.runtime_s))
        self.sm_mhz.append(self.gpu.sm_mhz())
        return out


def spans_summary(spans: list[tuple[float, float, float]]) -> dict[str, float]:
    starts = np.array([s[0] for s in spans])
    ends = np.array([s[1] for s in spans])
    lengths = ends - starts
    gaps = starts[1:] - ends[:-1] if len(spans) > 1 else np.array([0.0])
    return {
        "calls": len(spans),
        "call_mean_s": float(lengths.mean()),
        "call_min_s": float(lengths.min()),
        "call_max_s": float(lengths.max()),
        "gap_mean_ms": float(1e3 * gaps.mean()),
        "first_call_s": float(lengths[0]),
        "last_call_s": float(lengths[-1]),
    }


def profile_way(backend: Any, meter: Meter, gpu: Gpu, p: int, o: int) -> dict[str, Any]:
    calls = Calls(backend, gpu)
    measured = measure_point(calls, Point(p, o, 1, 0), [0, 1, 2], meter, 1.0)  # type: ignore[arg-type]
    after = gpu.state()
    m = measured[0][1]
    return {
        "trials_s": [x.runtime_s for _, x in measured],
        "j_per_run": m.energy_j,
        "window_runs": m.extra.get("energy_window_runs"),
        "window_s": m.extra.get("energy_window_s"),
        **spans_summary(calls.spans),
        "sm_mhz_mean": float(np.mean(calls.sm_mhz)),
        "sm_mhz_first": calls.sm_mhz[0],
        "after": after,
    }


def user_way(backend: Any, gpu: Gpu, p: int, o: int, seed: int) -> dict[str, Any]:
    import torch

    engine = backend._engine
    prompt = np.random.default_rng(seed).integers(0, backend.spec.vocab_size, p).tolist()
    spans: list[tuple[float, float, float]] = []
    clocks: list[int] = []

    def call() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.generate([prompt], o)
        end = time.perf_counter()
        spans.append((start, end, end - start))
        clocks.append(gpu.sm_mhz())
        return end - start

    call()
    trials = [call() for _ in range(3)]
    spans.clear()
    clocks.clear()
    start_j, _ = gpu.next_step()
    began = time.perf_counter()
    runs = 0
    while runs == 0 or time.perf_counter() - began < 1.0:
        call()
        runs += 1
    ended = time.perf_counter()
    end_j, stepped = gpu.next_step()
    after = gpu.state()
    return {
        "trials_s": trials,
        "j_per_run": (end_j - start_j - gpu.idle_w * (stepped - ended)) / runs,
        "j_per_run_no_idle_fix": (end_j - start_j) / runs,
        "window_runs": runs,
        "window_s": ended - began,
        **spans_summary(spans),
        "sm_mhz_mean": float(np.mean(clocks)),
        "sm_mhz_first": clocks[0],
        "after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    began = time.perf_counter()
    spec = get_spec(args.model)
    backend = get_backend("engine", device="cuda")
    backend.prepare(spec)
    gpu = Gpu()
    meter = Meter.for_device("cuda", 1, interval_s=0.1)
    meter.measure_idle(1.0)
    line(f"{spec.name}; idle {gpu.idle_w:.1f} W (meter {meter.idle_w}); {gpu.state()}")
    meter.start()
    warm_end = time.perf_counter() + 10
    while time.perf_counter() < warm_end:
        backend.measure(Point(1024, 64, 1, 0))
    line(f"warm: {gpu.state()}")
    rows = []
    for r in range(args.rounds):
        for p, o in SHAPES:
            backend.measure(Point(p, o, 1, 0))  # graphs and caches for this shape
            meter.start()
            a = profile_way(backend, meter, gpu, p, o)
            meter.stop()
            b = profile_way(backend, meter, gpu, p, o)
            c = user_way(backend, gpu, p, o, seed=p * 1000 + o)
            meter.start()
            d = user_way(backend, gpu, p, o, seed=p * 1000 + o)
            meter.stop()
            row = {"round": r, "prompt_tokens": p, "output_tokens": o, "profile": a,
                   "profile_no_sampler": b, "user": c, "user_sampler_on": d}  # fmt: skip
            ratio = a["j_per_run"] / c["j_per_run"] - 1
            row["profile_vs_user_j_pct"] = 100 * ratio
            row["profile_vs_user_fastest_pct"] = 100 * (min(a["trials_s"]) / min(c["trials_s"]) - 1)
            line(
                f"{p=} {o=}: J/run profile {a['j_per_run']:.2f} ({a['window_runs']} runs, call "
                f"{a['call_mean_s'] * 1e3:.2f} ms, gap {a['gap_mean_ms']:.2f} ms) / no sampler "
                f"{b['j_per_run']:.2f} ({b['window_runs']}) / user {c['j_per_run']:.2f} "
                f"({c['window_runs']} runs, call {c['call_mean_s'] * 1e3:.2f} ms, gap "
                f"{c['gap_mean_ms']:.2f} ms) / user+sampler {d['j_per_run']:.2f}; fastest "
                f"{min(a['trials_s']) * 1e3:.3f} vs {min(c['trials_s']) * 1e3:.3f} ms; SM MHz "
                f"{a['sm_mhz_mean']:.0f} vs {c['sm_mhz_mean']:.0f}; "
                f"after {a['after']} / {c['after']}"
            )
            rows.append(row)
    backend.close()
    j = [r["profile_vs_user_j_pct"] for r in rows]
    t = [r["profile_vs_user_fastest_pct"] for r in rows]
    result = {"model": spec.name, "idle_w": gpu.idle_w, "rows": rows,
              "profile_vs_user_j_mean_pct": float(np.mean(j)),
              "profile_vs_user_fastest_mean_pct": float(np.mean(t)),
              "wall_s": time.perf_counter() - began}  # fmt: skip
    table = [
        ("energy per run, profile vs user (mean over shapes)", f"{np.mean(j):+.2f}%", "-"),
        ("fastest trial, profile vs user (mean over shapes)", f"{np.mean(t):+.2f}%", "-"),
    ]
    write_result("window_diagnosis", result, table, args.out)
    line(f"done in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
