"""The MoE batch-curve figure's prediction: the decode step scales with the bytes of the
experts a batch touches."""

from __future__ import annotations

import pandas as pd
import pytest

from infermeter.report.moe_figs import distinct_experts_prediction, fig_moe_batch_curve
from infermeter.report.plot import encode
from infermeter.spec.catalog import get_spec


def test_prediction_scales_the_batch_1_step_by_bytes() -> None:
    spec = get_spec("qwen3-30b-a3b")
    table = distinct_experts_prediction(spec, [1, 8, 256], context=512, step_1_s=0.002)
    first, mid, last = table.to_dict(orient="records")
    assert first["step_predicted_s"] == pytest.approx(0.002)
    assert first["experts_predicted"] == pytest.approx(8)
    assert last["experts_predicted"] == pytest.approx(128, abs=1e-3)  # every expert
    ratio = spec.decode_bytes(512, 8) / spec.decode_bytes(512, 1)
    assert mid["step_predicted_s"] == pytest.approx(0.002 * ratio)
    assert mid["tokens_per_s_predicted"] == pytest.approx(8 / (0.002 * ratio))
    with pytest.raises(ValueError, match="no mixture"):
        distinct_experts_prediction(get_spec("llama-7b"), [1], 512, 0.01)


def test_figure_draws_measured_and_predicted() -> None:
    data = pd.DataFrame(
        {
            "batch": [1, 2, 4],
            "tokens_per_s": [100.0, 180.0, 300.0],
            "tokens_per_s_predicted": [100.0, 190.0, 330.0],
            "experts_measured": [8.0, 15.0, 28.0],
            "experts_predicted": [8.0, 15.5, 29.1],
        }
    )
    plot = fig_moe_batch_curve(data, "test")
    assert len(plot.figure.axes) == 2
    assert len(plot.figure.axes[0].lines) == 2 and len(plot.figure.axes[1].lines) == 2
    assert encode(plot.figure)[:4] == b"\x89PNG"
