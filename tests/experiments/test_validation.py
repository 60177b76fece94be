"""Estimates a user can trust (issue 15): decode curves, validation queries, no impossible
numbers, batch size as a dimension, one fit policy, and verbs that read without writing."""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_runner import invoke
from infermeter.errors import UserError
from infermeter.experiments import profile as profile_module
from infermeter.experiments.plans import profile_grid
from infermeter.experiments.profile import ProfileGrid, default_grid, validation_queries
from infermeter.model.cost_model import CostModel, ModelSet, models_from_dict, save_models
from infermeter.model.estimate import Pricing, estimate_queries
from infermeter.model.fit import FitPolicy, fit_cost_model, fit_profile, validation_errors
from infermeter.spec.catalog import get_spec
from infermeter.spec.model import ModelSpec

PRICING = Pricing("test", 1, 3.6, 100.0)  # $0.001 and 100 J per second


def stack_like(p: int, o: int) -> float:
    """A stack whose first decode step after a long prompt costs more than later ones, and
    whose steps grow with the context (what the bias diagnosis measured on an H200)."""
    pe = 0.005 + 2.2e-5 * p
    first = 0.0037 + 1.1e-6 * p if o >= 2 else 0.0
    later = sum(0.0039 + 1.2e-7 * (p + i) for i in range(2, o))
    return pe + first + later


def frame(shapes: list[tuple[int, int]], trials: int = 2, batch: int = 1) -> pd.DataFrame:
    rows = [(p, o, batch, t, stack_like(p, o)) for p, o in shapes for t in range(trials)]
    return pd.DataFrame(
        rows, columns=["prompt_tokens", "output_tokens", "batch_size", "trial", "runtime_s"]
    )


GRID_SHAPES = [(p, o) for p in (1, 737, 1505) for o in (1, 2, 4, 8, 16, 32, 64, 128, 512)] + [
    (p, 1) for p in (97, 225, 353, 481, 609, 865, 993, 1121, 1249, 1377, 1633, 1761, 1889, 2047)
]


def test_curves_price_short_outputs_that_a_line_prices_low() -> None:
    points = frame(GRID_SHAPES)
    line = fit_cost_model(points, decode="line")
    curve = fit_cost_model(points, decode="curve")
    queries = frame([(1662, 1), (1487, 6), (1357, 7), (1000, 4), (700, 64), (1200, 300)], 1)
    line_err = validation_errors(line, queries)
    curve_err = validation_errors(curve, queries)
    # The line runs below the 4- to 7-token outputs: it misses the dearer first step.
    assert min(q["error_pct"] for q in line_err["queries"]) < -1.5
    assert curve_err["max_error_pct"] < 0.5 and abs(curve_err["bias_pct"]) < 0.3
    assert curve.fit["decode"] == "curve" and len(curve.decode_curves) == 3
    # PE is the measured o = 1 time at each of the 17 prompt sizes profiled at o = 1.
    assert len(curve.prompt_sizes) == 17
    assert curve.predict(2047, 1) == pytest.approx(stack_like(2047, 1))


def test_a_model_file_round_trips_with_its_curves(tmp_path: Path) -> None:
    model = fit_cost_model(frame(GRID_SHAPES), decode="curve")
    again = CostModel.from_dict(json.loads(model.save(tmp_path / "m.json").read_text()))
    p = np.array([1, 300, 1700, 2000])
    o = np.array([1, 9, 200, 40])
    assert np.allclose(again.predict(p, o), model.predict(p, o), rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 5000)), min_size=1, max_size=20),
    st.floats(0.0, 0.05),
)
def test_no_estimate_is_negative(queries: list[tuple[int, int]], noise: float) -> None:
    rng = np.random.default_rng(len(queries))
    points = frame(GRID_SHAPES)
    points["runtime_s"] *= 1 + rng.normal(0, noise, len(points))
    points["runtime_s"] = points["runtime_s"].abs()
    try:
        model = fit_cost_model(points, decode="curve")
    except UserError:
        return  # refused: nothing priced
    p, o = np.array(queries).T
    assert (model.predict(p, o) >= 0).all()


def test_a_negative_slope_beyond_the_noise_is_refused_with_the_points() -> None:
    """A points file whose runtime falls as outputs grow: g < 0 by far more than its error."""
    points = pd.DataFrame(
        {
            "prompt_tokens": [8, 8, 8, 64, 64, 64],
            "output_tokens": [1, 500, 1000, 1, 500, 1000],
            "runtime_s": [0.30, 0.20, 0.10, 0.35, 0.25, 0.15],
        }
    )
    with pytest.raises(UserError, match=r"negative time per output token \(g = -0.0002") as info:
        fit_cost_model(points)
    assert "(p=8, o=1: 0.3 s)" in str(info.value) and "--trials 5" in str(info.value)
    kept = fit_cost_model(points, accept_poor_fit=True)  # the user keeps it: priced as 0
    assert kept.per_output_token == 0.0
    assert any("kept as a poor fit with decoding priced as 0" in n for n in kept.fit["notes"])
    assert kept.fit["poor_fit"] is True
    assert kept.unclipped(8, 5000) == pytest.approx(kept.unclipped(8, 1))  # never falls


@pytest.mark.parametrize("decode", ["line", "curve"])
def test_a_kept_negative_slope_never_prices_a_longer_output_lower(decode: str) -> None:
    """--accept-poor-fit over a grid with the default outputs whose runtime falls with o:
    lines and curves alike price decoding as 0, never below a shorter output."""
    outputs = (1, 2, 4, 8, 32, 128, 512)
    rows = [(p, o, t, 0.05 + 1e-5 * p - 2e-5 * (o - 1)) for p in (1, 512, 1024)
            for o in outputs for t in range(2)]  # fmt: skip
    points = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])
    kept = fit_cost_model(points, decode=decode, accept_poor_fit=True)
    for p in (1, 300, 512, 1024, 1500):
        priced = [kept.unclipped(p, o) for o in (1, 2, 5, 40, 512, 2000, 5000)]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(priced)), (p, priced)
        assert priced[0] > 0


def test_a_slope_lost_in_the_noise_is_priced_as_zero_with_a_note() -> None:
    points = pd.DataFrame(
        {
            "prompt_tokens": [8] * 4 + [64] * 4,
            "output_tokens": [1, 2, 3, 4] * 2,
            "runtime_s": [0.101, 0.099, 0.102, 0.0995, 0.201, 0.199, 0.2015, 0.1995],
        }
    )
    model = fit_cost_model(points)
    assert model.per_output_token == 0.0
    assert any("not resolved above the noise" in n for n in model.fit["notes"])
    assert (model.predict([8, 64], [1000, 1000]) > 0).all()


def test_two_batch_sizes_give_two_models_and_estimate_prices_each(tmp_path: Path) -> None:
    points = pd.concat(
        [
            frame(GRID_SHAPES, batch=1),
            frame(GRID_SHAPES, batch=8).eval("runtime_s = runtime_s * 1.3"),
        ]
    )
    models = fit_profile(points, FitPolicy())
    assert [(m.quantity, m.batch_size) for m in models] == [("runtime_s", 1), ("runtime_s", 8)]
    path = save_models(models, tmp_path / "m.json")
    loaded = ModelSet(models_from_dict(json.loads(path.read_text())))
    assert loaded.batch_sizes == [1, 8]
    queries = pd.DataFrame({"prompt_tokens": [500, 500], "output_tokens": [20, 20],
                            "batch_size": [1, 8]})  # fmt: skip
    priced = estimate_queries(queries, loaded, PRICING)
    assert priced.runtime_s[1] == pytest.approx(1.3 * priced.runtime_s[0], rel=1e-9)
    # A query's dollars are its share of the batch: 1.3 × the time over 8 queries.
    assert priced.cost_usd[1] == pytest.approx(priced.cost_usd[0] * 1.3 / 8, rel=1e-9)
    with pytest.raises(UserError, match=r"no model for batch size 4 \(it has 1, 8\)"):
        estimate_queries(queries.assign(batch_size=[1, 4]), loaded, PRICING)
    # The command line takes the column too, and refuses a size with the same sentence.
    queries_csv = tmp_path / "q.csv"
    queries.assign(batch_size=[8, 4]).to_csv(queries_csv, index=False)
    result = invoke("estimate", "--profile", path, "--queries", queries_csv)
    assert result.exit_code == 2 and "no model for batch size 4 (it has 1, 8)" in result.stderr


def test_fit_points_fits_energy_with_the_energy_policy(tmp_path: Path) -> None:
    """Median over trials and no overhead for energy, whatever --denoise/--overhead say."""
    points = frame(GRID_SHAPES, trials=3)
    points["energy_j"] = 600 * points.runtime_s * np.tile([1.0, 1.02, 0.99], len(points) // 3)
    path = tmp_path / "points.csv"
    points.to_csv(path, index=False)
    out = tmp_path / "m.json"
    result = invoke("fit", "--points", path, "--overhead", "auto", "--denoise", "min",
                    "--output", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    energy = CostModel.from_dict(json.loads((tmp_path / "m.energy.json").read_text()))
    runtime = CostModel.from_dict(json.loads(out.read_text()))
    assert energy.fit["denoise"] == "median" and energy.overhead == 0.0
    assert energy.fit["overhead_mode"] == "none"
    assert runtime.fit["denoise"] == "min" and runtime.fit["overhead_mode"] == "auto"


def test_validation_queries_are_never_profiled_and_look_like_real_work() -> None:
    spec = get_spec("llama-7b")
    grid = default_grid(spec, on_gpu=True)
    queries = validation_queries(spec, grid, 16)
    assert validation_queries(spec, grid, 16) == queries  # the same on every rerun
    profiled = grid.profiled_sizes
    assert len(queries) == 16
    for q in queries:
        assert q.prompt_tokens % 64 and q.prompt_tokens not in profiled
        assert q.prompt_tokens + q.output_tokens <= spec.max_context
    short = [q for q in queries if q.output_tokens <= 16]
    assert len(short) >= 8 and max(q.prompt_tokens for q in short) > 1024
    assert 128 < max(q.output_tokens for q in queries) <= 256
    # The grid covers the whole context and its knots sit off multiples of 64.
    assert max(grid.pe_sizes) == spec.max_context - 1
    assert all(p % 64 for p in grid.profiled_sizes if p > 64)


@pytest.mark.slow
def test_reading_verbs_leave_the_stores_fits_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    result = invoke("profile", "tiny-llama", "--device", "cpu", "--prompt-sizes", "1,16",
                    "--output-sizes", "1,4,8", "--trials", "2", "--accept-poor-fit",
                    "--store", store)  # fmt: skip
    assert result.exit_code == 0, result.output

    def fits() -> list[tuple]:
        return sqlite3.connect(store).execute("SELECT * FROM fits ORDER BY id").fetchall()

    stored = fits()
    assert stored  # the profile stored its fit
    for args in (
        ("show",),
        ("variance",),
        ("export", "--helm", tmp_path / "helm.json"),
        # exploratory: printed, not stored (whatever the noise of a loaded machine made of it)
        ("fit", "--denoise", "median", "--accept-poor-fit"),
        ("report", "--output", tmp_path / "r.html"),
    ):
        done = invoke(*args, "--store", store)
        assert done.exit_code == 0, (args, done.output)
        assert fits() == stored, args
    assert "not stored as the run's fit" in invoke("fit", "--denoise", "median", "--store",
                                                   store, "--accept-poor-fit").stdout  # fmt: skip
    # --save stores it; --accept-poor-fit because a loaded machine's noise may make it poor
    saved = invoke("fit", "--denoise", "median", "--save", "--accept-poor-fit", "--store", store)
    assert saved.exit_code == 0, saved.output
    assert len(fits()) > len(stored)


def test_a_grid_of_pe_sizes_is_measured_at_one_output_length_only() -> None:
    grid = ProfileGrid((1, 32), (1, 4), (1,), 2, pe_sizes=(97,))
    shapes = [(s.prompt_tokens, s.output_tokens) for s in grid.shapes()]
    assert shapes == [(1, 1), (1, 4), (32, 1), (32, 4), (97, 1)]
    assert len(grid.points()) == 10
    assert "pe_sizes" not in ProfileGrid((1, 32), (1, 4)).to_dict()  # older keys unchanged


@pytest.mark.parametrize("name", ["llama-7b", "llama-13b", "qwen3-8b", "gpt-oss-20b", "gpt2"])
def test_a_gpu_grid_measures_the_head_between_its_first_two_curves(name: str) -> None:
    # A query's first decode steps between two curves are a blend of the curves' heads, each a
    # difference of two prefill-heavy points at a power limit (D(p, 2) moved 0.3-0.75 ms
    # between LLaMA-13B profiles on an H200): a GPU grid measures o = 1, 2, 4, 8 at one more
    # knot between its first two curves, no later than 512.
    spec = get_spec(name)
    grid = default_grid(spec, on_gpu=True)
    (head,) = grid.head_sizes
    first, second = grid.prompt_sizes[:2]
    assert first < head < second and head < 512 and head % 64
    assert head not in grid.pe_sizes and head not in grid.prompt_sizes
    regular = grid_without_low_knots(spec, on_gpu=True, max_context=None)
    mid = min((first + second) // 2, 512)  # the knot nearest the middle, capped at 512
    knots = [p for p in grid.profiled_sizes if first < p < second]
    assert abs(head - mid) == min(abs(p - mid) for p in knots), (head, mid)
    assert regular.profiled_sizes <= grid.profiled_sizes
    shapes = {(s.prompt_tokens, s.output_tokens) for s in grid.shapes()}
    assert {o for p, o in shapes if p == head} == {1, 2, 4, 8}
    assert grid.head_outputs() == (1, 2, 4, 8) and grid.to_dict()["head_sizes"] == [head]
    assert default_grid(spec, on_gpu=False).head_sizes == ()  # no power limit to follow
    chosen = profile_grid(spec, True, 3, (1, 700), None, None)  # sizes the user chose: theirs
    assert chosen.head_sizes == () and "head_sizes" not in chosen.to_dict()
    assert profile_grid(spec, True, 3, None, None, None).head_sizes == (head,)  # the CLI's grid
    # The head ends where model.decode's does, read off the lengths past o = 1.
    for outputs, head_outputs in [((1, 20, 40), (1, 20)), ((1, 17, 33, 512), (1, 17)),
                                  ((1, 2, 3), (1, 2, 3))]:  # fmt: skip
        assert replace(grid, output_sizes=outputs).head_outputs() == head_outputs


def test_the_default_grid_stops_at_its_cap_and_says_so_for_long_context_models() -> None:
    from infermeter.experiments.plans import context_notes
    from infermeter.experiments.profile import DEFAULT_MAX_CONTEXT

    spec = get_spec("gpt-oss-20b")
    assert spec.max_context > DEFAULT_MAX_CONTEXT
    grid = default_grid(spec, on_gpu=True)
    largest = max(*grid.prompt_sizes, *grid.pe_sizes)
    assert largest == DEFAULT_MAX_CONTEXT - 1
    assert max(grid.prompt_sizes) + max(grid.output_sizes) <= DEFAULT_MAX_CONTEXT
    (note,) = context_notes(spec, grid)
    assert f"{largest:,} tokens" in note and f"--max-context {spec.max_context}" in note
    whole = default_grid(spec, on_gpu=True, max_context=spec.max_context)
    assert max(whole.pe_sizes) == spec.max_context - 1
    assert context_notes(get_spec("llama-7b"), default_grid(get_spec("llama-7b"), True)) == []
    gpt2 = get_spec("gpt2")  # on a CPU the grid stops near half the context, and says so
    cpu = default_grid(gpt2, on_gpu=False)
    (note,) = context_notes(gpt2, cpu, on_gpu=False)
    assert f"up to {max(cpu.pe_sizes):,} tokens of gpt2's 1,024-token context" in note
    assert "--prompt-sizes" in note
    asked = default_grid(gpt2, on_gpu=False, max_context=1024)  # asked for: to its end
    assert max(asked.pe_sizes) == 1023 and context_notes(gpt2, asked, on_gpu=False) == []
    with pytest.raises(UserError, match=r"--max-context must be 2\.\.131072"):
        default_grid(spec, on_gpu=True, max_context=spec.max_context + 1)


def test_a_max_context_past_the_models_is_refused_in_one_line(tmp_path: Path) -> None:
    result = invoke("profile", "tiny-llama", "--device", "cpu", "--max-context", "999999",
                    "--store", tmp_path / "s.sqlite")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--max-context must be 2.." in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "max_context"),
    [("llama-7b", None), ("llama-7b", 1100), ("qwen3-8b", None), ("qwen3-30b-a3b", None),
     ("gpt-oss-20b", None)],
)  # fmt: skip
@settings(max_examples=20, deadline=None)
@given(bend=st.integers(100, 400))
def test_gpu_knots_follow_prefill_from_memory_to_compute_bound(
    name: str, max_context: int | None, bend: int
) -> None:
    # A GPU's prefill reads the weights (a fixed time) until p tokens of compute take longer: a
    # roofline that bends at a few hundred tokens, (1 + (p / bend)^3)^(1/3). Priced by straight
    # lines through the default GPU grid's knots, every prompt below 642 must come out within
    # 5% of it, whatever the context; without the low knots a 32k model's first regular knot is
    # at 2,017 and a line from p = 1 runs tens of percent above a 300-token prompt.
    spec = get_spec(name)
    grid = default_grid(spec, on_gpu=True, max_context=max_context)
    regular = grid_without_low_knots(spec, on_gpu=True, max_context=max_context)
    knots = np.array(sorted(grid.profiled_sizes), dtype=float)
    without = np.array(sorted(regular.profiled_sizes), dtype=float)
    assert set(without) <= set(knots)  # the regular, curve and expert knots all kept
    low = knots[knots < 512]  # every 64 tokens, or 96 where one would crowd another knot
    assert np.all(np.diff(low) <= 96), low
    for added in set(knots) - set(without):  # none crowds a knot the grid has
        assert np.min(np.abs(knots[knots != added] - added)) >= 32, (added, knots[:20])
    cpu = grid_without_low_knots(spec, on_gpu=False, max_context=None)
    assert default_grid(spec, on_gpu=False).pe_sizes == cpu.pe_sizes

    def worst(used: np.ndarray) -> float:
        p = np.arange(1.0, 642.0)
        pe = (1 + (p / bend) ** 3) ** (1 / 3)
        priced = np.interp(p, used, (1 + (used / bend) ** 3) ** (1 / 3))
        return float(np.max(np.abs(priced / pe - 1)))

    assert worst(knots) < 0.05
    assert worst(without) >= worst(knots)
    if spec.max_context > 4096 and max_context is None and spec.moe is None:
        assert worst(without) > 0.2  # the case the low knots are for (a MoE has expert knots)


def grid_without_low_knots(spec: ModelSpec, on_gpu: bool, max_context: int | None) -> ProfileGrid:
    """The default grid as before the low knots (LOW_KNOTS_BELOW = 0)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profile_module, "LOW_KNOTS_BELOW", 0, raising=False)
        return default_grid(spec, on_gpu=on_gpu, max_context=max_context)


MOE_MODELS = ["qwen3-30b-a3b", "deepseek-v2-lite", "gpt-oss-20b", "mixtral-8x7b"]


@pytest.mark.parametrize("name", MOE_MODELS)
@settings(max_examples=20, deadline=None)
@given(all_experts=st.floats(0.5, 2.0))
def test_moe_knots_follow_the_experts_a_prompt_reads(name: str, all_experts: float) -> None:
    # A MoE prefill of p tokens costs about a fixed part, plus the distinct experts read (all
    # of them: `all_experts` times a one-token prefill; ~1.4 for Qwen3-30B-A3B by its bytes on
    # an H200), plus a part per token. Priced by straight lines through the default knots,
    # short prompts must come out within 3% of that (from 1 to the first regular knot a single
    # line was 14% low for Qwen3-30B-A3B at p = 68 on an H200).
    spec = get_spec(name)
    moe = spec.moe
    assert moe is not None
    grid = default_grid(spec, on_gpu=True)
    knots = sorted({1, *grid.pe_sizes, *grid.head_sizes})
    first_regular = min(p for p in (*grid.pe_sizes, *grid.head_sizes) if p > 100)

    def cost(p: np.ndarray) -> np.ndarray:
        experts = moe.num_experts * (1 - (1 - moe.experts_per_token / moe.num_experts) ** p)
        return 1.0 + all_experts * experts / moe.num_experts + p / first_regular

    p = np.arange(2, first_regular)
    for used in (knots, [1, first_regular]):
        priced = np.interp(p, used, cost(np.array(used, dtype=float)))
        worst = float(np.max(np.abs(priced / cost(p.astype(float)) - 1)))
        if used is knots:
            assert worst < 0.03, worst
        else:
            assert worst > 0.05, worst  # the case the knots are for


def test_variance_keeps_a_poor_fit_with_its_note_and_writes_the_table(tmp_path: Path) -> None:
    """A run whose points are noise (R² < 0): `variance` shows its noise, raw vs denoised and
    the CSV, as every reader does, with the poor fit's note; nothing is stored."""
    from infermeter.backends.base import Measurement, Point
    from infermeter.store.db import Store

    spec, store = get_spec("tiny-llama"), tmp_path / "noisy.sqlite"
    grid = ProfileGrid((1, 16, 64), (1, 8, 16), (1,), 2)
    rng = np.random.default_rng(7)
    with Store(store) as db:
        run, _ = db.open_run(key="noisy", model=spec.name, spec=spec.to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid=grid.to_dict(), device="cpu: test")  # fmt: skip
        measured = [
            (Point(p, o, 1, k), Measurement(float(rng.uniform(0.05, 0.5))))
            for p in (1, 16, 64)
            for o in (1, 8, 16)
            for k in range(2)
        ]
        db.record_points(run.id, measured)
        db.set_run_status(run.id, "complete")
    with Store(store, read_only=True) as db, pytest.raises(UserError, match="R²"):
        fit_profile(db.points(run.id), FitPolicy())  # what `fit` says without the flag
    done = invoke("variance", "--store", store, "--output", tmp_path / "fig7.csv")
    assert done.exit_code == 0, done.output
    assert "explains little of the measurements" in done.output
    assert "no raw vs denoised" not in done.output
    assert len(pd.read_csv(tmp_path / "fig7.csv")) == 18  # a row per trial
    assert not sqlite3.connect(store).execute("SELECT * FROM fits").fetchall()
    # A bad --idealized file or output is refused before the table (one line, named so).
    missing = tmp_path / "nope.json"
    bad = invoke("variance", "--store", store, "--idealized", missing)
    assert bad.exit_code == 2 and "variation over trials" not in bad.output, bad.output
    assert f"--idealized file {missing} does not exist" in bad.output
    xlsx = invoke("variance", "--store", store, "--output", tmp_path / "fig7.xlsx")
    assert xlsx.exit_code == 2 and "variation over trials" not in xlsx.output, xlsx.output
