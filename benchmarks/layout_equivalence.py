"""Same results before and after a move of code: the README's main job and every benchmark's
CPU --quick mode, run from two commits, their stores and JSON compared by content.

    PYTHONPATH=src python benchmarks/layout_equivalence.py --ref 6c78298 [--steps main,heldout]

Each step runs in a separate process from a git worktree of each commit (the reference in a
temporary worktree, the other this checkout), its outputs copied aside. Measured figures differ
run to run, so "content" is what does not: every SQLite file's tables, columns and row counts
and its rows over the columns that hold no measurement (integers and text other than times,
hosts, pids, commits and free-form JSON); every JSON file's key paths (list lengths included)
and its non-float values other than dates, commits, devices and paths; every CSV's header.
Renames the change intends are passed as --rename OLD=NEW and applied to the reference first.
Writes docs/benchmarks/layout_equivalence.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import write_result  # noqa: E402

PY = sys.executable
# step -> (command run in the tree, paths (relative to the tree or absolute) it writes)
STEPS: dict[str, tuple[list[str], list[str]]] = {
    "main": (["-m", "infermeter", "profile", "gpt2", "--store", "{work}/main.sqlite",
              "--output", "{work}/main.json"], ["{work}"]),
    "heldout": (["benchmarks/heldout_bench.py", "--quick", "--work", "{work}"],
                ["docs/benchmarks/heldout_quick.json"]),
    "bias": (["benchmarks/bias_diagnosis.py", "--quick"],
             ["docs/benchmarks/bias_diagnosis_quick.json"]),
    "energy": (["benchmarks/energy_bench.py", "--quick"], ["/tmp/infermeter-energy-quick"]),
    "energy_cli": (["benchmarks/energy_cli_bench.py", "--quick"],
                   ["/tmp/infermeter-energy-cli-quick"]),
    "models": (["benchmarks/models_bench.py", "--quick"], ["/tmp/infermeter-models-quick"]),
    "meter_tp": (["benchmarks/meter_tp_bench.py", "--quick"],
                 ["/tmp/infermeter-meter-tp-quick"]),
    "torchrun": (["benchmarks/torchrun_bench.py", "--quick"],
                 ["/tmp/infermeter-torchrun-quick"]),
}  # fmt: skip
# Differences that follow the machine's speed, not the code, per step: (pattern, why).
TIMING: dict[str, tuple[str, str]] = {
    "energy": (
        r"/power_samples/(rows|content)",
        "power is sampled every 100 ms, so the samples' count follows the run's duration",
    ),
    "energy_cli": (
        r"energy_cli\.json/(configs|steps\[[12]\])|energy_cli/infermeter\.sqlite/",
        "steps 2 and 3 stop the command after fixed seconds (--interrupt-after, --resume-for): "
        "how many batches and configurations it stored by then (and so the store's rows and its "
        "run's status) follows the machine's speed",
    ),
}
VOLATILE = re.compile(
    r"(^|_)(at|time|times|when|since|date|pid|host|hostname|commit|json|info|version|versions|"
    r"path|paths|dir|device|devices|detail|created|updated|started|ended|elapsed|python|torch|"
    r"cpu_threads|note|notes|seed|command|cmd|argv|out|store|stores|uuid|name_on_disk|output|"
    r"output_tail|tail|stdout|stderr|log|printed|validation_printed|package)$"
)


def run_steps(tree: Path, steps: list[str], dest: Path) -> dict[str, dict[str, Any]]:
    """Run each step from `tree`; copy what it wrote into dest/<step>/."""
    results = {}
    for step in steps:
        command, outputs = STEPS[step]
        work = dest / f"{step}.work"
        work.mkdir(parents=True, exist_ok=True)
        for out in outputs:
            target = Path(out.format(work=work))
            target = target if target.is_absolute() else tree / target
            if target != work and target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        argv = [PY, *(part.format(work=work) for part in command)]
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONUNBUFFERED": "1"}
        print(f"[{tree.name}] {step}: {' '.join(argv[1:])}", flush=True)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        (dest / f"{step}.log").write_text(proc.stdout + proc.stderr)
        results[step] = {"rc": proc.returncode, "wall_s": round(wall, 1)}
        print(f"  rc={proc.returncode} in {wall:.0f} s", flush=True)
        for out in outputs:
            source = Path(out.format(work=work))
            source = source if source.is_absolute() else tree / source
            copy = dest / step / source.name
            if source.is_dir() and source != work:
                shutil.copytree(source, copy, dirs_exist_ok=True)
            elif source.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)
        if work.exists():
            shutil.copytree(work, dest / step / "work", dirs_exist_ok=True)
    return results


COMMIT = re.compile(r"\b[0-9a-f]{40}\b")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def stable_text(value: Any) -> Any:
    """A commit hash is the run's, numbers inside text are measurements: both blanked."""
    if isinstance(value, str):
        return NUMBER.sub("#", COMMIT.sub("<commit>", value))
    return value


def sqlite_content(path: Path) -> dict[str, Any]:
    """Tables -> columns, row count, sorted rows over the stable columns."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = {}
    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    for table in sorted(tables):
        columns = con.execute(f'pragma table_info("{table}")').fetchall()
        names = [c[1] for c in columns]
        stable = [
            c[1] for c in columns
            if c[2].upper() in ("INTEGER", "TEXT", "") and not VOLATILE.search(c[1].lower())
        ]  # fmt: skip
        rows = []
        if stable:
            select = ", ".join(f'"{c}"' for c in stable)
            rows = sorted(
                (
                    [stable_text(v) for v in r]
                    for r in con.execute(f'select {select} from "{table}"')
                ),
                key=repr,
            )
        count = con.execute(f'select count(*) from "{table}"').fetchone()[0]
        out[table] = {"columns": names, "rows": count, "compared": stable, "content": rows}
    con.close()
    return out


def json_content(value: Any, path: str = "") -> dict[str, Any]:
    """Key path -> value for non-float leaves, '<float>' for floats, list lengths kept."""
    out: dict[str, Any] = {}
    key = path.rsplit(".", 1)[-1].split("[")[0].lower()
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(json_content(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(value, list) and VOLATILE.search(key):
        out[path] = "<volatile>"
    elif isinstance(value, list):
        out[f"{path}#len"] = len(value)
        for i, v in enumerate(value):
            out.update(json_content(v, f"{path}[{i}]"))
    elif isinstance(value, float) or VOLATILE.search(key):
        out[path] = "<measured>" if isinstance(value, float) else "<volatile>"
    else:
        out[path] = stable_text(value)
    return out


def content(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for file in sorted(root.rglob("*")):
        rel = str(file.relative_to(root))
        if file.suffix in (".sqlite", ".db"):
            out[rel] = sqlite_content(file)
        elif file.suffix == ".json":
            try:
                out[rel] = json_content(json.loads(file.read_text()))
            except json.JSONDecodeError:
                out[rel] = "<not json>"
        elif file.suffix == ".csv":
            out[rel] = file.read_text().splitlines()[:1]
    return out


def renamed(value: Any, renames: dict[str, str]) -> Any:
    text = json.dumps(value, default=str)
    for old, new in renames.items():
        text = text.replace(old, new)
    return json.loads(text)


def new_empty_tables(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Tables a store has only after, and empty: created up front by the schema's migrations
    (store/schema.py), where the code before created them on first use."""
    out = []
    for file, tables in after.items():
        if file.endswith(".sqlite") and isinstance(tables, dict) and file in before:
            for table, info in tables.items():
                if table not in before[file] and info["rows"] == 0:
                    out.append(f"/{file}/{table}")
    return out


def differences(ref: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(ref, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(ref) | set(new), key=str):
            if k not in new:
                out.append(f"{where}/{k}: only before")
            elif k not in ref:
                out.append(f"{where}/{k}: only after")
            else:
                out.extend(differences(ref[k], new[k], f"{where}/{k}"))
        return out
    return [] if ref == new else [f"{where}: {str(ref)[:160]} -> {str(new)[:160]}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the commit before the move")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--rename", action="append", default=[], help="OLD=NEW, intended")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs here")
    parser.add_argument(
        "--before-only", action="store_true", help="run the reference only (into --keep)"
    )
    parser.add_argument(
        "--reuse-before", action="store_true", help="--keep already holds the reference's run"
    )
    parser.add_argument(
        "--reuse-after", default="", help="steps whose run after is already in --keep (a,b)"
    )
    parser.add_argument("--compare-only", action="store_true", help="reuse every step's runs")
    parser.add_argument("--note", default="", help="a line for the record (e.g. reused runs)")
    args = parser.parse_args()
    steps = args.steps.split(",")
    renames = dict(r.split("=", 1) for r in args.rename)
    tree = HERE.parent
    keep = args.keep or Path(tempfile.mkdtemp(prefix="layout-eq-"))
    if args.reuse_before:
        ref_runs = json.loads((keep / "before" / "runs.json").read_text())
    else:
        ref_tree = Path(tempfile.mkdtemp(prefix="layout-ref-")) / "ref"
        subprocess.run(["git", "-C", str(tree), "worktree", "add", "--detach", str(ref_tree),
                        args.ref], check=True, capture_output=True)  # fmt: skip
        try:
            ref_runs = run_steps(ref_tree, steps, keep / "before")
        finally:
            subprocess.run(
                ["git", "-C", str(tree), "worktree", "remove", "--force", str(ref_tree)],
                check=False,
            )
        (keep / "before" / "runs.json").write_text(json.dumps(ref_runs))
    if args.before_only:
        print("reference run kept in", keep)
        return
    reuse = steps if args.compare_only else [s for s in args.reuse_after.split(",") if s]
    runs_file = keep / "after" / "runs.json"
    new_runs = json.loads(runs_file.read_text()) if reuse and runs_file.exists() else {}
    new_runs = {k: v for k, v in new_runs.items() if k in reuse}
    new_runs.update(run_steps(tree, [s for s in steps if s not in reuse], keep / "after"))
    runs_file.write_text(json.dumps(new_runs))
    per_step = {}
    for step in steps:
        before = renamed(content(keep / "before" / step), renames)
        after = content(keep / "after" / step)
        created = new_empty_tables(before, after)
        diff = [
            d for d in differences(before, after) if d.removesuffix(": only after") not in created
        ]
        pattern, why = TIMING.get(step, ("$^", ""))
        timing = [d for d in diff if re.search(pattern, d)]
        diff = [d for d in diff if d not in timing]
        per_step[step] = {
            "rc_before": ref_runs[step]["rc"], "rc_after": new_runs[step]["rc"],
            "wall_before_s": ref_runs[step]["wall_s"], "wall_after_s": new_runs[step]["wall_s"],
            "files_compared": len(after), "differences": diff,
            "new_empty_tables": created,
            "timing_dependent": {"differences": timing, "why": why} if timing else {},
        }  # fmt: skip
        print(f"{step}: {len(after)} files, {len(diff)} differences", flush=True)
        for line in diff[:20]:
            print("   ", line)
    same = all(s["differences"] == [] and s["rc_before"] == s["rc_after"] == 0
               for s in per_step.values())  # fmt: skip
    rows = [
        (
            step,
            f"rc {s['rc_before']}/{s['rc_after']}, {s['files_compared']} files, "
            f"{len(s['differences'])} differences"
            + (f"; {len(s['new_empty_tables'])} empty tables created up front by the "
               "migrations" if s["new_empty_tables"] else "")
            + (f"; {len(s['timing_dependent']['differences'])} timing-dependent: "
               f"{s['timing_dependent']['why']}" if s["timing_dependent"] else ""),
            "0 differences",
        )
        for step, s in per_step.items()
    ]  # fmt: skip
    if args.note:
        rows.append(("note", args.note, ""))
    write_result(
        "layout_equivalence",
        {"ref": args.ref, "renames": renames, "note": args.note, "same_content": same,
         "steps": per_step,
         "outputs_kept_in": str(keep)},
        rows,
    )  # fmt: skip
    print("same content" if same else "DIFFERENT", "; outputs in", keep)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
