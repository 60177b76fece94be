"""What a fresh user met pricing past a profile, cross-validating a small fit, reading a
hand-written points file and reading counts: never a runtime, cost or energy of 0 (a prompt
past the profile is priced at no less than its largest prompt's PE, and says so; a query the
model extrapolates to nothing is refused in one line), a k-fold that says what it did instead,
a header written "a, b" read as a and b, and a count of one said as one.

Profiles are synthetic points (a points file, or a store as a profile fills it) whose PE falls
from the second largest prompt size to the largest, as a noisy CPU profile's may, so nothing
here depends on how fast this machine runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from test_fresh_user import said

from cli_runner import assert_one_line, invoke
from infermeter.backends.base import Measurement, Point
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import Stack, get_accelerator
from infermeter.store.db import Store

# The o = 1 time per prompt size: it falls from 32 to 64 tokens, and the line through those two
# reaches 0 s before 300 tokens. Energy falls the same way (J).
FALLING_PE = {1: 0.011, 32: 0.014, 64: 0.011}
OUTPUTS = (1, 4, 8)
G_S = 0.002


def runtime(p: int, o: int, pe: dict[int, float] = FALLING_PE) -> float:
    return pe[p] + G_S * (o - 1)


def points_csv(path: Path, pe: dict[int, float] = FALLING_PE, energy: bool = False) -> Path:
    """A points file of runtime_s (and energy_j: 100 W × runtime) on the `pe` prompt sizes."""
    rows = [(p, o, runtime(p, o, pe)) for p in pe for o in OUTPUTS]
    frame = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "runtime_s"])
    if energy:
        frame["energy_j"] = 100.0 * frame["runtime_s"]
    frame.to_csv(path, index=False)
    return path


def fitted(tmp_path: Path, points: Path) -> Path:
    model = tmp_path / f"{points.stem}.json"
    result = invoke("fit", "--points", points, "--output", model)
    assert result.exit_code == 0, result.output
    return model


def warnings(stderr: str) -> str:
    return " ".join(" ".join(said(stderr, "warning")).split())


# ---- 1: a prompt past the profile is never priced at 0 -----------------------------------------


def test_estimate_past_a_falling_profile_holds_its_largest_pe_and_says_so(tmp_path: Path) -> None:
    model = fitted(tmp_path, points_csv(tmp_path / "p.csv", energy=True))
    energy = model.with_name(f"{model.stem}.energy.json")
    out = tmp_path / "e.csv"
    largest = max(FALLING_PE)
    result = invoke("estimate", "--profile", model, "--energy-profile", energy, "--prompt-tokens",
                    f"{largest},300", "--output-tokens", "1,4", "--output", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    priced = pd.read_csv(out).set_index(["prompt_tokens", "output_tokens"])
    for column in ("runtime_s", "cost_usd", "energy_j", "energy_measured_j"):
        assert (priced[column] > 0).all(), priced[column]
        for o in (1, 4):  # held at the largest prompt's PE: no cheaper than that prompt
            assert priced.loc[(300, o), column] >= priced.loc[(largest, o), column]
    told = warnings(result.stderr)
    assert f"longer than the profile's largest ({largest} tokens, up to 300 asked)" in told
    assert f"their prefill is priced at the PE of {largest} tokens" in told
    assert "held there, not extended down the profile's falling last segment" in told
    assert "profile larger prompt sizes (--max-context, --prompt-sizes)" in told
    assert "their energy_measured_j prefill is priced at the PE of" in told


def test_estimate_refuses_a_query_its_model_extrapolates_to_nothing(tmp_path: Path) -> None:
    """Below the smallest profiled prompt a steep PE line reaches 0: refused, not priced."""
    steep = {16: 0.01, 64: 0.05}
    model = fitted(tmp_path, points_csv(tmp_path / "steep.csv", steep))
    assert_one_line(
        invoke("estimate", "--profile", model, "--prompt-tokens", "20,1", "--output-tokens", "1"),
        "query 2 (prompt_tokens 1, output_tokens 1) extrapolates to a runtime_s of",
        "the profile covers prompts of 16-64 tokens",
        "profile sizes that cover it (--prompt-sizes, --max-context)",
    )


def profile_run(db: Store, model: str, pe: dict[int, float]) -> None:
    """A complete engine profile of `model` on this CPU, 2 trials a point, as a profile
    stores it: runtime(p, o) on the prompt sizes of `pe`."""
    stack = Stack("engine", get_accelerator("cpu"), dtype="float32").to_dict()
    grid = {"prompt_sizes": list(pe), "output_sizes": list(OUTPUTS), "trials": 2}
    run, _ = db.open_run(
        key=model, model=model, spec=get_spec(model).to_dict(), stack=stack, backend="engine",
        backend_info={}, grid=grid, device="cpu: test",
    )  # fmt: skip
    db.record_points(
        run.id,
        [(Point(p, o, 1, k), Measurement(runtime(p, o, pe))) for p in pe for o in OUTPUTS
         for k in range(2)],
    )  # fmt: skip
    db.set_run_status(run.id, "complete")


def test_tradeoffs_does_not_rank_a_scenario_past_a_falling_profile_as_free(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.sqlite"
    # A profile whose PE rises with p, and stays below the other's largest PE up to 300 tokens.
    steady = {p: 0.002 + 1e-5 * p for p in FALLING_PE}
    with Store(store) as db:
        profile_run(db, "tiny-llama", FALLING_PE)
        profile_run(db, "gpt2", steady)
    caps, queries = tmp_path / "caps.csv", tmp_path / "long.csv"
    pd.DataFrame(
        [("tiny-llama", "long", 0.5), ("gpt2", "long", 0.5)],
        columns=["model", "scenario", "accuracy"],
    ).to_csv(caps, index=False)
    pd.DataFrame({"prompt_tokens": [300], "output_tokens": [1]}).to_csv(queries, index=False)
    out, ranks = tmp_path / "t.csv", tmp_path / "r.csv"
    result = invoke("tradeoffs", "--store", store, "--capabilities", caps, "--queries",
                    f"long={queries}", "--output", out, "--ranks-output", ranks)  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out).set_index("model")
    for column in ("idealized_runtime_s", "idealized_cost_usd", "idealized_energy_j"):
        assert (table[column] > 0).all(), table[column]
    ranked = pd.read_csv(ranks)
    assert ranked["value"].map(lambda v: abs(v) < float("inf")).all(), ranked
    # At one accuracy the faster model ranks first, on every objective: the one whose PE rises.
    faster = table["idealized_runtime_s"].idxmin()
    assert faster == "gpt2" and set(ranked[ranked["rank"] == 1]["model"]) == {faster}
    told = warnings(result.stderr)
    assert "scenario long: tiny-llama: the query has a prompt longer" in told
    assert "its prefill is priced at the PE of 64 tokens" in told and "held there" in told


# ---- 2: k-fold with fewer points than folds says what it did ----------------------------------


def test_fit_with_more_folds_than_points_says_what_it_did(tmp_path: Path) -> None:
    two = points_csv(tmp_path / "two.csv", {16: 0.01})
    two_points = pd.read_csv(two).query("output_tokens != 4")
    two_points.to_csv(two, index=False)
    result = invoke("fit", "--points", two, "--folds", "5")
    assert result.exit_code == 0, result.output
    notes = " ".join(said(result.stderr, "note"))
    points = len(two_points)
    assert f"k-fold needs at least 5 (p, o) points for 5 folds and the fit has {points}" in notes
    assert "no k-fold error is reported; profile more points" in notes
    assert "k-fold over the profiled points" not in result.stdout
    # 4: a range of one prompt size is that size
    assert "PE at 1 prompt size (16);" in result.stdout and "(16-16)" not in result.stdout

    nine = points_csv(tmp_path / "nine.csv")
    n = len(pd.read_csv(nine))
    result = invoke("fit", "--points", nine, "--folds", str(n + 3))
    assert result.exit_code == 0, result.output
    notes = " ".join(said(result.stderr, "note"))
    assert f"for {n + 3} folds and the fit has {n}: ran {n} folds (one per point) instead" in notes
    assert f"({n} folds;" in result.stdout


# ---- 3: a points file's header written with spaces --------------------------------------------


def test_fit_points_reads_a_header_and_cells_written_with_spaces(tmp_path: Path) -> None:
    plain = points_csv(tmp_path / "plain.csv")
    frame = pd.read_csv(plain).assign(status="ok")
    spaced = tmp_path / "spaced.csv"
    lines = [", ".join(frame.columns)] + [
        ", ".join(f"{value} " for value in row) for row in frame.itertuples(index=False)
    ]
    spaced.write_text("\n".join(lines) + "\n")
    assert spaced.read_text().startswith("prompt_tokens, output_tokens, runtime_s, status\n")
    models = {}
    for path in (plain, spaced):
        model = tmp_path / f"{path.stem}.json"
        result = invoke("fit", "--points", path, "--output", model)
        assert result.exit_code == 0, result.output
        models[path.stem] = json.loads(model.read_text())
    for key in ("prompt_sizes", "prompt_encoding", "per_output_token"):
        assert models["spaced"][key] == models["plain"][key]
    assert models["spaced"]["fit"]["n_points"] == len(frame)


# ---- 4: counts and what a figure is ------------------------------------------------------------


def test_models_show_says_a_kv_cache_of_one_token_in_the_singular() -> None:
    one = invoke("models", "--show", "tiny-llama", "--context", "1")
    assert one.exit_code == 0, one.output
    assert "KV cache at 1 token " in one.stdout and "1 tokens" not in one.stdout
    many = invoke("models", "--show", "tiny-llama", "--context", "2")
    assert "KV cache at 2 tokens" in many.stdout


def test_estimate_says_measured_energy_is_a_fitted_model_of_metered_energy(
    tmp_path: Path,
) -> None:
    model = fitted(tmp_path, points_csv(tmp_path / "p.csv", energy=True))
    energy = model.with_name(f"{model.stem}.energy.json")
    result = invoke("estimate", "--profile", model, "--energy-profile", energy,
                    "--prompt-tokens", "8", "--output-tokens", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    notes = " ".join(" ".join(said(result.stderr, "note")).split())
    assert (
        "energy_measured_j is estimated by the energy model, fitted to the energy its profile "
        "metered (these queries were not metered)"
    ) in notes
    assert "energy_measured_j is measured" not in notes
