"""What the Triton kernels' tiles are tuned per: every autotune key names an argument of its
kernel (Triton drops a key that names none from the tuning key, silently), and the MoE grouped
GEMM's tile is tuned per range of row blocks (moe_kernels.row_blocks_bucket), not once for
every prompt size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

from infermeter.engine import gemv_kernels, kernels, moe_kernels

TUNED = [kernels._small_linear, gemv_kernels._rows_gemv, moe_kernels._grouped_gemm]


@pytest.mark.parametrize("tuner", TUNED, ids=lambda t: t.fn.__name__)
def test_every_tuning_key_is_an_argument_of_its_kernel(tuner: object) -> None:
    assert tuner.keys and set(tuner.keys) <= set(tuner.arg_names)  # type: ignore[attr-defined]


def test_the_grouped_gemm_is_tuned_per_range_of_row_blocks() -> None:
    assert "blocks_bucket" in moe_kernels._grouped_gemm.keys
    # gpt-oss-20b's prompts of 97 tokens (top-4 of 32 experts in blocks of 64 rows: 38
    # blocks) and of 4,065 (286) are tuned apart; 4,065 and 4,097 (288) together
    bucket = moe_kernels.row_blocks_bucket
    assert bucket(38) != bucket(286) and bucket(286) == bucket(288)


@given(st.integers(min_value=1, max_value=1 << 20))
def test_a_bucket_is_the_power_of_two_at_or_above_the_blocks(blocks: int) -> None:
    bucket = moe_kernels.row_blocks_bucket(blocks)
    assert bucket & (bucket - 1) == 0 and blocks <= bucket < 2 * blocks
