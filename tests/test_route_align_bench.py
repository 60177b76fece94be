"""benchmarks/route_align_bench.py: the routing sizes it times and its one-line refusals (the
timing itself needs a GPU; route_align's arithmetic is checked in the interpreter by
tests/scripts/interpret_kernels.py)."""

from __future__ import annotations

import sys

import pytest

from bench_script import assert_refused, interpreted
from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(REPO / "benchmarks"))

from route_align_bench import cases, same_layout, same_routing, torch_routing


def test_cases_are_every_size_route_align_serves() -> None:
    got = cases(["qwen3-30b-a3b", "mixtral-8x7b", "gpt-oss-20b"])
    sizes = {m: [(t, lay) for name, _, t, lay in got if name == m] for m, *_ in got}
    ids_only = [(1, False)]  # one token on the expert GEMVs: routing alone
    assert sizes["qwen3-30b-a3b"] == ids_only + [(t, True) for t in (1, 2, 4, 8)]  # 8 x k 8
    assert sizes["gpt-oss-20b"] == ids_only + [(t, True) for t in (1, 2, 4, 8, 16)]  # k 4
    assert sizes["mixtral-8x7b"] == ids_only + [(t, True) for t in (1, 2, 4, 8, 16, 32)]
    assert cases(["llama-7b", "deepseek-v3"]) == []  # dense; group-limited routing


def test_torch_routing_renormalises_the_top_k() -> None:
    import torch

    moe = cases(["qwen3-30b-a3b"])[0][1]
    logits = torch.tensor([[0.0] * 120 + [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.125]])
    want = torch_routing(logits, moe, None)
    assert want["ids"].tolist() == [list(range(120, 128))]
    weights = want["weights"]
    assert torch.allclose(weights.sum(-1), torch.ones(1)) and weights[0, 0] > weights[0, 1]


def test_same_routing_takes_either_of_tied_experts_and_nothing_else() -> None:
    import torch

    moe = cases(["mixtral-8x7b"])[0][1]  # top 2 of 8
    logits = torch.tensor([[3.0, 1.0, 3.5, 0.0, 2.0, -1.0, 0.5, 0.0]]).bfloat16()
    want = torch_routing(logits, moe, None)
    ids, weights = want["ids"], want["weights"]
    assert same_routing(ids, weights, want, moe)
    assert same_routing(ids.flip(-1), weights.flip(-1), want, moe)  # order free
    assert not same_routing(ids, weights.flip(-1), want, moe)  # weights on the wrong experts
    assert not same_routing(torch.tensor([[0, 4]]), weights, want, moe)  # not a top-2
    assert not same_routing(torch.tensor([[2, 2]]), weights, want, moe)  # an expert twice
    assert not same_routing(ids, weights * 1.01, want, moe)  # wrong weights
    tie = torch_routing(torch.tensor([[3.0, 2.0, 2.0, 0.0, 0, 0, 0, 0]]).bfloat16(), moe, None)
    other = torch.tensor([[0, 3 - int(tie["ids"][0, 1])]])  # the other of the tied 1 and 2
    assert same_routing(other, tie["weights"], tie, moe)


def test_same_layout_is_align_of_the_ids_in_any_order_within_a_block() -> None:
    import torch

    from infermeter.engine.moe_kernels import DECODE_BLOCK_M, align

    ids = torch.tensor([[3, 1], [1, 0], [3, 2]])
    rows, blocks = align(ids, 4, DECODE_BLOCK_M)
    assert same_layout(rows, blocks, ids, 4)
    shuffled = rows.clone().view(-1, DECODE_BLOCK_M).flip(-1).reshape(-1)
    assert same_layout(shuffled, blocks, ids, 4)  # order within a block is free
    swapped = rows.clone()
    swapped[[0, DECODE_BLOCK_M]] = swapped[[DECODE_BLOCK_M, 0]]  # a pair into another block
    assert not same_layout(swapped, blocks, ids, 4)
    assert not same_layout(rows, blocks.flip(0), ids, 4)


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


def test_route_warps_follow_the_tokens_up_to_eight() -> None:
    from infermeter.engine.moe_kernels import route_warps

    assert [route_warps(t) for t in (1, 2, 3, 4, 5, 8, 16, 32)] == [1, 2, 4, 4, 8, 8, 8, 8]


CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from route_align_bench import cases, check_warps, routing_inputs

done = []
for name, moe, tokens, layout in cases(["mixtral-8x7b", "deepseek-v2-lite"]):
    logits, options, want = routing_inputs(moe, tokens, layout, "cpu")
    check_warps(name, moe, logits, options, want)
    done.append([name, tokens, layout])
print(json.dumps(done))
"""


def test_every_case_passes_its_check_in_the_interpreter() -> None:
    """The bench's checks on route_align itself (the interpreter ignores the warps, so this
    checks the checking code and the kernel's arithmetic at every size the GPU times)."""
    import json

    done = json.loads(interpreted(CHECK, str(REPO / "benchmarks")).strip().splitlines()[-1])
    assert len(done) == len(cases(["mixtral-8x7b", "deepseek-v2-lite"])) == 12
