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


class _Recorder:
    """Stands in for the tuned kernel (no GPU here): records the arguments of a launch by the
    real kernel's argument names."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.calls = names, []

    def __getitem__(self, grid: object) -> object:
        def launch(*args: object, **kwargs: object) -> None:
            self.calls.append({**dict(zip(self.names, args, strict=False)), **kwargs})

        return launch


@pytest.mark.parametrize("blocks", [1, 38, 286, 300])
def test_grouped_linear_launches_with_the_bucket_of_its_row_blocks(
    blocks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    recorder = _Recorder(list(moe_kernels._grouped_gemm.arg_names))
    monkeypatch.setattr(moe_kernels, "_grouped_gemm", recorder)
    block_m, experts, n, k = 16, 4, 8, 32
    rows = torch.zeros(blocks * block_m, dtype=torch.int32)
    block_experts = torch.zeros(blocks, dtype=torch.int32)
    a, w = torch.zeros(3, k), torch.zeros(experts, n, k)
    moe_kernels.grouped_linear(a, w, rows, block_experts, pairs=3, a_div=1)
    (call,) = recorder.calls
    assert call["blocks_bucket"] == moe_kernels.row_blocks_bucket(blocks)
    assert call["BLOCK_M"] == block_m and call["N"] == n and call["K"] == k
