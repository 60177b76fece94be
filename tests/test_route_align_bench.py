"""benchmarks/route_align_bench.py: the routing sizes it times and its one-line refusals (the
timing itself needs a GPU; route_align's arithmetic is checked in the interpreter by
tests/scripts/interpret_kernels.py)."""

from __future__ import annotations

import sys

import pytest

from bench_script import assert_refused
from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(REPO / "benchmarks"))

from route_align_bench import cases, same_routing, torch_routing


def test_cases_are_the_sizes_route_align_serves() -> None:
    got = [(m, t, layout) for m, _, t, layout in cases(["qwen3-30b-a3b", "mixtral-8x7b"])]
    for model in ("qwen3-30b-a3b", "mixtral-8x7b"):  # k 8 of 128 and 2 of 8: 8 tokens fit
        assert [(t, lay) for m, t, lay in got if m == model] == [
            (1, False), (1, True), (2, True), (4, True), (8, True),
        ]  # fmt: skip
    assert cases(["llama-7b", "deepseek-v3"]) == []  # dense; group-limited routing


def test_torch_routing_renormalises_the_top_k() -> None:
    import torch

    moe = cases(["qwen3-30b-a3b"])[0][1]
    logits = torch.tensor([[0.0] * 120 + [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.125]])
    ids, weights, _ = torch_routing(logits, moe, None)
    assert ids.tolist() == [list(range(120, 128))]
    assert torch.allclose(weights.sum(-1), torch.ones(1)) and weights[0, 0] > weights[0, 1]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--launches", "0"], "--launches must be at least 1, not 0"),
        (["--models", "no-such-model"], "unknown model 'no-such-model'"),
        (["--models", "llama-7b"], "llama-7b is not a mixture-of-experts model"),
        (["--models", "deepseek-v3"], "none of these routes in route_align"),
        (["--models", " , "], "--models names no model"),
        ([], "needs a CUDA GPU"),  # this machine: no GPU
    ],
)
def test_bad_input_and_no_gpu_are_one_line(tmp_path, args: list[str], says: str) -> None:
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("a GPU is here: the bench would run")
    assert_refused("route_align_bench.py", args, says, tmp_path)


def test_same_routing_takes_either_of_tied_experts_and_nothing_else() -> None:
    import torch

    moe = cases(["mixtral-8x7b"])[0][1]  # top 2 of 8
    logits = torch.tensor([[3.0, 1.0, 3.0, 0.0, 2.0, -1.0, 0.5, 0.0]]).bfloat16()
    want = torch_routing(logits, moe, None)
    ids, weights = want[0], want[1]
    assert same_routing(ids, weights, want)
    swapped = ids.flip(-1)
    assert same_routing(swapped, weights.flip(-1), want)  # order free
    logits_tie = torch.tensor([[3.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]]).bfloat16()
    tied = torch_routing(logits_tie, moe, None)
    other = torch.tensor([[0, 2 if tied[0][0, 1].item() == 1 else 1]])
    assert same_routing(other, tied[1], tied)  # the other of the two tied experts
    assert not same_routing(torch.tensor([[0, 4]]), weights, want)  # not a top-2
    assert not same_routing(torch.tensor([[0, 0]]), weights, want)  # an expert twice
    assert not same_routing(ids, weights * 1.01, want)  # wrong weights


def test_route_warps_follow_the_tokens_up_to_eight() -> None:
    from infermeter.engine.moe_kernels import route_warps

    assert [route_warps(t) for t in (1, 2, 3, 4, 5, 8, 16, 32)] == [1, 2, 4, 4, 8, 8, 8, 8]
