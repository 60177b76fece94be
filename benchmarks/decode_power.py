"""Batch-1 decode at the card's power limit: step time, board power and J/token, this checkout
against another commit, on one GPU in one call.

A decode-heavy profile point runs for seconds back to back, long enough for the card to reach
its power limit and lower its clocks; a step timed in a short burst does not. So per model and
variant, in a process of its own: this checkout with each of `--modes` (INFERMETER_ONE_TOKEN_
GEMV: "rows" or "looped" one-token GEMVs for the dense layers, see engine/select.py), and with
`--against COMMIT` also a git worktree of that commit ("old"):

- burst step: after 3 s idle, (min of 3 generations of 65 tokens − min of 3 of 1) / 64, the
  wall clock around whole generate() calls (the user's timing, benchmarks/_timing.py);
- sustained: 257-token generations back to back for `--seconds` (after one of each shape
  untimed); the step is (median generation − the 1-token minimum) / 256, the power is the NVML
  total-energy counter's difference over the wall time of the loop (nvmlDeviceGetTotalEnergy-
  Consumption, mJ), J/token = power × step; the SM clock is polled after each generation.

Found at bde1201 (2026-12-02, an H200): the whole-rows decode GEMVs (c0a44bf on) held
LLaMA's sustained decode at the 700 W limit, where 06cfeb3's looped GEMVs drew 610-620 W
(LLaMA-13B 8.13 ms and 5.64 J/token against 7.15 ms and 4.42 J/token).

Run on a GPU: python benchmarks/decode_power.py [--models llama-13b,llama-7b]
    [--modes rows,looped] [--against COMMIT] [--seconds 10] [--out DIR]
       python benchmarks/decode_power.py --merge A.json,B.json   (records made apart, as one)
Writes DIR/decode_power.json and .md with device, date and commit (this checkout's; an other
tree's commit is in its rows), after each variant, so a call cut short keeps what it measured.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, read_records, write_record, write_result  # noqa: E402
from infermeter.engine.select import ONE_TOKEN_GEMVS  # noqa: E402

PROMPT_TOKENS = 512
SUSTAINED_OUTPUT = 257
BURST_OUTPUT = 65


def measure(model: str, seconds: float) -> dict[str, Any]:
    """One model in this process (run from the tree under test, PYTHONPATH=src): burst and
    sustained step (ms), sustained power (W), J/token and the median SM clock (MHz)."""
    import pynvml

    from _timing import generate_timer
    from infermeter.backends.engine import EngineBackend
    from infermeter.spec.catalog import resolve_spec

    backend = EngineBackend(device="cuda")
    backend.prepare(resolve_spec(model))
    call = generate_timer(backend._engine, "cuda")
    prompt = list(range(10, 10 + PROMPT_TOKENS))
    for o in (1, 8, BURST_OUTPUT, SUSTAINED_OUTPUT):  # compile, tune and capture untimed
        call(prompt, o)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    time.sleep(3.0)
    one = min(call(prompt, 1) for _ in range(3))
    burst = (min(call(prompt, BURST_OUTPUT) for _ in range(3)) - one) / (BURST_OUTPUT - 1)
    runs, clocks = [], []
    energy_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        runs.append(call(prompt, SUSTAINED_OUTPUT))
        clocks.append(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    wall_s = time.perf_counter() - started
    power_w = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - energy_mj) / 1000 / wall_s
    step_s = (sorted(runs)[len(runs) // 2] - one) / (SUSTAINED_OUTPUT - 1)
    ran = backend._engine.describe()
    backend.close()
    return {
        "model": model,
        "one_token_gemv": ran.get("one_token_gemv"),
        "moe_batch1_gemv": ran.get("moe_batch1_gemv"),
        "moe_route_warps": ran.get("moe_route_warps"),
        "burst_step_ms": burst * 1000,
        "sustained_step_ms": step_s * 1000,
        "sustained_power_w": power_w,
        "j_per_token_j": power_w * step_s,
        "sm_clock_mhz": sorted(clocks)[len(clocks) // 2],
        "generations": len(runs),
    }


def run_tree(root: Path, model: str, seconds: float, mode: str | None) -> dict[str, Any]:
    """measure() in a fresh process with `root`'s src first on the path and
    INFERMETER_ONE_TOKEN_GEMV=`mode` (None: unset, the engine's own choice)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONUNBUFFERED": "1"}
    env.pop("INFERMETER_ONE_TOKEN_GEMV", None)
    if mode is not None:
        env["INFERMETER_ONE_TOKEN_GEMV"] = mode
    command = [sys.executable, str(Path(__file__).resolve()), "--one", model]
    command += ["--seconds", str(seconds)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{model} in {root} failed:\n{done.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "process_wall_s": time.perf_counter() - started}


def worktree(commit: str) -> Path:
    """A git worktree of `commit` under /tmp (made once)."""
    path = Path("/tmp") / f"decode_power_{commit}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "-f", str(path), commit], check=True)
    return path


def variants(modes: str, against: str | None) -> list[tuple[str, Path, str | None, str]]:
    """(label, tree root, INFERMETER_ONE_TOKEN_GEMV, tree commit) of each variant to run."""
    out: list[tuple[str, Path, str | None, str]] = []
    if against:
        out.append(("old", worktree(against), None, against))
    for mode in [m.strip() for m in modes.split(",") if m.strip()]:
        if mode not in ONE_TOKEN_GEMVS:  # before minutes of the other variants
            raise SystemExit(
                f"--modes takes looped and rows (INFERMETER_ONE_TOKEN_GEMV), not {mode!r}"
            )
        out.append((mode, HERE.parent, mode, "this checkout"))
    if not out:
        raise SystemExit("nothing to run: give --modes (rows, looped) or --against COMMIT")
    return out


def row_text(r: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"{r['model']}, {r['tree']} ({r['tree_commit']})",
        f"burst {r['burst_step_ms']:.2f} ms; sustained {r['sustained_step_ms']:.2f} ms at "
        f"{r['sustained_power_w']:.0f} W, {r['j_per_token_j']:.2f} J/token, SM "
        f"{r['sm_clock_mhz']} MHz",
        "-",
    )


def merge(paths: list[Path], out: Path) -> Path:
    """One decode_power record of runs made apart (e.g. one device call each): their rows in
    order, each with its record's date; device and commit joined where they differ."""
    records = read_records(paths, "--merge", ("rows", "device", "date", "commit"))
    rows = [
        {**row, "date": record["date"], "commit": record["commit"]}
        for record in records
        for row in record["rows"]
    ]
    top = {}
    for key in ("device", "date", "commit"):
        values = sorted({str(r[key]) for r in records})
        top[key] = values[0] if len(values) == 1 else " / ".join(values)
    kept = {k: records[0][k] for k in records[0] if k not in ("rows", "device", "date", "commit")}
    return write_record(
        "decode_power", {**kept, **top, "rows": rows}, [row_text(r) for r in rows], out
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="llama-13b,llama-7b")
    parser.add_argument("--modes", default="rows,looped", help="INFERMETER_ONE_TOKEN_GEMV values")
    parser.add_argument("--against", default=None, help="also a worktree of this commit")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--merge", help="comma-separated records (JSON) to write as one")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seconds)), flush=True)
        return
    if args.merge:
        print(f"written {merge([Path(p) for p in args.merge.split(',')], args.out)}")
        return
    runs = variants(args.modes, args.against)
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for label, root, mode, commit in runs:
            row = {**run_tree(root, model, args.seconds, mode), "tree": label}
            row["tree_commit"] = commit
            print(row, flush=True)
            rows.append(row)
            result = {"rows": rows, "against": args.against, "modes": args.modes}
            path = write_result("decode_power", result, [row_text(r) for r in rows], args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
