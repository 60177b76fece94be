"""The benchmark scripts' options that read an earlier record (--merge, --summary-from,
--table-from, --reprice, --merge-only): a missing path, a folder, text that is not JSON, JSON
that is not such a record, or one record named twice is one line naming the option, the path
and the problem (exit 2), not a traceback (a user review). Each script runs in its own
process, as a user runs it; nothing is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paths import REPO

# (script, its options before the path, the option named in the error)
READERS = [
    ("heldout_bench.py", ["--merge"], "--merge"),
    ("heldout_bench.py", ["--reprice"], "--reprice"),
    ("bias_diagnosis.py", ["--summary-from"], "--summary-from"),
    ("decode_breakdown.py", ["--table-from"], "--table-from"),
    ("models_bench.py", ["--merge"], "--merge"),
]


def run_script(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """benchmarks/`script` with `args`, as `python benchmarks/SCRIPT ...` from `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "benchmarks" / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(("script", "options", "option"), READERS)
def test_a_missing_or_broken_record_is_one_line(
    tmp_path: Path, script: str, options: list[str], option: str
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"models": [')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    cases = [
        (tmp_path / "absent.json", "no such file"),
        (broken, "not valid JSON (Expecting value, line 1 column 13)"),
        (listed, "JSON but not a record (an object), a list"),
        (tmp_path, "a folder, not a record"),
    ]
    for path, problem in cases:
        result = run_script(script, *options, path, "--out", tmp_path / "out", cwd=tmp_path)
        assert_one_line_error(result, f"{script}: error: {option} {path}: {problem}")
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    ("script", "option", "needs"),
    [
        ("heldout_bench.py", "--merge", "models"),
        ("bias_diagnosis.py", "--summary-from", "device, date, commit, model, pe_repeatability"),
        ("decode_breakdown.py", "--table-from", "device, date, commit, models"),
    ],
)
def test_a_record_of_another_kind_is_one_line(
    tmp_path: Path, script: str, option: str, needs: str
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"something": "else"}))
    result = run_script(script, option, other, "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(result, f"{option} {other}: not the record this option takes: no {needs}")


@pytest.mark.parametrize(
    ("script", "option", "lacks"),
    [
        ("heldout_bench.py", "--merge", "rows, profile_wall_s"),
        ("heldout_bench.py", "--reprice", "rows, profile_wall_s"),
        ("decode_breakdown.py", "--table-from", "floor_s, eager_tpot_s"),
        ("models_bench.py", "--merge", "command"),
    ],
)
def test_another_scripts_record_with_models_is_one_line(
    tmp_path: Path, script: str, option: str, lacks: str
) -> None:
    """A fresh-eyes check gave heldout's --merge the models record: KeyError tracebacks, and
    models_bench --render wrote a table of 'profile failed' rows from heldout.json."""
    other = tmp_path / "other.json"  # shaped like another script's record: models, no its keys
    other.write_text(json.dumps({"device": "d", "date": "t", "commit": "c",
                                 "models": [{"model": "m"}]}))  # fmt: skip
    extra = ["--render"] if script == "models_bench.py" else []
    result = run_script(script, *extra, option, other, "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(
        result, f"{option} {other}: not the record this option takes: a model without {lacks}"
    )
    assert not (tmp_path / "out").exists()


def test_heldout_merge_refuses_a_record_named_twice(tmp_path: Path) -> None:
    """--merge A,A would count A's models twice; a.json and its absolute path are one file."""
    record = tmp_path / "a.json"
    entry = {"model": "m", "rows": [], "profile_wall_s": 1.0}
    record.write_text(json.dumps({"device": "d", "date": "t", "commit": "c", "models": [entry]}))
    for twice, second in (("a.json,a.json", "a.json"), (f"a.json,{record}", str(record))):
        result = run_script("heldout_bench.py", "--merge", twice, "--out", tmp_path, cwd=tmp_path)
        assert_one_line_error(result, f"--merge {second}: given twice (as a.json too)")
    assert not (tmp_path / "heldout.json").exists()
    result = run_script("heldout_bench.py", "--merge", f"a.json,{record}x", cwd=tmp_path)
    assert_one_line_error(result, f"--merge {record}x: no such file")


def test_engine_bench_merge_only_without_a_record_is_one_line(tmp_path: Path) -> None:
    result = run_script("engine_bench.py", "--merge-only", "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(result, f"--merge-only {tmp_path / 'engine.json'}: no such file")


def test_a_summary_under_another_name_leaves_the_measured_record(tmp_path: Path) -> None:
    # pe_low_llama-7b holds sweeps measured at d2c4f87 against that commit's knots; summarised
    # again under another name, the measured record is untouched and the new one says which
    # commit summarised it and against which knots.
    measured = tmp_path / "pe_low_llama-7b.json"
    measured.write_text((REPO / "docs" / "benchmarks" / measured.name).read_text())
    before = measured.read_text()
    result = run_script(
        "bias_diagnosis.py", "--summary-from", measured, "--name", "again", "--out", tmp_path,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert measured.read_text() == before
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["commit"] == json.loads(before)["commit"]  # the sweeps' own commit
    assert again["pe_repeatability"]["first_s"] == json.loads(before)["pe_repeatability"]["first_s"]
    table = (tmp_path / "again.md").read_text()
    assert "| summary | the sweeps as measured at " in table and "summarised again" in table


def test_heldout_leaves_a_stub_that_reprice_accepts(tmp_path: Path) -> None:
    """A held-out run cut off after measuring can still be recorded: the stub it writes
    before measuring names every query's shape and passes --reprice's checks."""
    import importlib.util
    import json

    import pandas as pd

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "heldout_bench.py"
    spec = importlib.util.spec_from_file_location("heldout_bench_stub", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    queries = bench.draw_queries(2048, {1, 353, 737}, 6, seed=15)
    stub = bench.stub_record("llama-7b", 140.0, queries)
    (tmp_path / "stub.json").write_text(json.dumps(stub))
    record = bench.read_record(
        tmp_path / "stub.json", "--reprice", ("models",), bench.HELDOUT_MODEL
    )
    (entry,) = record["models"]
    assert entry["profile_wall_s"] == 140.0
    shapes = pd.DataFrame(entry["rows"]).set_index("id")["shape"]
    assert list(shapes) == list(queries.set_index("id")["shape"])
    assert set(shapes) == {"workload", "uniform"}
    assert {"device", "date", "commit"} <= set(record)


def test_heldout_reprice_of_a_merged_record_keeps_each_models_provenance(tmp_path: Path) -> None:
    """Repriced, each model of a merged record says the day it was measured, not the merge's
    joined dates (7B and 13B of 15d0f9f were measured on different days)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "heldout_bench.py"
    spec = importlib.util.spec_from_file_location("heldout_bench_merge", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    entry = {"model": "m", "rows": [], "profile_wall_s": 1.0}
    for day in ("2026-12-03", "2026-12-04"):
        record = {"device": "H200", "date": day, "commit": "c", "models": [entry]}
        (tmp_path / f"{day}.json").write_text(json.dumps(record))
    merged = bench.merge(
        [tmp_path / "2026-12-03.json", tmp_path / "2026-12-04.json"], "both", tmp_path
    )
    record = json.loads(merged.with_suffix(".json").read_text())
    assert record["date"] == "2026-12-03 / 2026-12-04"
    dates = [bench.measured_with(record, e)["date"] for e in record["models"]]
    assert dates == ["2026-12-03", "2026-12-04"]
    alone = {"device": "H200", "date": "2026-12-05", "commit": "c", "models": [entry]}
    assert bench.measured_with(alone, entry)["date"] == "2026-12-05"


def test_heldout_measure_resumes_a_cut_off_file(tmp_path: Path) -> None:
    """A measuring run cut off (a device call's time limit) is finished by running it again:
    the rows already there are kept as they are, the rest measured (GPT-2 on this CPU)."""
    queries = tmp_path / "queries.csv"
    pd.DataFrame({"id": [0, 1, 2], "prompt_tokens": [8, 5, 12], "output_tokens": [2, 3, 1]}).to_csv(
        queries, index=False
    )
    measured = tmp_path / "measured.csv"
    kept = {"id": 1, "prompt_tokens": 5, "output_tokens": 3, "measured_s": 123.0,
            "trials_s": "[123.0, 124.0, 125.0]", "alone": True}  # fmt: skip
    pd.DataFrame([kept]).to_csv(measured, index=False)
    result = run_script(
        "heldout_bench.py", "--measure", "gpt2", "--queries-file", queries,
        "--measured-file", measured, "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 queries already measured" in result.stdout
    rows = pd.read_csv(measured).set_index("id")
    assert sorted(rows.index) == [0, 1, 2]
    assert rows.loc[1, "measured_s"] == 123.0  # kept, not measured again
    assert json.loads(rows.loc[1, "trials_s"]) == [123.0, 124.0, 125.0]
    for new in (0, 2):
        assert 0 < rows.loc[new, "measured_s"] < 100
        assert len(json.loads(rows.loc[new, "trials_s"])) == 3
