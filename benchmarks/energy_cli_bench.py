"""`infermeter energy` as a user runs it on their own GPU: the installed command, end to end.

Each step is a command line a user types, run in a process of its own in the store's folder
(so the default store, ./infermeter.sqlite, is the one every step shares):

1. complete:    `infermeter energy MODEL --dataset D --max-lengths L` (every other option at its
                default: the paper's 4,096 prompts, batch 64/128/256), run to the end.
2. interrupted: the bare `infermeter energy MODEL --dataset D` (4,096 prompts, batch 64/128/256,
                length 256/512/1024), sent Ctrl-C (SIGINT) --interrupt-after s after it
                started: it resumes past step 1's configurations and is stopped in the next.
3. resumed:     the bare command again, stopped by SIGTERM (what `timeout` and schedulers send)
                --resume-for s after it started: it resumes at the next batch of the
                configuration step 2 cut short.

Per step: the command, exit code, wall time, the signal sent, what it said it resumed, and what
the store held afterwards (configurations and batches per configuration, with checks that no
batch was stored twice and none lost). Then the store's per-configuration table.
`--steps` picks steps; `--append` adds them to the record already in --out, so the steps can
run in separate device calls. Which `infermeter` ran: the one on PATH (the install), else
`python -m infermeter`; where its package was imported from is recorded.

Run on a GPU:  python3 benchmarks/energy_cli_bench.py [--out DIR]
CPU smoke run: PYTHONPATH=src python3 benchmarks/energy_cli_bench.py --quick (tiny-llama, 1,024
prompts, into /tmp/infermeter-energy-cli-quick)
Writes <out>/energy_cli.json and energy_cli.md (device, date, commit) and the store
<out>/stores/energy_cli/infermeter.sqlite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infermeter
from _command import infermeter_command, run_command
from _record import DOCS, write_result
from energy_bench import TABLE_COLUMNS, markdown
from infermeter.experiments.energy import EnergyConfig
from infermeter.store.db import Store
from infermeter.store.energy import energy_batches, energy_configs

STEPS = ("complete", "interrupted", "resumed")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--complete-lengths", default="256", help="step 1's --max-lengths")
    parser.add_argument("--interrupt-after", type=float, default=150.0, help="step 2 (s)")
    parser.add_argument("--resume-for", type=float, default=70.0, help="step 3 (s)")
    parser.add_argument("--timeout-s", type=float, default=580.0, help="for step 1")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--append", action="store_true", help="add to the record in --out")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny-llama on the CPU")
    args = parser.parse_args()
    args.extra = []
    if args.quick:  # every step in seconds, never written over docs/
        args.model, args.complete_lengths = "tiny-llama", "8"
        args.interrupt_after, args.resume_for = 7.0, 7.0
        args.extra = ["--prompts", "1024", "--batch-sizes", "2,4", "--max-lengths", "8,64"]
        args.extra += ["--device", "cpu"]
        args.out = args.out or Path("/tmp/infermeter-energy-cli-quick")
    args.out = args.out or DOCS
    args.store = args.out / "stores" / "energy_cli" / "infermeter.sqlite"
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; choose from {STEPS}")
    return args


def step_command(args: argparse.Namespace, step: str) -> list[str]:
    command = ["energy", args.model, "--dataset", args.dataset]
    if step == "complete":
        command += ["--max-lengths", args.complete_lengths]
    extra = list(args.extra)
    if step == "complete" and "--max-lengths" in extra:  # --quick: step 1's lengths win
        at = extra.index("--max-lengths")
        del extra[at : at + 2]
    return infermeter_command(*command, *extra, installed=True)


def stored(store: Path) -> dict[str, Any]:
    """What the store holds: configurations by status, batches per configuration, which
    configurations have batches but no row yet (cut short), runs."""
    if not store.exists():
        return {"configs": {}, "batches": {}, "partial": {}, "duplicate_batches": 0, "runs": []}
    with Store(store) as db:
        configs = energy_configs(db)
        batches = energy_batches(db)
        runs = db.runs()
    have_row = {
        EnergyConfig(
            int(r.batch),
            int(r.max_len),
            int(r.shards),
            None if pd.isna(r.power_cap_w) else float(r.power_cap_w),
        ).key
        for r in configs.itertuples(index=False)
    }
    per_config = {k: int(v) for k, v in batches.groupby("config_key").batch_index.nunique().items()}
    return {
        "configs": {k: int(v) for k, v in configs.status.value_counts().items()},
        "batches": per_config,
        "partial": {k: n for k, n in per_config.items() if k not in have_row},
        "duplicate_batches": int(batches.duplicated(["run_id", "config_key", "batch_index"]).sum()),
        "runs": [f"run {r.id}: {r.status}" for r in runs.itertuples(index=False)],
    }


def last_batch_row(store: Path) -> int:
    """The newest energy_batches rowid: batches stored later have larger ones."""
    if not store.exists():
        return 0
    with Store(store) as db, db.transaction() as con:  # opening migrates: the tables exist
        return int(con.execute("SELECT coalesce(max(rowid), 0) FROM energy_batches").fetchone()[0])


def generation_seconds(store: Path, after_row: int) -> float:
    """Timed generation of the batches stored after rowid `after_row`."""
    with Store(store) as db, db.transaction() as con:  # opening migrates: the tables exist
        query = "SELECT coalesce(sum(runtime_s), 0) FROM energy_batches WHERE rowid > ?"
        return float(con.execute(query, (after_row,)).fetchone()[0])


def said(output: str) -> list[str]:
    """The lines in which the command says what it resumed, or why it stopped."""
    wanted = re.compile(r"resuming|interrupted:|terminated:|error:|stored in")
    return [line.strip() for line in output.splitlines() if wanted.search(line)]


def run_step(args: argparse.Namespace, step: str) -> dict[str, Any]:
    before = stored(args.store)
    stop = {
        "complete": (None, signal.SIGINT),
        "interrupted": (args.interrupt_after, signal.SIGINT),
        "resumed": (args.resume_for, signal.SIGTERM),
    }[step]
    print(f"[{step}] starting", flush=True)
    first_row = last_batch_row(args.store)
    done = run_command(
        step_command(args, step),
        timeout_s=args.timeout_s if step == "complete" else stop[0] + 120,
        stop_after_s=stop[0],
        stop_signal=stop[1],
        cwd=args.store.parent,
    )
    after = stored(args.store)
    lines = said(done.pop("output"))
    record = {"step": step, **done, "said": lines, "before": before, "after": after}
    # How much of the wall time was timed generation (the rest: start-up, model build, and
    # per-batch work outside the energy windows such as warm-ups and graph captures).
    record["generation_s"] = generation_seconds(args.store, first_row)
    record["generation_share_of_wall"] = record["generation_s"] / done["wall_s"]
    # Batch-level resume: a configuration left partial must say so and continue from there.
    record["resumed_batches_said"] = {
        key: any(f"resuming {key}: {n}/" in line for line in lines)
        for key, n in before["partial"].items()
    }
    record["batches_kept"] = all(
        after["batches"].get(key, 0) >= n for key, n in before["batches"].items()
    )
    print(f"[{step}] {record['command']}: exit {record['exit_code']} after "
          f"{record['wall_s']:.0f} s, {record['generation_s']:.0f} s of it timed generation",
          flush=True)  # fmt: skip
    for line in lines:
        print(f"    {line}", flush=True)
    return record


def main() -> None:
    args = parse()
    path = args.out / "energy_cli.json"
    steps: list[dict[str, Any]] = []
    if args.append and path.exists():
        steps = json.loads(path.read_text()).get("steps", [])
    elif "complete" in args.steps:  # a fresh record starts from an empty store
        shutil.rmtree(args.store.parent, ignore_errors=True)
    args.store.parent.mkdir(parents=True, exist_ok=True)
    for step in args.steps:
        steps.append(run_step(args, step))
    with Store(args.store) as db:
        runs = db.runs()[["id", "model"]].rename(columns={"id": "run_id"})
        configs = energy_configs(db).merge(runs, on="run_id")
    table = configs[TABLE_COLUMNS]
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "infermeter_executable": shutil.which("infermeter") or f"{sys.executable} -m infermeter",
        "infermeter_package": str(Path(infermeter.__file__).parent),
        "steps": steps,
        "configs": table.to_dict(orient="records"),
        "store": str(args.store),
    }
    rows = [
        (
            f"{s['step']}: `{s['command']}`"
            + (f" ({s['signal']} after {s['wall_s']:.0f} s)" if s["signal"] else ""),
            f"exit {s['exit_code']} in {s['wall_s']:.0f} s"
            + (
                f" ({s['generation_s']:.0f} s timed generation)"
                if s.get("generation_s") is not None
                else ""
            )
            + "; stored after: "
            + ", ".join(f"{n} {k}" for k, n in s["after"]["configs"].items())
            + f" configurations; {sum(s['after']['batches'].values())} batches"
            + ("" if s["batches_kept"] and not s["after"]["duplicate_batches"] else " (LOST)"),
            {"complete": "exit 0", "interrupted": "exit 130, resumes", "resumed": "exit 143"}[
                s["step"]
            ],
        )
        for s in steps
    ]
    said_lines = [f"- {s['step']}: {line}" for s in steps for line in s["said"]]
    write_result("energy_cli", result, rows, args.out)
    md = args.out / "energy_cli.md"
    md.write_text(
        md.read_text()
        + "\n## What each step said\n\n"
        + "\n".join(said_lines)
        + "\n\n## Per configuration in the store\n\n"
        + markdown(table)
        + "\n"
    )
    print(markdown(table), flush=True)
    print(f"written to {path} and {md}", flush=True)


if __name__ == "__main__":
    main()
