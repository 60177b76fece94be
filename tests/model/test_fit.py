"""The §3.4 fit recovers a known t(p, o) and reports honest statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel, piecewise_linear
from infermeter.model.fit import FitPolicy, aggregate_trials, fit_cost_model, fit_profile


def synthetic_points(
    prompt_sizes: list[int],
    output_sizes: list[int],
    pe: dict[int, float],
    g: float,
    trials: int,
    noise: float,
    rng: np.random.Generator,
    overhead: float = 0.0,
    positive_noise: bool = False,
) -> pd.DataFrame:
    rows = []
    for p in prompt_sizes:
        for o in output_sizes:
            for t in range(trials):
                true = pe[p] + (o - 1) * g + overhead
                eps = abs(rng.normal(0, noise)) if positive_noise else rng.normal(0, noise)
                rows.append((p, o, t, true * (1 + eps)))
    return pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])


grids = st.fixed_dictionaries(
    {
        "prompts": st.lists(st.integers(1, 4096), min_size=1, max_size=6, unique=True),
        "outputs": st.lists(st.integers(1, 512), min_size=2, max_size=6, unique=True),
        "trials": st.integers(1, 4),
        "g": st.floats(1e-3, 0.1),
        "pe_base": st.floats(1e-3, 0.5),
        "pe_slope": st.floats(1e-6, 1e-3),
        "noise": st.floats(0.0, 0.002),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@settings(max_examples=60, deadline=None)
@given(grids)
def test_fit_recovers_known_model(case: dict) -> None:
    """PE at the knots and g within 1% under multiplicative noise, any grid shape."""
    rng = np.random.default_rng(case["seed"])
    prompts, outputs = sorted(case["prompts"]), sorted(case["outputs"])
    pe = {p: case["pe_base"] + case["pe_slope"] * p for p in prompts}
    points = synthetic_points(prompts, outputs, pe, case["g"], case["trials"], case["noise"], rng)
    # Recovery is the subject here, not the R² gate (tested on its own below): a case whose
    # noise swamps its output spread (say o = 43 and 44) may rightly fall below it.
    model = fit_cost_model(points, denoise="mean", folds=3, accept_poor_fit=True)
    assert model.prompt_sizes == prompts
    # The slope is only identified to the precision the output spread allows.
    span = max(outputs) - min(outputs)
    noise_scale = case["noise"] * max(pe[p] + (max(outputs) - 1) * case["g"] for p in prompts)
    # An intercept extrapolated from far-off, close-together output lengths (say 89 and 90)
    # carries the noise times its leverage: how far o = 1 lies from the data over their spread.
    leverage = 1 + (np.mean(outputs) - 1) / span
    for p, fitted in zip(model.prompt_sizes, model.prompt_encoding, strict=False):
        assert fitted == pytest.approx(pe[p], rel=0.01, abs=20 * noise_scale * leverage)
    assert model.per_output_token == pytest.approx(case["g"], rel=0.01, abs=20 * noise_scale / span)


def test_fit_exact_without_noise() -> None:
    rng = np.random.default_rng(0)
    pe = {1: 0.02, 256: 0.05, 512: 0.09, 1024: 0.2, 1536: 0.33}
    points = synthetic_points(list(pe), [1, 32, 64, 128, 256], pe, 0.021, 3, 0.0, rng)
    model = fit_cost_model(points, folds=5)
    assert np.allclose(model.prompt_encoding, list(pe.values()), rtol=1e-9)
    assert model.per_output_token == pytest.approx(0.021, rel=1e-9)
    assert model.fit["r2_overall"] == pytest.approx(1.0)
    assert all(row["r2"] == pytest.approx(1.0) for row in model.fit["per_prompt"])
    assert model.fit["cross_validation"]["mape"] < 1e-6
    # Interpolation between knots and linear extrapolation past them.
    assert model.predict(384, 1) == pytest.approx(0.07)
    assert model.predict(2048, 1) == pytest.approx(0.33 + 512 * (0.33 - 0.2) / 512)


def test_min_denoising_removes_positive_noise() -> None:
    """§4.1: with η ≥ 0 the minimum over many trials approaches the true runtime."""
    rng = np.random.default_rng(1)
    pe = {1: 0.1, 512: 0.4, 1024: 0.7}
    points = synthetic_points(
        list(pe), [1, 16, 32, 64], pe, 0.03, 40, 0.05, rng, positive_noise=True
    )
    by_min = fit_cost_model(points, denoise="min")
    by_mean = fit_cost_model(points, denoise="mean")
    assert by_min.per_output_token == pytest.approx(0.03, rel=0.01)
    assert abs(by_min.per_output_token - 0.03) < abs(by_mean.per_output_token - 0.03)


def test_overhead_auto_recovers_constant() -> None:
    rng = np.random.default_rng(2)
    pe = {1: 0.0 + 0.0002, 256: 0.0512, 512: 0.1024}  # PE linear through the origin
    points = synthetic_points(list(pe), [1, 8, 16], pe, 0.02, 1, 0.0, rng, overhead=0.35)
    model = fit_cost_model(points, overhead="auto")
    assert model.overhead == pytest.approx(0.35, rel=1e-6)
    assert model.prompt_encoding[1] == pytest.approx(0.0512, rel=1e-6)
    assert model.predict(100, 5) == pytest.approx(0.35 + 0.02 + 4 * 0.02, rel=1e-6)
    given_model = fit_cost_model(points, overhead=0.1)
    assert given_model.overhead == 0.1
    assert given_model.predict(256, 8) == pytest.approx(model.predict(256, 8))


def test_energy_fit_uses_energy_column() -> None:
    rng = np.random.default_rng(3)
    pe = {1: 5.0, 128: 9.0}
    points = synthetic_points(list(pe), [1, 8, 16], pe, 2.5, 2, 0.0, rng)
    points = points.rename(columns={"runtime_s": "energy_j"})
    model = fit_cost_model(points, quantity="energy_j")
    assert model.quantity == "energy_j" and model.unit == "J"
    assert model.per_output_token == pytest.approx(2.5)


def test_flagged_and_failed_points_are_left_out() -> None:
    rng = np.random.default_rng(4)
    pe = {1: 0.1, 64: 0.2}
    points = synthetic_points(list(pe), [1, 8, 16], pe, 0.01, 1, 0.0, rng)
    points["status"] = "ok"
    bad = points.iloc[[0]].assign(runtime_s=100.0, status="flagged")
    model = fit_cost_model(pd.concat([points, bad]))
    assert model.per_output_token == pytest.approx(0.01)


def test_one_output_length_is_refused() -> None:
    points = pd.DataFrame(
        {"prompt_tokens": [1, 1, 64], "output_tokens": [1, 8, 8], "runtime_s": [0.1, 0.2, 0.3]}
    )
    with pytest.raises(UserError, match="prompt size 64 has only output length"):
        fit_cost_model(points)


def test_missing_column_and_bad_values() -> None:
    with pytest.raises(UserError, match="lack column"):
        fit_cost_model(pd.DataFrame({"prompt_tokens": [1], "output_tokens": [1]}))
    with pytest.raises(UserError, match="positive"):
        fit_cost_model(
            pd.DataFrame(
                {"prompt_tokens": [0, 1], "output_tokens": [1, 2], "runtime_s": [1.0, 2.0]}
            )
        )


def test_aggregate_reports_variation() -> None:
    points = pd.DataFrame(
        {"prompt_tokens": [1, 1, 1], "output_tokens": [4, 4, 4], "runtime_s": [1.0, 2.0, 3.0]}
    )
    agg = aggregate_trials(points, "runtime_s", "min")
    assert agg.loc[0, "value"] == 1.0 and agg.loc[0, "trials"] == 3
    assert agg.loc[0, "cv"] == pytest.approx(0.5)
    once = aggregate_trials(points.iloc[:1], "runtime_s", "min")
    assert once.loc[0, "trials"] == 1 and np.isnan(once.loc[0, "cv"])  # unmeasured, not 0


@given(
    knots=st.lists(st.integers(1, 5000), min_size=1, max_size=6, unique=True),
    values=st.lists(st.floats(-1.0, 10.0), min_size=6, max_size=6),
    x=st.lists(st.floats(0, 10000), min_size=1, max_size=20),
)
def test_piecewise_linear_never_negative_and_hits_knots(knots, values, x) -> None:
    knots = sorted(knots)
    vals = np.array(values[: len(knots)])
    y = piecewise_linear(np.array(knots), vals, np.array(x))
    assert (y >= 0).all()
    # Past the last knot, never below the last knot's value (a falling segment is held flat).
    assert (y[np.array(x) > knots[-1]] >= max(vals[-1], 0.0)).all()
    assert np.allclose(
        piecewise_linear(np.array(knots), vals, np.array(knots)), np.maximum(vals, 0)
    )


def test_cost_model_json_round_trip(tmp_path) -> None:
    model = CostModel([1, 512], [0.1, 0.3], 0.02, 0.0, model="m", fit={"r2_overall": 1.0})
    path = model.save(tmp_path / "m.json")
    loaded = CostModel.from_dict(__import__("json").loads(path.read_text()))
    assert loaded == model
    with pytest.raises(UserError, match="schema"):
        CostModel.from_dict({"schema": "infermeter.cost_model/99"})


def test_energy_fit_is_relative_so_short_queries_keep_their_intercept() -> None:
    """Multiplicative 1% noise on a LLaMA-7B-like energy grid: plain least squares lets the
    noise of o = 256 (~700 J) swamp the o = 1 point (~9 J) that measures PE_E; the relative
    fit, the default for energy, keeps PE_E and so prices short queries right."""
    pe = {1: 1.5, 512: 9.0, 1024: 20.0, 1536: 30.0}
    outputs = [1, 32, 64, 128, 256]
    errors: dict[str, list[float]] = {"absolute": [], "relative": []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        points = synthetic_points(list(pe), outputs, pe, 2.6, 3, 0.01, rng)
        points = points.rename(columns={"runtime_s": "energy_j"})
        for weighting in errors:
            model = fit_cost_model(
                points,
                quantity="energy_j",
                denoise="median",
                weighting=weighting,  # type: ignore[arg-type]
            )
            truth = np.array([pe[p] + 2.6 for p in pe])  # (p, o = 2): prefill-heavy queries
            got = model.predict(np.array(list(pe)), np.full(len(pe), 2))
            errors[weighting].append(float(np.mean(np.abs(got - truth) / truth)))
    assert fit_cost_model(points, quantity="energy_j").fit["weighting"] == "relative"
    assert (
        fit_cost_model(points.rename(columns={"energy_j": "runtime_s"})).fit["weighting"]
        == "absolute"
    )
    assert np.median(errors["relative"]) < 0.02
    assert np.median(errors["relative"]) < np.median(errors["absolute"]) / 3


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 2048), min_size=2, max_size=5, unique=True),
    st.floats(1e-3, 5e-2),
    st.floats(1e-7, 1e-5),
    st.integers(1, 2048),
    st.integers(2, 512),
)
def test_per_prompt_slopes_price_a_context_dependent_step_exactly(
    prompts: list[int], g0: float, growth: float, p: int, o: int
) -> None:
    # A decode step that grows with the context: g(p) = g0 + growth·p, PE linear in p.
    prompts = sorted(prompts)
    rows = [
        (q, n, 0, 0.01 + 2e-5 * q + (n - 1) * (g0 + growth * q))
        for q in prompts
        for n in (1, 32, 128, 256)
    ]
    points = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])
    model = fit_cost_model(points)
    assert model.fit["slopes"] == "per_prompt"
    assert model.output_token_slopes == pytest.approx([g0 + growth * q for q in prompts])
    inside = min(max(p, prompts[0]), prompts[-1])  # g(p) is interpolated between the knots
    truth = 0.01 + 2e-5 * inside + (o - 1) * (g0 + growth * inside)
    assert float(model.predict(inside, o)) == pytest.approx(truth, rel=1e-6)
    # The paper's single g averages the slopes: off wherever the context moves the step.
    paper = fit_cost_model(points, slopes="global")
    assert paper.output_token_slopes is None
    assert paper.per_output_token == pytest.approx(model.per_output_token)
    longest = 0.01 + 2e-5 * prompts[-1] + 255 * (g0 + growth * prompts[-1])
    assert float(paper.predict(prompts[-1], 256)) < longest * (1 - 1e-9)  # prices it low


def test_model_files_without_slopes_still_load_and_use_one_g(tmp_path) -> None:
    model = CostModel([1, 513], [0.01, 0.05], 0.02, output_token_slopes=[0.019, 0.021])
    again = CostModel.from_dict(json.loads(model.save(tmp_path / "m.json").read_text()))
    assert again.output_token_slopes == [0.019, 0.021]
    assert float(again.predict(257, 11)) == pytest.approx(0.03 + 10 * 0.020)  # midway
    assert float(again.predict(2000, 11)) == pytest.approx(again.prompt_encoding_at(2000) + 0.21)
    old = {k: v for k, v in model.to_dict().items() if k != "output_token_slopes"}
    legacy = CostModel.from_dict(old)
    assert legacy.output_token_slopes is None
    assert float(legacy.predict(2000, 11)) == pytest.approx(legacy.prompt_encoding_at(2000) + 0.2)
    with pytest.raises(ValueError, match="one slope per prompt size"):
        CostModel([1, 513], [0.01, 0.05], 0.02, output_token_slopes=[0.02])


def test_fit_worse_than_the_mean_is_refused_unless_accepted() -> None:
    """A fit whose lines price the points worse than their mean (R² < 0) is one line of error;
    --accept-poor-fit keeps it with a note that says how rough it is."""
    rng = np.random.default_rng(3)
    pe = {1: 3.06, 2: 3.07}
    # Output lengths 43 and 44: a 1-token spread that 2% noise swamps.
    points = synthetic_points(list(pe), [43, 44], pe, 0.001, 3, 0.02, rng)
    with pytest.raises(UserError, match=r"R² = -?\d.*--accept-poor-fit"):
        fit_cost_model(points, folds=2)
    kept = fit_cost_model(points, folds=2, accept_poor_fit=True)
    assert any("R² =" in note and "rough" in note for note in kept.fit["notes"])
    assert kept.fit["poor_fit"] is True  # readers prefer a sound run to it
    clean = synthetic_points(list(pe), [1, 400], pe, 0.001, 3, 0.002, rng)
    assert fit_cost_model(clean, accept_poor_fit=True).fit["poor_fit"] is False


def test_a_fit_that_overflows_is_one_line() -> None:
    """Found by the fuzz: an energy of 1e-300 J beside ordinary ones overflows the relative
    weights (1/value²); the fit is refused with a UserError, never a ValueError."""
    rows = [[1, 8, 1.0801, 1e-300]] + [[1, 1, 1.0101, 0.0]] * 5 + [[1, 1, 1.0101, 1.0]] * 5
    points = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "runtime_s", "energy_j"])
    with pytest.raises(UserError, match="not a finite number"), np.errstate(all="ignore"):
        fit_cost_model(points, quantity="energy_j", denoise="median")


def test_decode_past_the_longest_output_follows_the_curves_last_points() -> None:
    """A noisy CPU-like curve (2-token steps, each point off by half a step, alternately up
    and down): past the longest profiled output the fit extends D(p, o) by the least-squares
    slope of the curve's last points, within 3% of the true line at o = 256, where the last
    step's slope alone (the old tail) priced it 40% low."""
    g, half_step = 0.002, 0.001
    rows = [
        (
            p,
            o,
            0,
            0.05 + 1e-4 * p + g * (o - 1) + (half_step * (-1) ** ((o - 1) // 2) if o > 1 else 0),
        )
        for p in (1, 64)
        for o in (1, *range(3, 32, 2))
    ]
    points = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])
    (model,) = fit_profile(points, FitPolicy(decode="curve"), quantities=("runtime_s",))
    assert model.decode_curves is not None
    for curve in model.decode_curves:
        last_step = (curve["decode"][-1] - curve["decode"][-2]) / 2
        assert last_step == pytest.approx(g / 2)  # the old tail: half the true slope
        assert curve["tail_slope"] == pytest.approx(g, rel=0.05)
    for p in (1, 64):
        truth = 0.05 + 1e-4 * p + g * 255
        assert float(model.predict(p, 256)) == pytest.approx(truth, rel=0.03)


def test_k_fold_says_how_many_folds_it_could_fit() -> None:
    """A fold whose remaining points leave a prompt size one output length is not fitted: the
    k-fold error is over the others, and a note says how many of those asked that is."""
    rows = [(p, o, 0.01 + 1e-4 * p + 0.002 * (o - 1)) for p in (16, 32, 64) for o in (1, 8)]
    rows.append((64, 16, 0.01 + 64e-4 + 0.03))
    points = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "runtime_s"])
    model = fit_cost_model(points, folds=4)
    cv = model.fit["cross_validation"]
    assert 0 < cv["folds"] < cv["asked"] == 4 and cv["points"] == len(rows)
    assert f"k-fold over {len(rows)} (p, o) points: only {cv['folds']} of 4 folds left" in (
        " ".join(model.fit["notes"])
    )
    whole = fit_cost_model(points.query("prompt_tokens == 16"), folds=2)
    assert whole.fit["cross_validation"]["folds"] == 0
    assert "no fold left points that could be fitted" in " ".join(whole.fit["notes"])
