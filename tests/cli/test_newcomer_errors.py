"""What a new user met in the store, fit, export and models verbs: one line and exit code 2
for a mistake, never a traceback or an empty store made on the spot, and words that count
what they say they count (a point's trials are measurements, not points).

Stores are built from synthetic points, as a profile stores them, so nothing here depends on
how fast this machine runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_runner import assert_one_line, invoke
from infermeter.backends.base import Measurement, Point
from infermeter.experiments.profile import ProfileGrid
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from report_store import add_energy_rows, energy_rows

PROMPTS, OUTPUTS, TRIALS = (1, 16, 64), (1, 8, 16), 2
POINTS_COLUMNS = "prompt_tokens, output_tokens, runtime_s"


def t(p: int, o: int) -> float:
    return 0.042 + 0.0005 * p + 0.003 * (o - 1)


def profile_store(path: Path, slower: float = 1.0) -> Path:
    """One complete engine run: 9 points of 2 trials each, 18 measurements (each `slower`
    times t(p, o)); the same run key in every store."""
    spec = get_spec("tiny-llama")
    grid = ProfileGrid(PROMPTS, OUTPUTS, (1,), TRIALS)
    with Store(path) as db:
        run, _ = db.open_run(key="profile", model=spec.name, spec=spec.to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid=grid.to_dict(), device="cpu: test")  # fmt: skip
        measured = [
            (Point(p, o, 1, k), Measurement(t(p, o) * (1 + 0.01 * k) * slower))
            for p in PROMPTS
            for o in OUTPUTS
            for k in range(TRIALS)
        ]
        db.record_points(run.id, measured)
        db.set_run_status(run.id, "complete")
    return path


def energy_store(path: Path, configurations: bool = True) -> Path:
    """One energy run (`infermeter energy`), with the configuration rows it stores or none."""
    spec = get_spec("tiny-llama")
    with Store(path) as db:
        run, _ = db.open_run(key="energy", model=spec.name, spec=spec.to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid={"experiment": "energy",
                                   "workload": {"dataset": "gsm8k", "prompts": 16}},
                             device="cpu: test")  # fmt: skip
        if configurations:
            add_energy_rows(db, run.id, energy_rows())
        db.set_run_status(run.id, "complete")
    return path


def points_file(path: Path, **rename: str) -> Path:
    rows = [(p, o, k, t(p, o)) for p in PROMPTS for o in OUTPUTS for k in range(TRIALS)]
    frame = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])
    frame.rename(columns=rename).to_csv(path, index=False)
    return path


# ---- B: a mistyped store is never made ---------------------------------------------------------


def test_a_mistyped_store_is_not_made_by_any_verb(tmp_path: Path) -> None:
    typo = tmp_path / "typo.sqlite"
    for verb in (["fit"], ["fit", "--overhead", "0.01"], ["runs"], ["show"], ["export"]):
        extra = ["--output", tmp_path / "out.csv"] if verb == ["export"] else []
        result = invoke(*verb, "--store", typo, *extra)
        assert_one_line(result, f"store {typo} does not exist; check --store")
        assert not typo.exists(), verb
    assert not (tmp_path / "out.csv").exists()


def test_merge_checks_its_sources_before_making_the_target(tmp_path: Path) -> None:
    good = profile_store(tmp_path / "good.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database\n")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    target = tmp_path / "m3.sqlite"
    for sources, fragment in (
        ([tmp_path / "nonexist.sqlite"], "no store at"),
        ([junk], "not an infermeter store"),
        ([good, junk], "not an infermeter store"),  # a good source first made it before
        ([good, empty], "empty"),
    ):
        assert_one_line(invoke("merge", target, *sources), fragment)
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("m3")], sources
    merged = invoke("merge", target, good)
    assert merged.exit_code == 0, merged.output
    before = target.read_bytes()
    assert_one_line(invoke("merge", target, junk), "not an infermeter store")
    assert target.read_bytes() == before  # a target that was there stays, untouched


# ---- C, D: models --show -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-sizes", "-3"], "batch sizes must be positive, got -3"),
        (["--batch-sizes", "1,0"], "batch sizes must be positive, got 0"),
        (["--context", "-5"], "--context must be positive, got -5"),
        (["--context", "0"], "--context must be positive, got 0"),
        (["--context", "4096"], "--context 4096 exceeds gpt2's context of 1024 tokens"),
        (["--dtype", "int4"], "unknown dtype 'int4' for gpt2; use bfloat16, float16, float32 or"),
    ],
)
def test_models_show_refuses_impossible_sizes_in_one_line(args: list[str], fragment: str) -> None:
    assert_one_line(invoke("models", "--show", "gpt2", *args), fragment)


@pytest.mark.parametrize(
    ("backend", "dtype"), [("engine", "int4"), ("engine", "float8"), ("hf", "float8")]
)
def test_profile_offers_only_the_dtypes_its_backend_runs(
    tmp_path: Path, backend: str, dtype: str
) -> None:
    """float8 is a dtype the catalogs price, not one a local backend runs: never offered."""
    store = tmp_path / "s.sqlite"
    result = invoke("profile", "tiny-llama", "--backend", backend, "--dtype", dtype,
                    "--store", store)  # fmt: skip
    assert_one_line(result, f"the {backend} backend runs bfloat16, float16 or float32, not {dtype}")
    assert "--dtype bfloat16" in result.output
    assert not store.exists()  # refused before a store is made


def test_models_show_uses_a_context_the_model_has() -> None:
    for model, context in (("gpt2", 1024), ("tiny-llama", 512), ("llama-7b", 2048)):
        result = invoke("models", "--show", model)
        assert result.exit_code == 0, result.output
        assert f"One decode step at context {context}" in result.stdout, result.stdout
        assert f"KV cache at {context} tokens" in result.stdout
    chosen = invoke("models", "--show", "gpt2", "--context", "512", "--batch-sizes", "1")
    assert chosen.exit_code == 0 and "One decode step at context 512" in chosen.stdout


# ---- E1: export of an energy run ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--context", "5"], "--context"),
        (["--dtype", "int4", "--batch-sizes", "-1"], "--dtype, --batch-sizes"),
    ],
)
def test_models_options_of_show_are_refused_without_it(args: list[str], named: str) -> None:
    assert_one_line(invoke("models", *args), f"{named} only apply to --show MODEL")
    listed = invoke("models", "--family", "llama")  # the catalog alone still lists
    assert listed.exit_code == 0, listed.output


def test_export_of_an_energy_run_writes_its_configurations(tmp_path: Path) -> None:
    store = energy_store(tmp_path / "en.sqlite")
    output = tmp_path / "en.csv"
    result = invoke("export", "--store", store, "--output", output)
    assert result.exit_code == 0, result.output
    written = pd.read_csv(output)
    assert len(written) == len(energy_rows()) > 0
    assert {"batch", "max_len", "j_per_token", "status"} <= set(written.columns)
    assert f"energy run: its {len(written)} configurations" in result.stdout
    helm = tmp_path / "en.helm.json"
    assert_one_line(invoke("export", "--store", store, "--helm", helm), "energy run", "--output")
    assert not helm.exists()


def test_export_of_a_run_with_nothing_stored_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "en.csv"
    store = energy_store(tmp_path / "en0.sqlite", configurations=False)
    assert_one_line(
        invoke("export", "--store", store, "--output", output), "no configurations stored yet"
    )
    assert not output.exists()


# ---- E2, E3: fit --points ---------------------------------------------------------------------


def test_fit_points_names_a_fitted_model_and_the_columns_it_needs(tmp_path: Path) -> None:
    okpts = points_file(tmp_path / "okpts.csv")
    model = tmp_path / "m.json"
    made = invoke("fit", "--points", okpts, "--output", model)
    assert made.exit_code == 0, made.output
    message = assert_one_line(
        invoke("fit", "--points", model), "is a fitted model", "not a points file", POINTS_COLUMNS
    )
    assert "queries file" not in message and "Mixing dicts" not in message
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "x", "rows": 3}))
    assert_one_line(invoke("fit", "--points", other), "not a points file", POINTS_COLUMNS)
    renamed = points_file(tmp_path / "p.csv", prompt_tokens="prompt")
    message = assert_one_line(invoke("fit", "--points", renamed), "lacks column(s) prompt_tokens")
    assert POINTS_COLUMNS in message and "each query" not in message


def test_a_cell_without_a_value_is_named_so(tmp_path: Path) -> None:
    # A fresh-eyes check: a blank output_tokens cell was "output_tokens = nan is missing".
    okpts = points_file(tmp_path / "okpts.csv")
    model = tmp_path / "m.json"
    assert invoke("fit", "--points", okpts, "--output", model).exit_code == 0
    queries = tmp_path / "q.csv"
    queries.write_text("prompt_tokens,output_tokens\n8,4\n16,\n")
    message = assert_one_line(
        invoke("estimate", "--profile", model, "--queries", queries),
        "row 2, output_tokens has no value",
    )
    assert "nan" not in message
    lines = tmp_path / "q.jsonl"  # a row without the key, and a null
    for rows in ('{"prompt_tokens": 8, "output_tokens": 4}\n{"prompt_tokens": 16}\n',
                 '{"prompt_tokens": 8, "output_tokens": 4}\n{"prompt_tokens": 16, '
                 '"output_tokens": null}\n'):  # fmt: skip
        lines.write_text(rows)
        got = invoke("estimate", "--profile", model, "--queries", lines)
        assert_one_line(got, "row 2, output_tokens has no value")


def test_fit_points_refuses_save_and_a_run(tmp_path: Path) -> None:
    okpts = points_file(tmp_path / "okpts.csv")
    store = tmp_path / "s.sqlite"
    assert_one_line(
        invoke("fit", "--points", okpts, "--save", "--store", store), "--save", "--output"
    )
    assert_one_line(invoke("fit", "1", "--points", okpts, "--store", store), "not both")
    assert not store.exists()
    fine = invoke("fit", "--points", okpts, "--no-save")
    assert fine.exit_code == 0, fine.output


# ---- E4: trials are measurements, not points -----------------------------------------------------


def test_show_runs_and_merge_count_points_and_measurements_apart(tmp_path: Path) -> None:
    store = profile_store(tmp_path / "j.sqlite")
    shown = invoke("show", "--store", store)
    assert shown.exit_code == 0, shown.output
    assert "all 18 measurements taken" in shown.stdout
    assert "9 points from 18 ok measurements" in shown.stdout
    assert "18 points" not in shown.stdout
    listed = invoke("runs", "--store", store)
    assert listed.exit_code == 0, listed.output
    header = next(line for line in listed.stdout.splitlines() if "measurements" in line)
    row = next(line for line in listed.stdout.splitlines() if "tiny-llama" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    names = [c.strip() for c in header.split("┃") if c.strip()]
    counts = dict(zip(names, cells, strict=True))
    assert (counts["points"], counts["measurements"], counts["ok_measurements"]) == (
        "9",
        "18",
        "18",
    )
    merged = invoke("merge", tmp_path / "all.sqlite", store)
    assert merged.exit_code == 0, merged.output
    assert "copied 18 measurements" in merged.stdout and "18 points" not in merged.stdout


# ---- a fresh-eyes check, 2026-12-03: errors that named the wrong thing ----------------------


def test_errors_name_the_flag_and_the_fix(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    profile = ["profile", "tiny-llama", "--store", store]
    assert_one_line(invoke(*profile, "--output-sizes", "1,-4"),
                    "output lengths (--output-sizes) must be positive, got -4")  # fmt: skip
    assert_one_line(
        invoke(*profile, "--backend", "vllm"),
        "unknown backend 'vllm'; available: engine, hf, openai; vllm serves an "
        "OpenAI-compatible API: profile it with --backend openai --base-url URL",
    )
    assert_one_line(invoke(*profile, "--backend", "nope"), "available: engine, hf, openai")
    assert "--base-url" not in invoke(*profile, "--backend", "nope").output
    assert not store.exists()  # each refused before a store was made

    runs = profile_store(tmp_path / "one.sqlite")
    for given in (["1"], ["1", "1"]):
        assert_one_line(
            invoke("compare", *given, "--store", runs),
            "compare needs two or more runs to set side by side; got one.sqlite#1 (tiny-llama, "
            "engine on ",
            "pass another RUN id of tiny-llama",
        )
    model = tmp_path / "m.json"
    assert invoke("fit", "1", "--store", runs, "--output", model).exit_code == 0
    estimate = ["estimate", "--profile", model, "--prompt-tokens", "16", "--output-tokens", "4"]
    assert_one_line(
        invoke(*estimate, "--price-per-hour", "-3"),
        "--price-per-hour must be a positive number ($ an accelerator-hour), got -3",
    )
    assert_one_line(
        invoke(*estimate, "--power-watts", "0"),
        "--power-watts must be a positive number (W an accelerator), got 0",
    )
    assert invoke(*estimate, "--price-per-hour", "2.5").exit_code == 0
