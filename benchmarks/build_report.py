"""Build docs/report.html (and a screenshot of it) from the stores the benchmarks produced.

    python benchmarks/build_report.py [--stores GLOB] [--walkthrough GLOB] [--out docs/report.html]
                                      [--cpu-store PATH]

The GPU benchmark scripts save their stores under docs/benchmarks/stores/*.sqlite; those are
read when present, beside a CPU store made on the spot, as a visitor's laptop would make it:

  - tiny-llama, tiny-gpt2 and GPT-2 small profiled on the engine and on hf (Figs. 3, 4, 8);
  - for Table 3 and Figs. 7, 9, 10: the walkthrough's GPU store (docs/walkthrough-*/, from
    examples/paper_table3_fig9.py on a GPU) when there is one, else CPU stand-ins of the
    paper's Table 1 models from the same script, on the engine and four of them served as
    APIs; either way with its user-provided HELM accuracies;
  - a short Words-to-Watts sweep of tiny-llama on the CPU (`infermeter energy`) where that
    command is present: throughput only, since a CPU has no energy counter.

Sections without data (on a CPU: every energy figure) say which command would fill them.
The page is then opened in headless Chromium: every figure must show and the console must be
clean; its screenshot is written beside the page. Provenance (device, date, commit) is in the
page's header.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # browser.py: the headless-Chromium check

from browser import check_page, find_chromium  # noqa: E402
from infermeter.backends import get_backend  # noqa: E402
from infermeter.experiments.profile import ProfileGrid, run_profile  # noqa: E402
from infermeter.report.build import ReportInputs, build_report  # noqa: E402
from infermeter.spec.catalog import get_spec  # noqa: E402
from infermeter.spec.hardware import Stack, get_accelerator  # noqa: E402
from infermeter.store.db import Store  # noqa: E402
from infermeter.store.provenance import device_description, git_commit, utc_date  # noqa: E402

EXAMPLE = ROOT / "examples" / "paper_table3_fig9.py"
DATA = ROOT / "examples" / "data"
CPU_GRID = ProfileGrid((1, 64, 128, 256), (1, 8, 16, 32), (1,), 3)


def _walkthrough():
    spec = importlib.util.spec_from_file_location("paper_table3_fig9", EXAMPLE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cpu_store(path: Path, walkthrough: bool = True) -> None:
    device = device_description(gpu=False)
    with Store(path) as store:
        for model in ("tiny-llama", "tiny-gpt2", "gpt2"):
            for backend in ("engine", "hf"):
                start = time.perf_counter()
                options = {"device": "cpu", "dtype": "float32"}
                stack = Stack(backend, get_accelerator("cpu"), dtype="float32").to_dict()
                run = run_profile(
                    store, get_spec(model), stack, get_backend(backend, **options), options,
                    CPU_GRID, device=device,
                )  # fmt: skip
                print(
                    f"{backend:7s} {model:32s} run {run.id}: {time.perf_counter() - start:5.1f} s"
                )
    if walkthrough:  # CPU stand-ins, unless the walkthrough's GPU store is used instead
        _walkthrough().build_store(path)
    for dataset in ("alpaca", "gsm8k"):
        command = [
            sys.executable, "-m", "infermeter", "energy", "tiny-llama", "--device", "cpu",
            "--dataset", dataset, "--prompts", "16", "--batch-sizes", "4,8",
            "--max-lengths", "8,16", "--store", str(path),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        print(f"energy  tiny-llama {dataset}: rc {done.returncode} {tail[0][:120]}")


def has_stand_ins(path: Path) -> bool:
    with Store(path) as store:
        return bool(store.runs().model.str.endswith("-standin").any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="docs/benchmarks/stores/*.sqlite")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.html")
    parser.add_argument("--cpu-store", type=Path, help="keep the CPU store here")
    parser.add_argument(
        "--walkthrough",
        default="docs/walkthrough-*/walkthrough.sqlite",
        help="the walkthrough's GPU store (Table 3, Figs. 7, 9, 10); none: CPU stand-ins",
    )
    args = parser.parse_args()

    gpu_stores = sorted(ROOT.glob(args.stores))
    found = list(ROOT.glob(args.walkthrough)) if args.walkthrough else []
    walk = [max(found, key=lambda p: p.stat().st_mtime)] if found else []  # the newest
    with tempfile.TemporaryDirectory() as tmp:
        # The CPU store always joins: the CPU-vs-GPU stack comparison comes from it, and the
        # walkthrough's CPU stand-ins (Table 3, Figs. 7, 9, 10) where it has no GPU store.
        path = args.cpu_store or Path(tmp) / "cpu.sqlite"
        if not path.exists():
            cpu_store(path, walkthrough=not walk)
        elif bool(walk) == has_stand_ins(path):
            sys.exit(
                f"--cpu-store {path} was made {'with' if walk else 'without'} the walkthrough's "
                f"CPU stand-ins, but the walkthrough's GPU store is "
                f"{'present' if walk else 'absent'}: pass a new --cpu-store path (or --walkthrough "
                "'' to use the stand-ins)"
            )
        stores = [*gpu_stores, *walk, path]
        provenance = [
            f"CPU runs: this CPU ({device_description(gpu=False)}) on {utc_date()[:10]} at "
            f"commit {(git_commit() or 'unknown')[:10]}"
            + ("" if walk else "; Table 1 models there are CPU stand-ins (1/8192 size)")
            + "; accuracies are user-provided (examples/data/helm_accuracies.csv)."
        ]
        if walk:
            provenance.append(
                f"Table 3 and Figs. 7, 9, 10: the walkthrough's GPU store "
                f"{walk[0].relative_to(ROOT)} (examples/paper_table3_fig9.py)."
            )
        if gpu_stores:
            provenance.append(
                "GPU runs: " + ", ".join(p.name for p in gpu_stores) + f" (under {args.stores}; "
                "device, date and commit of each run are in its captions and run table)."
            )
        report = build_report(
            ReportInputs(
                stores=stores,
                capabilities=DATA / "helm_accuracies.csv",
                queries=[str(DATA / "helm_scenarios.csv")],
                title="infermeter report: what inference costs",
                extra_provenance=provenance,
            )
        )
        page = report.write(args.out)
    drawn = [s.id for s in report.sections if s.plot is not None]
    print(
        f"{page}: {len(drawn)} figures; without data: "
        + ", ".join(s.id for s in report.sections if s.plot is None and s.missing)
    )
    chromium = find_chromium()
    if chromium is None:
        print("chromium not found: no screenshot")
        return
    check = check_page(page, screenshot=page.with_suffix(".png"))
    problems = check.empty_figures or check.console_errors
    print(
        f"chromium: {len(check.figures)} figures shown, empty {check.empty_figures}, "
        f"console errors {check.console_errors}; screenshot {check.screenshot}"
    )
    if problems or len(check.figures) != len(drawn):
        sys.exit(1)


if __name__ == "__main__":
    main()
