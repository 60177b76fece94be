"""benchmarks/autotune_spread.py counts the tiles of every autotuned GEMV kernel of the engine
(a record once counted only the looped one, which MoE runs on whole rows never tune)."""

from __future__ import annotations

import sys

import pytest

from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(REPO / "benchmarks"))


def test_every_autotuned_gemv_kernel_is_counted() -> None:
    import autotune_spread
    from infermeter.engine import gemv_kernels, kernels, moe_kernels

    tuned = autotune_spread._tuned_kernels()
    assert tuned == {
        "small_linear": kernels._small_linear,
        "rows_gemv": gemv_kernels._rows_gemv,
        "grouped_gemm": moe_kernels._grouped_gemm,
    }
    for tuner in tuned.values():  # what one_process() reads: the autotuner's choices
        assert isinstance(tuner.cache, dict) and tuner.configs
