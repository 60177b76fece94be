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
import torch
import route_align_bench as bench
from infermeter.engine import moe_kernels

done = []
for name, moe, tokens, layout in bench.cases(json.loads(sys.argv[2]), every=True):
    logits, options, want = bench.routing_inputs(moe, tokens, layout, "cpu")
    bench.check_warps(name, moe, logits, options, want)
    done.append([name, tokens, layout])
real = moe_kernels.route_align
faults = {
    "weights on other experts": lambda out: (out[0], out[1].flip(-1), *out[2:]),
    "a pair in another block": lambda out: (*out[:2], out[2].roll(16), out[3]),
    "another expert's block": lambda out: (*out[:3], out[3].roll(1)),
}
caught = []
for label, fault in faults.items():
    moe_kernels.route_align = lambda *a, fault=fault, **k: fault(real(*a, **k))
    _, moe, _, _ = bench.cases(["mixtral-8x7b"])[0]
    logits, options, want = bench.routing_inputs(moe, 4, True, "cpu")
    try:
        bench.check_warps(label, moe, logits, options, want)
    except SystemExit:
        caught.append(label)
moe_kernels.route_align = real
print(json.dumps({"done": done, "caught": caught}))
"""


def test_every_size_passes_its_check_in_the_interpreter_and_faults_do_not() -> None:
    """The bench's checks on route_align at every token count it serves (the interpreter
    ignores the warps: this checks the kernel's arithmetic and the checking code), and
    each of three planted faults caught."""
    import json

    models = ["mixtral-8x7b", "deepseek-v2-lite", "qwen3-30b-a3b"]
    out = interpreted(CHECK, str(REPO / "benchmarks"), json.dumps(models))
    got = json.loads(out.strip().splitlines()[-1])
    assert len(got["done"]) == len(cases(models, every=True)) == 33 + 9 + 9
    assert len(got["caught"]) == 3, got["caught"]
