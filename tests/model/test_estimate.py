"""Pricing queries: columns, arithmetic, files and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import (
    Pricing,
    estimate_queries,
    pricing_for,
    read_queries,
    summarize,
    write_table,
)
from infermeter.spec.hardware import Stack, get_accelerator

RUNTIME = CostModel([1, 512, 1536], [0.02, 0.1, 0.33], 0.02, model="m")
ENERGY = CostModel([1, 512, 1536], [6.0, 30.0, 99.0], 7.0, quantity="energy_j")


@given(
    p=st.lists(st.integers(1, 4096), min_size=1, max_size=50),
    o=st.integers(1, 1024),
    count=st.integers(1, 8),
)
def test_cost_and_energy_are_runtime_times_stack(p: list[int], o: int, count: int) -> None:
    acc = get_accelerator("h100")
    pricing = Pricing.of(acc, count)
    queries = pd.DataFrame({"prompt_tokens": p, "output_tokens": [o] * len(p)})
    out = estimate_queries(queries, RUNTIME, pricing)
    assert np.allclose(out.cost_usd, out.runtime_s * count * acc.price_per_hour_usd / 3600)
    assert np.allclose(out.energy_j, out.runtime_s * count * acc.tdp_watts)
    assert (out.runtime_s > 0).all()


def test_columns_ids_measured_energy_and_co2() -> None:
    queries = pd.DataFrame({"id": ["a", "b"], "prompt_tokens": [1, 512], "output_tokens": [1, 11]})
    out = estimate_queries(queries, RUNTIME, Pricing("x", 1, 3.6, 100.0), ENERGY, 400.0)
    assert list(out.columns) == [
        "id",
        "prompt_tokens",
        "output_tokens",
        "runtime_s",
        "cost_usd",
        "energy_j",
        "energy_wh",
        "energy_measured_j",
        "energy_measured_wh",
        "co2e_g",
    ]
    assert out.energy_measured_wh.tolist() == pytest.approx([6.0 / 3600, 100.0 / 3600])
    assert out.runtime_s.tolist() == pytest.approx([0.02, 0.1 + 10 * 0.02])
    assert out.cost_usd.tolist() == pytest.approx([0.02 / 1000, 0.3 / 1000])
    assert out.energy_measured_j.tolist() == pytest.approx([6.0, 100.0])
    assert out.co2e_g.tolist() == pytest.approx([6.0 / 3.6e6 * 400, 100.0 / 3.6e6 * 400])
    totals = summarize(out)
    assert totals.loc["total", "runtime_s"] == pytest.approx(0.32)


def test_pricing_follows_the_profiled_stack_and_flags() -> None:
    acc = get_accelerator("a100", {"price_per_hour_usd": 1.5})
    model = CostModel([1, 2], [0.1, 0.2], 0.01, stack=Stack("hf", acc, 2, 2, "bfloat16").to_dict())
    pricing, note = pricing_for(model)
    assert note is None
    assert (pricing.num_accelerators, pricing.price_per_hour_usd) == (2, 1.5)
    pricing, _ = pricing_for(model, "h100", 1, {"tdp_watts": 500})
    assert pricing.accelerator == "h100-sxm" and pricing.watts == 500
    _, note = pricing_for(CostModel([1, 2], [0.1, 0.2], 0.01))
    assert note and "A100" in note


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_files_round_trip(tmp_path: Path, suffix: str) -> None:
    queries = pd.DataFrame({"id": [1, 2], "prompt_tokens": [5, 600], "output_tokens": [3, 9]})
    path = write_table(queries, tmp_path / f"q{suffix}")
    read = read_queries(path)
    assert read[["prompt_tokens", "output_tokens"]].values.tolist() == [[5, 3], [600, 9]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("prompt_tokens,output\n1,2\n", "lacks column"),
        ("prompt_tokens,output_tokens\n1,0\n", "positive"),
        ("prompt_tokens,output_tokens\n1.5,2\n", "whole number"),
        ("prompt_tokens,output_tokens\nx,2\n", "whole number"),
        ("prompt_tokens,output_tokens\n", "no queries"),
    ],
)
def test_bad_queries(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_queries(path)


def test_unreadable_queries(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_queries(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="format"):
        read_queries(tmp_path / "q.txt")
    bad = tmp_path / "q.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match="cannot read"):
        read_queries(bad)


def test_energy_model_is_not_a_runtime_model() -> None:
    with pytest.raises(UserError, match="energy"):
        estimate_queries(
            pd.DataFrame({"prompt_tokens": [1], "output_tokens": [1]}),
            ENERGY,
            Pricing("x", 1, 1.0, 1.0),
        )


def test_estimates_survive_csv_exactly(tmp_path: Path) -> None:
    queries = pd.DataFrame(
        {"id": ["a,b", "c"], "prompt_tokens": [7, 900], "output_tokens": [3, 250]}
    )
    out = estimate_queries(queries, RUNTIME, Pricing("x", 2, 3.3, 700.0), ENERGY)
    back = pd.read_csv(write_table(out, tmp_path / "e.csv"))
    pd.testing.assert_frame_equal(back, out, check_exact=True)


def test_the_profiles_sample_queries_stay_within_its_prompt_sizes() -> None:
    # Headed "within the profiled range", it listed p = 1 after a profile of 8..32 tokens.
    from infermeter.model.estimate import profiled_sample

    model = CostModel([8, 20, 32], [0.02, 0.03, 0.04], 0.01, model="m")
    sample = profiled_sample(model)
    assert sorted(set(sample.prompt_tokens)) == [8, 32]
    assert set(profiled_sample(RUNTIME).prompt_tokens) == {1, 384, 1536}
