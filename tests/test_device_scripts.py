"""scripts/device/: the owed GPU work's scripts, run here with stub `python3` and `nvidia-smi`
first on PATH (the real programs need a GPU): steps in order within the call's limit, each
step's output, records and stores kept in $OUT/a.tgz, failures in the exit status, STEPS and
PRIOR resuming a store on the same cards and refusing other cards, user mistakes refused."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from paths import REPO

DEVICE = REPO / "scripts" / "device"

STUB_PYTHON = """#!/usr/bin/env bash
# python3 -c: the script reading a store's prefill attention (STUB_PATH answers it)
if [ "$1" = "-c" ]; then echo "${STUB_PATH-INFERMETER_PREFILL_ATTENTION=explicit}"; exit 0; fi
echo "python3 $* [prefill ${INFERMETER_PREFILL_ATTENTION-unset}]" >> "$STUB_LOG"
prev=""
for a in "$@"; do
  if [ "$prev" = "--out" ]; then mkdir -p "$a"; echo "{}" > "$a/record_$STUB_N.json"; fi
  if [ "$prev" = "--store" ]; then echo "row" >> "$a"; fi
  prev=$a
done
echo "stub says hello"
exit "${STUB_RC:-0}"
"""
STUB_SMI = """#!/usr/bin/env bash
echo "${STUB_GPU:-NVIDIA H200}"
"""


def _run(
    script: str, tmp: Path, limit: str = "300", **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run scripts/device/SCRIPT LIMIT with the stubs; returns the process and $OUT."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python3", STUB_PYTHON), ("nvidia-smi", STUB_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp / f"out{len(list(tmp.glob('out*')))}"
    full = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OUT": str(out),
        "WORK": str(tmp / "work" / "a"),
        "INFERMETER_COMMIT": "abc123",
        "STUB_LOG": str(tmp / "calls.log"),
        "STUB_N": "1",
        **env,
    }
    command = ["bash", str(DEVICE / script), limit]
    done = subprocess.run(command, cwd=REPO, env=full, capture_output=True, text=True, timeout=120)
    return done, out


def _calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _members(out: Path) -> set[str]:
    with tarfile.open(out / "a.tgz") as tar:
        return set(tar.getnames())


def test_every_step_runs_in_order_and_its_results_come_back(tmp_path: Path) -> None:
    done, out = _run("h200_owed.sh", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = _calls(tmp_path)
    assert [c.split()[1] for c in calls] == [
        "benchmarks/flex_prefill.py", "benchmarks/flex_prefill.py", "-m",
        "benchmarks/models_bench.py",
    ]  # fmt: skip
    assert "--float32" in calls[1] and "--float32" not in calls[0]
    assert "profile gpt-oss-20b --store" in calls[2] and calls[2].endswith("[prefill unset]")
    assert "--models gemma-2-9b,gpt-oss-20b" in calls[3] and "--merge" in calls[3]
    for n, name in enumerate(("flex_prefill", "profile", "models"), 1):
        assert f"step {n} ({name}): exit 0" in done.stdout
    kept = _members(out)
    assert {"a/gpu.txt", "a/docs/record_1.json", "a/gpt-oss-20b.sqlite", "a/step_3.log"} <= kept
    assert "a/docs/models_before.json" in kept  # the copy models_bench merges into
    with tarfile.open(out / "a.tgz") as tar:
        log = tar.extractfile("a/step_1.log")
        assert log is not None and b"stub says hello" in log.read()


def test_a_failing_program_is_in_the_exit_status_and_its_output_kept(tmp_path: Path) -> None:
    done, out = _run("h200_owed.sh", tmp_path, STUB_RC="3")
    assert done.returncode == 1
    assert done.stdout.count(": exit 3 after") == 3
    assert "a/step_2.log" in _members(out)


def test_too_little_time_skips_each_step_and_says_so(tmp_path: Path) -> None:
    done, out = _run("h200_owed.sh", tmp_path, limit="45")  # 25 s left after the margin
    assert done.returncode == 1 and not _calls(tmp_path)
    assert done.stdout.count("skipped, 25 s left") + done.stdout.count("skipped, 24 s left") == 3
    assert "a/gpu.txt" in _members(out)  # what there is still comes back


def _first_call(tmp: Path) -> dict[str, str]:
    """A first call's a.tgz unpacked as a carried folder: PRIOR for the next, on a fresh
    machine (another WORK)."""
    first, out = _run("h200_owed.sh", tmp)
    assert first.returncode == 0
    carried = tmp / "carried"
    with tarfile.open(out / "a.tgz") as tar:
        tar.extractall(carried, filter="data")
    (tmp / "calls.log").unlink()
    return {"PRIOR": str(carried / "a"), "WORK": str(tmp / "fresh" / "a")}


def test_a_second_call_resumes_the_store_on_the_same_cards(tmp_path: Path) -> None:
    fresh = {**_first_call(tmp_path), "STEPS": "2"}
    done, out2 = _run("h200_owed.sh", tmp_path, STUB_N="2", **fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(_calls(tmp_path)) == 1 and "step 1 (flex_prefill): not in STEPS" in done.stdout
    # resumed on the path its run recorded (a profile refuses another)
    assert _calls(tmp_path)[0].endswith("[prefill explicit]")
    with tarfile.open(out2 / "a.tgz") as tar:
        store = tar.extractfile("a/gpt-oss-20b.sqlite")
        assert store is not None and store.read() == b"row\nrow\n"
        assert "a/docs/record_1.json" in tar.getnames()  # the first call's records stay


def test_a_store_from_other_cards_is_refused(tmp_path: Path) -> None:
    prior = _first_call(tmp_path)
    done, _ = _run("h200_owed.sh", tmp_path, STUB_GPU="NVIDIA H100 80GB HBM3", **prior)
    assert done.returncode == 2 and not _calls(tmp_path)
    assert "PRIOR was measured on 1 NVIDIA H200, this machine has 1 NVIDIA H100" in done.stdout


def test_models_bench_ends_its_profile_inside_the_step(tmp_path: Path) -> None:
    """Its record is written after the profile: the profile's own limit is 60 s inside."""
    done, _ = _run("h200_x2_owed.sh", tmp_path, limit="200")  # 180 s left
    assert done.returncode == 0, done.stdout + done.stderr
    calls = _calls(tmp_path)
    assert "--tp 2" in calls[0] and calls[0].split("--timeout-s ")[1].split()[0] in ("119", "120")
    assert "llama-4-scout-17b-16e.json --tp 2" in calls[1]


@pytest.mark.parametrize(
    ("limit", "env", "says"),
    [
        ("abc", {}, "usage:"),
        ("", {}, "usage:"),
        ("300", {"STEPS": "1,3"}, "STEPS must be step numbers and spaces"),
        ("300", {"PRIOR": "/nonexistent/a"}, "PRIOR /nonexistent/a is not a folder"),
    ],
)
def test_mistakes_are_refused_before_any_step(
    tmp_path: Path, limit: str, env: dict[str, str], says: str
) -> None:
    done, _ = _run("h200_owed.sh", tmp_path, limit=limit, **env)
    assert done.returncode == 2 and says in done.stdout and not _calls(tmp_path)


def test_a_limit_with_leading_zeros_is_decimal(tmp_path: Path) -> None:
    done, _ = _run("h200_owed.sh", tmp_path, limit="0089")  # octal would be an error
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_warm_machine_s_earlier_results_are_not_resumed_without_prior(tmp_path: Path) -> None:
    first, _ = _run("h200_owed.sh", tmp_path)  # leaves its store in WORK, as a warm machine
    assert first.returncode == 0
    (tmp_path / "calls.log").unlink()
    done, out = _run("h200_owed.sh", tmp_path, STUB_N="2", STEPS="2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _calls(tmp_path)[0].endswith("[prefill unset]")  # a fresh run, not a resumed one
    with tarfile.open(out / "a.tgz") as tar:
        store = tar.extractfile("a/gpt-oss-20b.sqlite")
        assert store is not None and store.read() == b"row\n"
        assert "a/docs/record_1.json" not in tar.getnames()


def test_a_prior_inside_work_or_a_foreign_work_is_refused_not_deleted(tmp_path: Path) -> None:
    first, _ = _run("h200_owed.sh", tmp_path)
    assert first.returncode == 0
    work = tmp_path / "work" / "a"
    done, _ = _run("h200_owed.sh", tmp_path, STEPS="2", PRIOR=str(work))
    assert done.returncode == 2 and "is inside WORK" in done.stdout
    assert (work / "gpt-oss-20b.sqlite").exists()  # the earlier call's store is kept
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    done, _ = _run("h200_owed.sh", tmp_path, WORK=str(foreign))
    assert done.returncode == 2 and "did not make" in done.stdout
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_work_that_is_a_file_or_inside_prior_is_refused_and_kept(tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("keep me")
    done, _ = _run("h200_owed.sh", tmp_path, WORK=str(note))
    assert done.returncode == 2 and "is not a folder" in done.stdout
    assert note.read_text() == "keep me"
    prior = tmp_path / "prior"
    (prior / "a").mkdir(parents=True)
    (prior / "a" / "gpu.txt").write_text("1 NVIDIA H200\n")
    (prior / "a" / "store.sqlite").write_text("rows")
    done, _ = _run("h200_owed.sh", tmp_path, PRIOR=str(prior), WORK=str(prior / "a"))
    assert done.returncode == 2 and "is inside PRIOR" in done.stdout
    assert (prior / "a" / "store.sqlite").read_text() == "rows"
