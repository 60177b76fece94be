"""The command line as a user meets it: real store, real hf backend on tiny models, real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cli_runner import invoke
from infermeter.store.db import SCHEMA_VERSION
from paths import DATA

DATA = DATA
HELM_ESTIMATE = [
    "estimate",
    "--profile",
    str(DATA / "helm_efficiency_sample.json"),
    "--model",
    "openai/davinci",
    "--prompt-tokens",
    "1",
    "--output-tokens",
    "1",
]
# a loaded machine's timings may fit poorly (R² < 0); the fit is not the subject here
SMALL_GRID = ["--prompt-sizes", "1,16", "--output-sizes", "1,4,8", "--trials", "2",
              "--accept-poor-fit"]  # fmt: skip


def assert_user_error(result, fragment: str) -> None:
    """Exit code 2 and one line naming the problem, never a traceback."""
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert fragment in message, message
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    store, model = tmp / "s.sqlite", tmp / "model.json"
    result = invoke(
        "profile", "tiny-llama", "--device", "cpu", *SMALL_GRID, "--store", store, "--output", model
    )
    assert result.exit_code == 0, result.output
    assert "R²" in result.stdout and "estimates on" in result.stdout
    return store, model


def test_profile_stores_every_point_and_fits(profiled: tuple[Path, Path]) -> None:
    store, model = profiled
    con = sqlite3.connect(store)
    statuses = [r[0] for r in con.execute("SELECT status FROM points")]
    assert len(statuses) == 2 * 3 * 2 and set(statuses) == {"ok"}
    fitted = json.loads(model.read_text())
    assert fitted["prompt_sizes"] == [1, 16] and fitted["per_output_token"] >= 0
    assert fitted["stack"]["accelerator"]["name"] == "cpu"


def test_rerun_resumes_without_measuring_again(profiled: tuple[Path, Path]) -> None:
    store, _ = profiled
    before = pd.read_sql_query("SELECT * FROM points", sqlite3.connect(store))
    result = invoke("profile", "tiny-llama", "--device", "cpu", *SMALL_GRID, "--store", store)
    assert result.exit_code == 0 and "20/20 measurements already stored" in result.stdout
    assert "another --store measures afresh" in " ".join(result.stdout.split())
    after = pd.read_sql_query("SELECT * FROM points", sqlite3.connect(store))
    pd.testing.assert_frame_equal(before, after)


def test_show_runs_fit_export(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = profiled
    assert "tiny-llama" in invoke("runs", "--store", store).stdout
    shown = invoke("show", "--store", store)
    assert shown.exit_code == 0 and "PE (s)" in shown.stdout
    # A refit with other settings, written out. The tiny CPU profile's 12 points are noise on
    # a loaded machine, where the R² gate may rightly refuse them (tested in test_fit): the
    # plumbing is the subject here, so the rough fit is accepted.
    refit = invoke(
        "fit", "1", "--store", store, "--denoise", "median", "--accept-poor-fit",
        "--output", tmp_path / "m.json",
    )  # fmt: skip
    assert refit.exit_code == 0 and (tmp_path / "m.json").exists(), refit.output
    for name in ("p.csv", "p.parquet", "p.jsonl"):
        assert invoke("export", "--store", store, "--output", tmp_path / name).exit_code == 0
    points = pd.read_parquet(tmp_path / "p.parquet")
    assert len(points) == 12 and {"runtime_s", "ttft_s", "status"} <= set(points.columns)
    exported = invoke("export", "--store", store, "--helm", tmp_path / "h.json")
    assert exported.exit_code == 0, exported.output
    said = " ".join(exported.output.split())  # the line as printed, wrapped or not
    assert "which HELM's format cannot hold: `estimate` prices the file as the paper's A100" in said
    helm = json.loads((tmp_path / "h.json").read_text())
    assert set(helm["tiny-llama"]["runtime_for_prompt_tokens"]) == {"1", "16"}


def test_estimate_file_and_grid(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = profiled
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"id": "x", "prompt_tokens": 10, "output_tokens": 5}\n'
        '{"id": "y", "prompt_tokens": 300, "output_tokens": 50}\n'
    )
    out = tmp_path / "priced.csv"
    result = invoke("estimate", "--profile", model, "--queries", queries, "--output", out)
    assert result.exit_code == 0, result.output
    priced = pd.read_csv(out)
    assert list(priced.columns)[:6] == [
        "id",
        "prompt_tokens",
        "output_tokens",
        "runtime_s",
        "cost_usd",
        "energy_j",
    ]
    assert (priced.runtime_s > 0).all()
    grid = invoke(
        "estimate",
        "--profile",
        model,
        "--prompt-tokens",
        "1,64",
        "--output-tokens",
        "8",
        "--accelerator",
        "h100",
        "--num-accelerators",
        "2",
    )
    assert grid.exit_code == 0 and "2 queries" in grid.stdout
    watts = invoke(
        "estimate",
        "--profile",
        model,
        "--prompt-tokens",
        "64",
        "--output-tokens",
        "8",
        "--set",
        "tdp_watts=1000",
        "--output",
        tmp_path / "w.csv",
    )
    assert watts.exit_code == 0, watts.output
    priced = pd.read_csv(tmp_path / "w.csv")
    assert priced.energy_j[0] == pytest.approx(priced.runtime_s[0] * 1000)


def test_estimate_from_helm_file() -> None:
    result = invoke(
        "estimate",
        "--profile",
        DATA / "helm_efficiency_sample.json",
        "--model",
        "openai/davinci",
        "--prompt-tokens",
        "1000",
        "--output-tokens",
        "10",
        "--accelerator",
        "a100",
        "--num-accelerators",
        "8",
    )
    assert result.exit_code == 0, result.output
    # PE(1000) interpolated between the 512 and 1024 knots, plus 9 output tokens.
    pe = 0.22019 + (1000 - 512) / 512 * (0.35688 - 0.22019)
    assert f"{pe + 9 * 0.0296:.5g}" in result.stdout


def test_fit_points_from_another_tool(tmp_path: Path) -> None:
    rows = [
        (p, o, t, 0.01 * p / 100 + 0.02 * (o - 1) + 0.05 + 0.0001 * t)
        for p in (1, 100, 200)
        for o in (1, 5, 9)
        for t in range(2)
    ]
    points = tmp_path / "pts.csv"
    pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"]).to_csv(
        points, index=False
    )
    result = invoke("fit", "--points", points, "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    model = json.loads((tmp_path / "m.json").read_text())
    assert model["per_output_token"] == pytest.approx(0.02)
    assert model["output_token_slopes"] == pytest.approx([0.02] * 3)
    paper = invoke("fit", "--points", points, "--slopes", "global", "--output", tmp_path / "g.json")
    assert paper.exit_code == 0, paper.output
    assert json.loads((tmp_path / "g.json").read_text())["output_token_slopes"] is None
    wrong = invoke("fit", "--points", points, "--slopes", "per-p")
    assert wrong.exit_code != 0 and "--slopes must be per-prompt or global" in wrong.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["profile", "llama-7bb"], "did you mean"),
        (
            ["profile", "tiny-llama", "--device", "cpu", "--output-sizes", "8"],
            "at least two distinct output lengths",
        ),
        (["profile", "tiny-llama", "--device", "cpu", "--prompt-sizes", "0,16"], "positive"),
        (["profile", "tiny-llama", "--device", "cpu", "--output-sizes", "1,-4"], "positive"),
        (
            [
                "profile",
                "tiny-llama",
                "--device",
                "cpu",
                "--prompt-sizes",
                "500",
                "--output-sizes",
                "1,64",
            ],
            "exceeds",
        ),
        (["profile", "tiny-llama", "--device", "cpu", "--prompt-sizes", "a,b"], "whole numbers"),
        (["profile", "tiny-llama", "--device", "cpu", "--warmup-s", "-5"], "--warmup-s"),
        (["profile", "tiny-llama", "--backend", "vllm"], "vllm"),
        (
            ["estimate", "--profile", "nope.json", "--prompt-tokens", "1", "--output-tokens", "1"],
            "profile nope.json does not exist",
        ),
        (["fit", "--points", "nope.csv"], "does not exist"),
        (["hardware", "--hardware-config", "nope.toml"], "nope.toml"),
        ([*HELM_ESTIMATE, "--set", "bogus=1"], "bogus"),
        ([*HELM_ESTIMATE, "--set", "tdp_watts=lots"], "not a number"),
        ([*HELM_ESTIMATE, "--set", "tdp_watts"], "KEY=VALUE"),
        ([*HELM_ESTIMATE, "--energy-profile", "nope.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    assert_user_error(
        invoke(*args, *(["--store", tmp_path / "s.sqlite"] if args[0] == "profile" else [])),
        fragment,
    )


def test_malformed_config_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "llama", "hidden_size": 64}')
    assert_user_error(
        invoke("profile", config, "--store", tmp_path / "s.sqlite"), "lacks required key"
    )
    config.write_text('{"model_type": "t5"}')
    assert_user_error(invoke("profile", config, "--store", tmp_path / "s.sqlite"), "t5")


def test_unreadable_queries_file(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = profiled
    bad = tmp_path / "q.csv"
    bad.write_text("prompt_tokens,output_tokens\n5,zero\n")
    assert_user_error(invoke("estimate", "--profile", model, "--queries", bad), "whole number")


def test_newer_store_is_refused_and_untouched(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    store = tmp_path / "new.sqlite"
    store.write_bytes(profiled[0].read_bytes())
    con = sqlite3.connect(store)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = store.read_bytes()
    assert_user_error(invoke("runs", "--store", store), "newer")
    assert_user_error(
        invoke("profile", "tiny-llama", "--device", "cpu", *SMALL_GRID, "--store", store), "newer"
    )
    assert store.read_bytes() == before


def test_sigkill_halfway_then_resume(tmp_path: Path) -> None:
    """A profile killed with SIGKILL loses nothing stored and never re-measures a point."""
    store = tmp_path / "k.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "infermeter",
        "profile",
        "tiny-llama",
        "--device",
        "cpu",
        "--prompt-sizes",
        "1,32,64",
        "--output-sizes",
        "1,64,128,192",  # long enough that a poll starved on a loaded machine still lands
        "--trials",  # the kill halfway: the 32 trials after the 16th take seconds
        "4",
        "--validate",
        "2",
        "--accept-poor-fit",
        "--store",
        str(store),
    ]
    total = 3 * 4 * 4  # the grid's trials; then 2 validation queries × 4 trials
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if store.exists():
            try:
                stored = sqlite3.connect(store).execute("SELECT count(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if stored >= total // 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(store)
    before = pd.read_sql_query("SELECT * FROM points", con)
    assert 0 < len(before) < total, "the kill must land halfway through the profile"
    finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming run 1: {len(before)}/{total + 8} measurements" in finished.stdout
    after = pd.read_sql_query("SELECT * FROM points", sqlite3.connect(store))
    assert len(after) == total and (after.status == "ok").all()
    checks = pd.read_sql_query("SELECT * FROM validation", sqlite3.connect(store))
    assert len(checks) == 8 and (checks.status == "ok").all()
    kept = after.merge(
        before,
        on=["prompt_tokens", "output_tokens", "batch_size", "trial"],
        suffixes=("", "_before"),
    )
    assert len(kept) == len(before)
    assert (kept.runtime_s == kept.runtime_s_before).all()
    assert (kept.measured_at == kept.measured_at_before).all()


def test_validation_is_stored_and_resumes_after_sigkill(tmp_path: Path) -> None:
    """Validation queries land in their own table as they are measured; a profile killed
    among them resumes there, keeps what it had and measures none twice."""
    store = tmp_path / "v.sqlite"
    cmd = [
        sys.executable, "-m", "infermeter", "profile", "tiny-llama", "--device", "cpu",
        # o up to 64: the validation's longer half keeps it busy after the 6th check
        "--prompt-sizes", "1,16", "--output-sizes", "1,64", "--trials", "2",
        "--validate", "12", "--accept-poor-fit", "--store", str(store),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:
            checked = sqlite3.connect(store).execute("SELECT count(*) FROM validation").fetchone()
        except sqlite3.OperationalError:
            continue
        if checked[0] >= 6:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = pd.read_sql_query("SELECT * FROM validation", sqlite3.connect(store))
    assert 0 < len(before) < 24, "the kill must land among the validation queries"
    finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "validated on 12 queries never profiled" in finished.stdout
    after = pd.read_sql_query("SELECT * FROM validation", sqlite3.connect(store))
    assert len(after) == 24 and (after.status == "ok").all()
    kept = after.merge(
        before, on=["prompt_tokens", "output_tokens", "batch_size", "trial"], suffixes=("", "_b")
    )
    assert len(kept) == len(before) and (kept.measured_at == kept.measured_at_b).all()
    # The validation queries are never profiled points, and never fitted.
    grid = pd.read_sql_query("SELECT DISTINCT prompt_tokens FROM points", sqlite3.connect(store))
    assert not set(after.prompt_tokens) & set(grid.prompt_tokens)
    assert not (after.prompt_tokens % 64 == 0).any()


def test_python_dash_m_runs_the_same_command_line() -> None:
    """`python -m infermeter` (how energy_bench runs `infermeter energy` on a GPU machine where
    the package is on PYTHONPATH but not installed) lists the same commands."""
    done = subprocess.run(
        [sys.executable, "-m", "infermeter", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    listed = {line.strip("│ ").split(" ")[0] for line in done.stdout.splitlines()}
    assert {"profile", "fit", "estimate", "energy", "report"} <= listed


def test_the_command_gets_the_request_a_notebook_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`infermeter profile` hands the library the same ProfileRequest a notebook would build:
    flags (--tp, --set, --no-stream) and defaults land on the dataclass's fields."""
    from infermeter.backends.config import OpenAIConfig
    from infermeter.errors import UserError
    from infermeter.experiments import plans
    from infermeter.requests import ProfileRequest

    seen: list[ProfileRequest] = []

    def stop(request: ProfileRequest, warn: object) -> None:
        seen.append(request)
        raise UserError("stopped here")

    monkeypatch.setattr(plans, "profile_setup", stop)
    result = invoke("profile", "tiny-llama", "--tp", 2, "--set", "a=1", "--set", "b=2",
                    "--no-stream", "--warmup-s", 0)  # fmt: skip
    assert result.exit_code == 2 and "stopped here" in result.stderr
    expected = ProfileRequest(model="tiny-llama", tensor_parallel=2, settings=["a=1", "b=2"],
                              warmup_s=0.0, api=OpenAIConfig(stream=False))  # fmt: skip
    assert seen == [expected]


def test_a_mistyped_backend_is_named_before_the_model(tmp_path: Path) -> None:
    # A fresh-eyes check: `--backend opanai` with an API's model name said "unknown model".
    result = invoke("profile", "m1", "--backend", "opanai", "--store", tmp_path / "s.db")
    assert result.exit_code == 2, result.output
    assert "unknown backend 'opanai'; available: engine, hf, openai" in result.stderr
    assert not (tmp_path / "s.db").exists()
