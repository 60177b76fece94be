"""Stack comparison: per-query ratios and the verdict on whole benchmarks (§5.3)."""

from __future__ import annotations

import pandas as pd
import pytest

from infermeter.errors import UserError
from infermeter.model.compare import StackProfile, compare_stacks, default_queries, verdict
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import Pricing

QUERIES = pd.DataFrame({"prompt_tokens": [1, 512, 1024], "output_tokens": [1, 32, 64]})


def stack(label: str, scale: float, usd_per_hour: float, count: int = 1) -> StackProfile:
    model = CostModel([1, 1024], [0.02 * scale, 0.2 * scale], 0.01 * scale)
    return StackProfile(label, model, Pricing("gpu", count, usd_per_hour, 300.0))


def test_slower_but_cheaper_and_slower_and_dearer() -> None:
    a100 = stack("a100", 1.0, 4.0)
    cheap = stack("cheap", 1.5, 2.0)  # 1.5x slower at half the price per hour
    v100 = stack("v100", 1.5, 3.0, count=2)  # slower, and needs twice the GPUs (Fig. 8)
    result = compare_stacks([a100, cheap, v100], QUERIES)
    summary = result.summary.set_index("stack")
    assert summary.loc["a100", "verdict"] == "baseline"
    assert summary.loc["cheap", "speedup"] == pytest.approx(1 / 1.5)
    assert summary.loc["cheap", "cost_ratio"] == pytest.approx(0.75)
    assert summary.loc["cheap", "verdict"] == "slower but cheaper"
    assert summary.loc["v100", "cost_ratio"] == pytest.approx(1.5 * 2 * 3 / 4)
    assert summary.loc["v100", "verdict"] == "slower and dearer"
    assert summary.loc["v100", "energy_ratio"] == pytest.approx(3.0)
    per_query = result.per_query
    assert len(per_query) == 3 * len(QUERIES)
    assert per_query[per_query["stack"] == "cheap"].cost_ratio.tolist() == pytest.approx([0.75] * 3)


def test_baseline_by_label_and_bad_inputs() -> None:
    one, two = stack("one", 1.0, 1.0), stack("two", 0.5, 1.0)
    result = compare_stacks([one, two], QUERIES, baseline="two")
    assert result.baseline == "two"
    assert result.summary.set_index("stack").loc["one", "verdict"] == "slower and dearer"
    with pytest.raises(UserError, match="at least two"):
        compare_stacks([one], QUERIES)
    with pytest.raises(UserError, match="none of the stacks"):
        compare_stacks([one, two], QUERIES, baseline="three")
    with pytest.raises(UserError, match="must differ"):
        compare_stacks([one, one], QUERIES)


def test_verdicts_and_default_queries() -> None:
    assert verdict(2.0, 0.5) == "faster and cheaper"
    assert verdict(2.0, 1.5) == "faster but dearer"
    grid = default_queries([CostModel([1, 64], [0.0, 0.1], 0.01)], max_context=100)
    assert (grid.prompt_tokens + grid.output_tokens <= 100).all()
    assert set(grid.prompt_tokens) == {1, 64}
