"""The Triton kernels' autotuned tiles are kept on disk, so that a profile and a user's later
process run the same tiles (tuned afresh, the choice moved a LLaMA-7B query by up to 4.3%
between processes on an H200: docs/benchmarks/autotune_spread.md)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")
triton = pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

from infermeter.engine import kernels, moe_kernels  # noqa: E402


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_autotune(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return lambda fn: fn

    monkeypatch.setattr(kernels.triton, "autotune", fake_autotune)
    return calls


def test_a_triton_that_can_keep_the_choice_is_asked_to(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture(monkeypatch)
    monkeypatch.setattr(kernels, "_KEEPS_CHOICE", True)
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    kernels.autotune(kernels._gemv_configs(), key=["N", "K"])
    assert calls[0]["cache_results"] is True
    assert calls[0]["key"] == ["N", "K"]
    assert "kept in Triton's cache" in kernels.tiles_note()


def test_an_older_triton_tunes_per_process_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture(monkeypatch)
    monkeypatch.setattr(kernels, "_KEEPS_CHOICE", False)
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    kernels.autotune(kernels._gemv_configs(), key=["N"])
    assert "cache_results" not in calls[0]
    assert "in each process" in kernels.tiles_note()


def test_the_installed_triton_keeps_the_choice_where_it_has_the_option() -> None:
    import inspect

    supported = "cache_results" in inspect.signature(triton.autotune).parameters
    assert kernels._KEEPS_CHOICE is supported
    if supported and not kernels.INTERPRETED:
        # every autotuned kernel of the engine was built with the option on
        for tuned in (kernels._small_linear, moe_kernels._grouped_gemm, moe_kernels._expert_gemv):
            assert tuned.cache_results is True
