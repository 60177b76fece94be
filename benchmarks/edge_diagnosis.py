"""At a window's edges, does NVML's instantaneous power follow the energy counter?

infermeter's Meter ends an energy window at the counter's next step and takes off what the GPU
spent between the end of the work and that step, from the instantaneous power polled meanwhile
(NVML field 186, POWER_INSTANT). A user's script takes off idle power instead. On an H200 the
two differ by 2-7% of a 1 s window (benchmarks/window_diagnosis.py). This script loads a model,
then for a few bursts (idle 0.4 s, the same query back to back for 1.5 s, idle 0.6 s) polls the
counter, the instantaneous power and the averaged power (nvmlDeviceGetPowerUsage) every ~2 ms
from a thread, and compares, over each interval between two counter steps, the counter's power
(its joules over the interval) with the mean polled power, relative to the work's start and end.

Run: PYTHONPATH=src python benchmarks/edge_diagnosis.py [--model llama-7b] [--out DIR]
Writes edge_diagnosis.json and .md (device, date, commit).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.measure.meter import FI_DEV_POWER_INSTANT, load_nvml
from infermeter.spec.catalog import get_spec


class Poller(threading.Thread):
    """(t, counter J, instant W, average W) every ~2 ms until stopped."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        super().__init__(daemon=True)
        self.nvml, self.handle, self.rows, self.halt = nvml, handle, [], threading.Event()

    def run(self) -> None:
        nv, h = self.nvml, self.handle
        while not self.halt.is_set():
            t = time.perf_counter()
            j = nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
            field = nv.nvmlDeviceGetFieldValues(h, [FI_DEV_POWER_INSTANT])[0]
            instant = field.value.uiVal / 1e3 if field.nvmlReturn == 0 else float("nan")
            average = nv.nvmlDeviceGetPowerUsage(h) / 1e3
            self.rows.append((t, j, instant, average))
            time.sleep(0.002)


def intervals(rows: np.ndarray, start: float, end: float) -> list[dict[str, float]]:
    """One row per interval between counter steps: its middle relative to the work's start
    and end, the counter's power, and the mean polled instant and average power."""
    t, j, inst, avg = rows.T
    steps = np.flatnonzero(np.diff(j) != 0) + 1  # first read of each new value
    out = []
    for a, b in itertools.pairwise(steps):
        # the step fell between reads a-1 and a; take the midpoints as the step times
        ta, tb = (t[a - 1] + t[a]) / 2, (t[b - 1] + t[b]) / 2
        inside = (t >= ta) & (t < tb)
        out.append({
            "mid_from_start_s": (ta + tb) / 2 - start,
            "mid_from_end_s": (ta + tb) / 2 - end,
            "length_s": tb - ta,
            "counter_w": (j[b] - j[a]) / (tb - ta),
            "instant_w": float(np.nanmean(inst[inside])),
            "average_w": float(np.mean(avg[inside])),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    began = time.perf_counter()
    spec = get_spec(args.model)
    backend = get_backend("engine", device="cuda")
    backend.prepare(spec)
    nvml, why = load_nvml()
    if nvml is None:
        raise SystemExit(why)
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    for shape in ((1761, 1), (288, 5), (124, 64)):
        backend.measure(Point(*shape, 1, 0))
    warm_end = time.perf_counter() + 5
    while time.perf_counter() < warm_end:
        backend.measure(Point(1024, 64, 1, 0))
    bursts = []
    for repeat in range(2):
        for p, o in ((1761, 1), (288, 5), (124, 64)):
            poller = Poller(nvml, handle)
            poller.start()
            time.sleep(0.4)
            start = time.perf_counter()
            while time.perf_counter() - start < 1.5:
                backend.measure(Point(p, o, 1, 0))
            end = time.perf_counter()
            time.sleep(0.6)
            poller.halt.set()
            poller.join()
            rows = intervals(np.array(poller.rows), start, end)
            bursts.append({"prompt_tokens": p, "output_tokens": o, "repeat": repeat,
                           "polls": len(poller.rows), "intervals": rows})  # fmt: skip
            print(f"{p=} {o=} #{repeat}: {len(poller.rows)} polls", flush=True)
            for r in rows:
                print("   " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    backend.close()

    def after_end(key: str) -> float:
        vals = [r[key] for b in bursts for r in b["intervals"] if 0.02 < r["mid_from_end_s"] < 0.3]
        return float(np.mean(vals)) if vals else float("nan")

    result = {"model": spec.name, "bursts": bursts, "wall_s": time.perf_counter() - began,
              "after_end_counter_w": after_end("counter_w"),
              "after_end_instant_w": after_end("instant_w"),
              "after_end_average_w": after_end("average_w")}  # fmt: skip
    table = [
        ("counter power 20-300 ms after the work ends",
         f"{result['after_end_counter_w']:.1f} W", "-"),
        ("instant power polled then", f"{result['after_end_instant_w']:.1f} W", "-"),
        ("averaged power polled then", f"{result['after_end_average_w']:.1f} W", "-"),
    ]  # fmt: skip
    write_result("edge_diagnosis", result, table, args.out)


if __name__ == "__main__":
    main()
