"""benchmarks/kernel_removal_probe.py: which kernels it removes per model, that a removal is
undone on exit, and its one-line refusals (the timing itself needs a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_script import assert_refused
from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(REPO / "benchmarks"))

from kernel_removal_probe import REMOVALS, SKIPPED, _first_call, applicable, removed


def test_removals_follow_the_architecture() -> None:
    assert applicable("qwen3-30b-a3b") == REMOVALS  # qk-norm and MoE routing
    assert applicable("gpt-oss-20b") == ("rope_store", "combine", "route_align")
    assert applicable("llama-7b") == ("rope_store", "combine")


def test_removed_kernels_come_back() -> None:
    from infermeter.engine import kernels, moe_kernels

    before = (kernels.qk_norm, kernels.rope_store, kernels._attn_combine, moe_kernels.route_align)
    SKIPPED.clear()
    with removed(REMOVALS):
        assert kernels.qk_norm(1, 2) is None and kernels._attn_combine[(1,)](3) is None
        assert SKIPPED == {"qk_norm": 1, "combine": 1}
        assert kernels.rope_store is not before[1] and moe_kernels.route_align is not before[3]
    assert (kernels.qk_norm, kernels.rope_store, kernels._attn_combine,
            moe_kernels.route_align) == before  # fmt: skip
    with pytest.raises(ValueError, match="unknown removal 'norm'"), removed(("norm",)):
        pass
    assert kernels.qk_norm is before[0]


def test_first_call_is_kept_per_shape() -> None:
    import torch

    calls = []

    def route(logits: torch.Tensor, k: int, layout: bool = False) -> int:
        calls.append(logits.shape)
        return len(calls)

    SKIPPED.clear()
    kept = _first_call(route)
    one, two = torch.zeros(1, 8), torch.zeros(2, 8)
    assert [kept(one, 2, layout=False), kept(one, 2, layout=False), kept(two, 2, layout=True)] == [
        1, 1, 2
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--name", "a/b"], "--name must be a file name"),
        (["--repeats", "0"], "at least 1"),
        (["--models", " , "], "--models names no model"),
        (["--models", "no-such-model"], "no-such-model"),
    ],
)
def test_refusals(args: list[str], says: str, tmp_path: Path) -> None:
    assert_refused("kernel_removal_probe.py", args, says, tmp_path)


@pytest.mark.parametrize("script", ["kernel_removal_probe.py", "split_merge_check.py"])
def test_an_out_that_is_a_file_is_refused_up_front(script: str, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "benchmarks" / script), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is a file: it must be a folder" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_other_paths_switch_the_engine_and_switch_back() -> None:
    from infermeter.engine import kernels

    before = (kernels.SPLIT_MERGE, kernels.ROPE_QK_NORM)
    with removed(("merge_fused",)):
        assert kernels.SPLIT_MERGE is True and kernels.ROPE_QK_NORM is before[1]
    with removed(("qk_norm_kernel",)):
        assert kernels.ROPE_QK_NORM is False and kernels.SPLIT_MERGE is before[0]
    with removed(("qk_norm", "combine")):  # a removal also leaves the fused paths
        assert kernels.ROPE_QK_NORM is False and kernels.SPLIT_MERGE is False
    assert before == (kernels.SPLIT_MERGE, kernels.ROPE_QK_NORM)


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--name", "../x"], "--name must be a file name"), (["--launches", "1"], "at least 2")],
)
def test_split_merge_check_refusals(args: list[str], says: str, tmp_path: Path) -> None:
    assert_refused("split_merge_check.py", args, says, tmp_path)
