"""Are the estimates right? The user's commands, then queries they never saw, measured apart.

For each model: `infermeter profile MODEL` with its defaults (validation included), `infermeter
fit --output m.json` and `infermeter estimate --profile m.json --energy-profile m.energy.json`
for queries drawn here, each command in a process of its own with the wall clock around it.
The queries are then measured in another fresh process that shares nothing with the profile's
measuring code: the engine is driven directly, the wall clock is read around each whole
generate() call (token ids in, token ids out; after one untimed first call of the shape, the
minimum of 3 trials), and energy is read from the NVML total-energy counter by this script's own
code, over at least 1 s of the query repeated back to back (the window starts on a counter step;
at its end the counter's next step is awaited and the idle power, measured beforehand from the
counter at rest, is taken off for the wait). Each trial of a query of up to IDLE_MAX_OUTPUT
output tokens is sent alone, IDLE_S after the previous call ended, the runtime a query priced by
default is for (README: Energy); a longer query's trials run back to back (its own calls are a
stream). The same query back to back (`sustained_s`: the fastest of the energy window's last 3
runs, at least 1 s into a stream of it) is recorded beside, against the sustained price
(`estimate --sustained-profile m.sustained.json`, column runtime_sustained_s) where the
profile wrote one.

Queries (seeded): half shaped like the paper's §5.4 workloads (few-shot classification and QA:
p uniform in 256 .. the usable context, 1-5 output tokens), half uniform (p up to the usable
context, o up to 512, p + o within it); none on a profiled prompt size.

Issue 15's goals, per model: runtime MAPE <= 1%, max <= 3%, |mean error| <= 0.5%; energy MAPE
<= 3%, max <= 6%, |mean error| <= 1.5%; the profile's own validation figures within 1
percentage point of these; `infermeter profile llama-7b` in <= 150 s.

Run: python benchmarks/heldout_bench.py [--models llama-7b,llama-13b] [--queries 60]
     python benchmarks/heldout_bench.py --quick      (CPU: gpt2, 8 queries, no energy)
     python benchmarks/heldout_bench.py --merge A.json,B.json --name heldout
         (one record of runs made apart, e.g. one device call per model)
     python benchmarks/heldout_bench.py --reprice RECORD.json --work DIR --name NAME
         (no GPU: fit and estimate again, at this commit, the profiles and measurements an
         earlier run left in DIR; the record names where they were measured). A run cut
         off while measuring (e.g. a device call's time limit) leaves DIR/MODEL/record_stub.json
         beside what it measured (measured.csv is written as each query lands): once
         measured.csv holds every query, pass the stub to --reprice (the 13B run of 15d0f9f);
         if it does not, the command the log names (`--measure MODEL --queries-file ...`),
         run again, measures the rest and keeps what is there.
Writes docs/benchmarks/heldout.json and heldout.md (or heldout_quick.*) with device, date and
commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infermeter.store.provenance import provenance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, read_record, read_records, write_record, write_result  # noqa: E402
from _timing import generate_timer, prepared_backend  # noqa: E402

MAX_LONG_OUTPUT = 512
# A query of up to this many output tokens is timed alone, each trial IDLE_S after the last
# call (on an H200 a prefill ran at the same speed, to 0.5%, after idles of 0.15 s to 8 s:
# docs/benchmarks/idle_gap_llama-7b.md); a longer one takes a third of a second or more.
IDLE_MAX_OUTPUT = 64
IDLE_S = 0.15
SUSTAINED_RUNS = 3


def line(text: str) -> None:
    print(text, flush=True)


def infermeter(args: list[str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run `infermeter ARGS` as a user does, in its own process; (exit code, wall seconds)."""
    command = [sys.executable, "-m", "infermeter", *args]
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ infermeter {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.perf_counter() - started
    with log.open("a") as out:
        out.write(f"# exit {done.returncode} after {wall:.1f} s\n")
    return done.returncode, wall


def draw_queries(context: int, knots: set[int], count: int, seed: int) -> pd.DataFrame:
    """Half §5.4-shaped (p in 256..context, 1-5 tokens), half uniform (o up to 512)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int]] = []
    while len(rows) < count:
        workload = len(rows) < count // 2
        if workload:
            o = int(rng.integers(1, 6))
            p = int(rng.integers(256, context - o + 1))
        else:
            o = int(rng.integers(1, min(MAX_LONG_OUTPUT, context // 4) + 1))
            p = int(rng.integers(1, context - o + 1))
        if p in knots or (p, o) in rows:
            continue
        rows.append((p, o))
    frame = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens"])
    frame.insert(0, "id", range(len(frame)))
    frame["shape"] = ["workload"] * (count // 2) + ["uniform"] * (count - count // 2)
    return frame


# ---- the separate measuring process ---------------------------------------------------------
class Counter:
    """NVML's total-energy counter of one GPU, read on its own steps."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        # Idle power from the counter itself over ~1 s at rest (nvmlDeviceGetPowerUsage is a
        # 1 s average on Hopper and reads high for a while after the model's loading).
        time.sleep(0.5)
        start_j, started = self.next_step()
        time.sleep(1.0)
        end_j, ended = self.next_step()
        self.idle_w = (end_j - start_j) / (ended - started)

    def read_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def state(self) -> tuple[int, int]:
        """(temperature °C, SM clock MHz) now."""
        nv = self.nvml
        return (
            nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU),
            nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM),
        )

    def next_step(self) -> tuple[float, float]:
        """Poll until the counter moves; (joules, when)."""
        first = self.read_j()
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            value = self.read_j()
            if value != first:
                return value, time.perf_counter()
        return self.read_j(), time.perf_counter()


def already_measured(out_csv: Path) -> list[dict[str, Any]]:
    """The rows of a measured file a cut-off run left (trials_s as written, a list's repr);
    [] when there is none."""
    if not out_csv.exists() or out_csv.stat().st_size == 0:
        return []
    return pd.read_csv(out_csv).to_dict("records")


def measure(model: str, queries_csv: Path, out_csv: Path, device: str) -> None:
    """Measure every query: minimum of 3 wall-clock trials (a short query's each sent alone);
    joules, and the time back to back, over >= 1 s of it back to back. Queries already in
    `out_csv` (a run cut off, e.g. by a device call's time limit) are kept and not measured
    again: run the same command again to finish."""
    spec, backend = prepared_backend(model, device)
    engine = backend._engine
    counter = Counter(0) if device == "cuda" else None
    queries = pd.read_csv(queries_csv)
    rng = np.random.default_rng(7)
    rows = already_measured(out_csv)
    done = {int(r["id"]) for r in rows}
    if done:
        line(f"  {len(done)} queries already measured in {out_csv}: kept")
    call = generate_timer(engine, device)

    for query in queries.itertuples(index=False):
        p, o = int(query.prompt_tokens), int(query.output_tokens)
        prompt = rng.integers(0, spec.vocab_size, p).tolist()  # drawn for every query: the
        if int(query.id) in done:  # same prompts whether resumed or not
            continue
        setup_s = call(prompt, o)  # a user's first call of a shape: setup, not timed
        trials = []
        for _ in range(3):
            if o <= IDLE_MAX_OUTPUT:
                time.sleep(IDLE_S)  # generate() returned: the card's work is done
            trials.append(call(prompt, o))
        energy_j = runs = temperature_c = sm_clock_mhz = sustained_s = None
        if counter is not None:
            start_j, _ = counter.next_step()
            window_started = time.perf_counter()
            window_s: list[float] = []
            while not window_s or time.perf_counter() - window_started < 1.0:
                window_s.append(call(prompt, o))
            ended = time.perf_counter()
            temperature_c, sm_clock_mhz = counter.state()
            end_j, stepped = counter.next_step()
            runs = len(window_s)
            energy_j = (end_j - start_j - counter.idle_w * (stepped - ended)) / runs
            sustained_s = min(window_s[-SUSTAINED_RUNS:])
        rows.append(
            {
                "id": query.id,
                "prompt_tokens": p,
                "output_tokens": o,
                "measured_s": min(trials),
                "trials_s": trials,
                "alone": o <= IDLE_MAX_OUTPUT,
                "sustained_s": sustained_s,
                "setup_s": setup_s,
                "measured_j": energy_j,
                "energy_runs": runs,
                "temperature_c": temperature_c,
                "sm_clock_mhz": sm_clock_mhz,
            }
        )
        line(f"  measured {rows[-1]}")
        pd.DataFrame(rows).to_csv(out_csv, index=False)  # each query kept as it lands
    backend.close()


# ---- one model end to end ------------------------------------------------------------------
def one_model(
    model: str, count: int, work: Path, quick: bool, reprice: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Profile, fit, estimate and measure `model` in `work`; with `reprice` (the model's entry
    of an earlier record whose work folder this is), only fit and estimate again, on the
    stored profile, for the queries it measured."""
    work.mkdir(parents=True, exist_ok=True)
    store, log = work / "store.sqlite", work / "commands.log"
    if reprice is None:
        profile_args = ["profile", model, "--store", str(store)]
        code, profile_s = infermeter(profile_args, log, 3000)
        line(f"{model}: profile exit {code} in {profile_s:.1f} s")
        if code != 0:
            raise SystemExit(f"infermeter profile failed; see {log}")
    else:
        profile_s = reprice["profile_wall_s"]
    fitted = work / "m.json"
    code, fit_s = infermeter(["fit", "--store", str(store), "--output", str(fitted)], log, 600)
    if code != 0:
        raise SystemExit(f"infermeter fit failed; see {log}")
    runtime_model = json.loads(fitted.read_text())
    energy_path = work / "m.energy.json"
    has_energy = energy_path.exists()
    spec_context = _context(model)
    knots = set(runtime_model["prompt_sizes"])
    for curve in runtime_model.get("decode_curves") or []:
        knots.add(curve["prompt_tokens"])
    queries_csv, estimates_csv = work / "queries.csv", work / "estimates.csv"
    if reprice is None:
        queries = draw_queries(spec_context, knots, count, seed=15)
        queries[["id", "prompt_tokens", "output_tokens"]].to_csv(queries_csv, index=False)
    else:  # the queries that were measured, with their shapes
        queries = pd.read_csv(queries_csv)
        shapes = {r["id"]: r["shape"] for r in reprice["rows"]}
        queries["shape"] = queries["id"].map(shapes)
    estimate_args = ["estimate", "--profile", str(fitted), "--queries", str(queries_csv)]
    if has_energy:
        estimate_args += ["--energy-profile", str(energy_path)]
    sustained_path = work / "m.sustained.json"  # the profile's times back to back, if stored
    if sustained_path.exists():
        estimate_args += ["--sustained-profile", str(sustained_path)]
    code, estimate_s = infermeter([*estimate_args, "--output", str(estimates_csv)], log, 600)
    if code != 0:
        raise SystemExit(f"infermeter estimate failed; see {log}")
    measured_csv = work / "measured.csv"
    started = time.perf_counter()
    device = "cpu" if quick else "cuda"
    if reprice is None:
        measured_csv.unlink(missing_ok=True)  # resuming is for --measure alone: not stale rows
        stub = stub_record(model, profile_s, queries)
        (work / "record_stub.json").write_text(json.dumps(stub, indent=1) + "\n")
        command = [
            sys.executable, __file__, "--measure", model, "--queries-file", str(queries_csv),
            "--measured-file", str(measured_csv), "--device", device,
        ]  # fmt: skip
        line(f"measuring (to finish a run cut off here: {' '.join(command)})")
        subprocess.run(command, check=True, timeout=3000)
        measure_s = time.perf_counter() - started
    else:
        measure_s = reprice["measure_wall_s"]
    estimates = pd.read_csv(estimates_csv)
    measured = pd.read_csv(measured_csv)
    both = queries.merge(estimates, on=["id", "prompt_tokens", "output_tokens"]).merge(
        measured, on=["id", "prompt_tokens", "output_tokens"]
    )
    both["runtime_error_pct"] = 100 * (both.runtime_s / both.measured_s - 1)
    result: dict[str, Any] = {
        "model": model,
        "queries": len(both),
        "profile_wall_s": profile_s,
        "fit_wall_s": fit_s,
        "estimate_wall_s": estimate_s,
        "measure_wall_s": measure_s,
        **_errors(both.runtime_error_pct, "runtime"),
        "runtime_by_shape": {
            shape: _errors(rows.runtime_error_pct, "runtime")
            for shape, rows in both.groupby("shape")
        },
        "profile_said": _said(runtime_model, "runtime"),
        "profile_grid": {
            "prompt_sizes": len(runtime_model["prompt_sizes"]),
            "decode_curves": [c["prompt_tokens"] for c in runtime_model.get("decode_curves") or []],
        },
    }
    if has_energy and "energy_measured_j" in both and both.measured_j.notna().any():
        both["energy_error_pct"] = 100 * (both.energy_measured_j / both.measured_j - 1)
        result.update(_errors(both.energy_error_pct, "energy"))
        result["energy_by_shape"] = {
            shape: _errors(rows.energy_error_pct, "energy") for shape, rows in both.groupby("shape")
        }
        result["profile_said"].update(_said(json.loads(energy_path.read_text()), "energy"))
    if "sustained_s" in both and both.sustained_s.notna().any():
        # The time back to back against the sustained price where the model has one, else
        # against the default (isolated) price: how far apart the two states are.
        priced = "runtime_sustained_s" if "runtime_sustained_s" in both else "runtime_s"
        both["sustained_error_pct"] = 100 * (both[priced] / both.sustained_s - 1)
        result["sustained"] = {
            "priced_by": priced,
            **_errors(both.sustained_error_pct, "runtime"),
            "profile_said": (
                _said(json.loads(sustained_path.read_text()), "runtime")
                if sustained_path.exists()
                else None
            ),
            "by_shape": {
                shape: _errors(rows.sustained_error_pct, "runtime")
                for shape, rows in both.groupby("shape")
            },
        }
    result["rows"] = both.drop(columns=["trials_s"], errors="ignore").to_dict("records")
    return result


def stub_record(model: str, profile_s: float, queries: pd.DataFrame) -> dict[str, Any]:
    """A record `--reprice` accepts, written before the measuring starts: if the run is cut
    off after its queries are measured, the stub with the work folder gives the record
    (device, date and commit are those of the profile; the measure's wall time is unknown)."""
    return {
        **provenance(),
        "note": "written before measuring; the run may have been cut off after it",
        "models": [{
            "model": model,
            "profile_wall_s": profile_s,
            "measure_wall_s": None,
            "rows": queries[["id", "shape"]].to_dict("records"),
        }],
    }  # fmt: skip


def _context(model: str) -> int:
    from infermeter.spec.catalog import resolve_spec

    return resolve_spec(model).max_context


def _errors(errors: pd.Series, quantity: str) -> dict[str, float]:
    values = errors.dropna().to_numpy(dtype=float)
    return {
        f"{quantity}_mape_pct": float(np.abs(values).mean()),
        f"{quantity}_max_error_pct": float(np.abs(values).max()),
        f"{quantity}_bias_pct": float(values.mean()),
    }


def _said(model: dict[str, Any], quantity: str) -> dict[str, Any]:
    """What the profile reported about itself (its validation queries)."""
    check = (model.get("fit") or {}).get("validation") or {}
    return {
        f"{quantity}_validation_n": check.get("n"),
        f"{quantity}_validation_mape_pct": check.get("mape_pct"),
        f"{quantity}_validation_max_error_pct": check.get("max_error_pct"),
        f"{quantity}_validation_bias_pct": check.get("bias_pct"),
    }


def table_rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The Markdown table's (figure, value, goal) rows of each model's result."""
    rows: list[tuple[str, str, str]] = []
    goals = {
        "runtime_mape_pct": "≤ 1",
        "runtime_max_error_pct": "≤ 3",
        "runtime_bias_pct": "within ±0.5",
        "energy_mape_pct": "≤ 3",
        "energy_max_error_pct": "≤ 6",
        "energy_bias_pct": "within ±1.5",
    }
    for r in results:
        if "measured_with" in r:
            w = r["measured_with"]
            rows.append((f"{r['model']}: profiled and measured on", f"{w['device']}, {w['date']}, "
                         f"commit {w['commit']} (priced again here)", ""))  # fmt: skip
        if "recorded" in r:
            w = r["recorded"]
            rows.append((f"{r['model']}: profiled and measured on",
                         f"{w['device']}, {w['date']}, commit {w['commit']}", ""))  # fmt: skip
        wall_goal = "≤ 150 s" if r["model"] == "llama-7b" else "-"  # issue 15 times 7B alone
        rows.append((f"{r['model']}: profile wall time", f"{r['profile_wall_s']:.1f} s", wall_goal))
        for key, goal in goals.items():
            if key not in r:
                continue
            quantity = key.split("_")[0]
            said = r["profile_said"].get(key.replace(f"{quantity}_", f"{quantity}_validation_"))
            said_text = "-" if said is None else f"{said:.2f}"
            figure = f"{r['model']}: {key} ({r['queries']} queries; the profile said {said_text})"
            rows.append((figure, f"{r[key]:.2f}", goal))
        if "sustained" in r:
            s = r["sustained"]
            price = "sustained" if s["priced_by"] == "runtime_sustained_s" else "default"
            said = s.get("profile_said") or {}
            said_text = (
                f" (its validation queries said {said['runtime_validation_mape_pct']:.2f} / "
                f"{said['runtime_validation_max_error_pct']:.2f} / "
                f"{said['runtime_validation_bias_pct']:+.2f})"
                if said.get("runtime_validation_mape_pct") is not None
                else ""
            )
            rows.append((
                f"{r['model']}: back to back (1 s into a stream of the query) vs the {price} "
                f"price: MAPE / max / mean error %{said_text}",
                f"{s['runtime_mape_pct']:.2f} / {s['runtime_max_error_pct']:.2f} / "
                f"{s['runtime_bias_pct']:+.2f}", "-",
            ))  # fmt: skip
    return rows


HELDOUT_MODEL = ("model", "rows", "profile_wall_s")  # keys of a heldout record's model entry


def merge(paths: list[Path], name: str, out: Path) -> Path:
    """One record (`name`, a `models` list) of per-model records written by separate runs
    (one device call each); each model keeps the device, date and commit it was measured at,
    and the record's own say where they differ."""
    records = read_records(paths, "--merge", ("models",), HELDOUT_MODEL)
    results = []
    for record in records:
        for entry in record["models"]:
            measured = {k: record.get(k) for k in ("device", "date", "commit")}
            results.append({**entry, "recorded": measured})
    top = {}
    for key in ("device", "date", "commit"):
        values = sorted({str(r.get(key)) for r in records})
        top[key] = values[0] if len(values) == 1 else " / ".join(values)
    return write_record(name, {**top, "models": results}, table_rows(results), out)


def measured_with(record: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Where one model of a record --reprice is given was profiled and measured: its own
    device, date and commit when the record is a merge of runs (`recorded`), else the
    record's."""
    return entry.get("recorded") or {k: record.get(k) for k in ("device", "date", "commit")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="llama-7b,llama-13b")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="CPU: gpt2, 8 queries, no energy")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--work", type=Path, default=Path("heldout-work"))
    parser.add_argument("--name", default=None, help="record name (default heldout[_quick])")
    parser.add_argument(
        "--reprice",
        type=Path,
        help="an earlier record (JSON) whose --work folders hold its stores and measurements: "
        "fit and estimate again at this commit, measure nothing",
    )
    parser.add_argument(
        "--merge",
        help="comma-separated records of one model each (JSON): write them as one --name "
        "record (default heldout), each model with its own device, date and commit",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measured-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.queries_file, args.measured_file, args.device)
        return
    if args.merge:
        path = merge([Path(p) for p in args.merge.split(",")], args.name or "heldout", args.out)
        line(f"written {path}")
        return
    models = ["gpt2"] if args.quick else args.models.split(",")
    count = 8 if args.quick else args.queries
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    earlier: dict[str, Any] = {}
    if args.reprice:
        record = read_record(args.reprice, "--reprice", ("models",), HELDOUT_MODEL)
        earlier = {entry["model"]: entry for entry in record["models"]}
        models = list(earlier)
        for entry in earlier.values():
            entry["measured_with"] = measured_with(record, entry)
    results = [
        one_model(m, count, args.work / m, args.quick, earlier.get(m) if args.reprice else None)
        for m in models
    ]
    for result in results:
        if args.reprice:
            result["measured_with"] = earlier[result["model"]]["measured_with"]
    rows = table_rows(results)
    name = args.name or ("heldout_quick" if args.quick else "heldout")
    path = write_result(name, {"models": results}, rows, args.out)
    line(f"written {path}")


if __name__ == "__main__":
    main()
