"""Mixture-of-experts decode against batch size, beside the distinct-experts prediction.

A decode step of a MoE model reads, per MoE layer, the experts its batch touches: with k of E
experts per token and balanced routing, E·(1 − (1 − k/E)^b) at batch b (spec.MoE). A step is
memory-bound at small batch, so its time should grow like the bytes it reads:
step(b) ≈ step(1) · bytes(b) / bytes(1), bytes from spec.decode_bytes. The figure sets the
measured tokens/s against that prediction, and the experts the router touched against the
formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from infermeter.report.plot import Plot, color, new_figure
from infermeter.spec.model import ModelSpec


def distinct_experts_prediction(
    spec: ModelSpec, batches: Sequence[int], context: int, step_1_s: float
) -> pd.DataFrame:
    """Per batch b: expected distinct experts per MoE layer, decode bytes, and the predicted
    step time (s) and tokens/s when the step scales with its bytes from the measured batch-1
    step `step_1_s` (seconds). Raises ValueError without MoE or for a non-positive step."""
    if spec.moe is None:
        raise ValueError(f"{spec.name} has no mixture of experts")
    if not step_1_s > 0:
        raise ValueError("the batch-1 step time must be positive")
    base = spec.decode_bytes(context, 1)
    rows = []
    for b in batches:
        step = step_1_s * spec.decode_bytes(context, b) / base
        rows.append(
            {
                "batch": b,
                "experts_predicted": spec.expected_distinct_experts(b),
                "bytes_predicted": spec.decode_bytes(context, b),
                "step_predicted_s": step,
                "tokens_per_s_predicted": b / step,
            }
        )
    return pd.DataFrame(rows)


def fig_moe_batch_curve(data: pd.DataFrame, title: str) -> Plot:
    """data: batch, tokens_per_s (measured), tokens_per_s_predicted, experts_measured (mean
    over MoE layers, may be NaN), experts_predicted. Two panels, log-2 batch axis."""
    fig, axes = new_figure(1, 2, width=9.0, height=3.4)
    left, right = axes[0, 0], axes[0, 1]
    left.plot(data.batch, data.tokens_per_s, "o-", color=color(0), label="measured")
    left.plot(
        data.batch, data.tokens_per_s_predicted, "--", color=color(1),
        label="step ∝ bytes of the distinct experts",
    )  # fmt: skip
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="decode tokens/s")
    left.set_xscale("log", base=2)
    left.legend()
    left.set_title(title)
    right.plot(data.batch, data.experts_predicted, "--", color=color(1), label="E·(1−(1−k/E)^b)")
    if "experts_measured" in data and data.experts_measured.notna().any():
        right.plot(data.batch, data.experts_measured, "o", color=color(0), label="router (random)")
    right.set_xscale("log", base=2)
    right.set(xlabel="batch size", ylabel="distinct experts per MoE layer")
    right.legend()
    return Plot(fig, data)
