"""benchmarks/gemv_chain_probe.py: the one-launch chain of GEMVs in Triton's interpreter
(every variant the GPU times, ragged shapes, counters), its plan's layout, and its errors.
The interpreter runs programs one at a time, so it checks the arithmetic and the tile
schedule, not the waits' ordering (the GPU run checks every repeat's output for that)."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_script import assert_refused, interpreted
from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(REPO / "benchmarks"))

from gemv_chain_probe import plan

CHAIN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from gemv_chain_probe import Chain, chain_close, reference

torch.manual_seed(0)
shapes = [(40, 32), (33, 32), (50, 32), (24, 48), (48, 16)]  # ragged against every tile
ws = [(torch.randn(n, k) * k**-0.5).bfloat16() for n, k in shapes]
x0 = torch.randn(1, 32).bfloat16()
packed = torch.cat([w.reshape(-1) for w in ws])
want = reference(ws, x0, bf16=False)
last = want[-1]
result = []
for tile in [(4, 16, 1), (8, 32, 1), (2, 64, 1), (16, 16, 1)]:
    c = Chain(packed, shapes, x0, 3, tile)
    for opts in [{"one_launch": False}, {"early": False}, {"early": True}, {"ticket": False},
                 {"one_launch": False, "count": False}]:
        c.reset()
        c.run(2, **opts)
        tiles, tickets = c.counts(2)
        result.append({
            "tile": tile, "opts": opts, "error": (c.output(2) - last).abs().max().item(),
            "scale": last.abs().max().item(), "every": chain_close(c.outputs(2), want, 1e-5),
            "off": chain_close(c.outputs(2)[:-1] + [last * 1.01], want, 1e-5),
            "tiles": tiles, "need": c.plan.need,
            "tickets": tickets, "all": c.plan.tiles, "others": c.act[:2, 32:].abs().max().item(),
        })
print(json.dumps(result))
"""


def test_every_variant_computes_the_chain_and_counts_its_tiles() -> None:
    stdout = interpreted(CHAIN, str(REPO / "benchmarks"), timeout_s=600)
    runs = json.loads(stdout)
    assert len(runs) == 20
    for run in runs:
        assert run["error"] <= 1e-4 * run["scale"] and run["every"], run
        assert not run["off"], run  # chain_close sees a last output 1 % off
        counted = run["opts"].get("count", True)  # every tile of every GEMV added once
        assert run["tiles"] == (run["need"] if counted else [0] * len(run["need"])), run
        ticketed = run["opts"].get("ticket", True) and run["opts"].get("one_launch", True)
        assert run["tickets"] == (run["all"] if ticketed else 0), run
        assert run["others"] == 0.0, run  # other repeats' outputs untouched


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=6),
    st.integers(1, 20),
    st.sampled_from([1, 2, 4, 8, 16]),
    st.sampled_from([16, 64, 512, 2048]),
)
def test_plan_lays_out_every_gemv_once_and_aligned(
    ns: list[int], k0: int, block_n: int, kc: int
) -> None:
    """Outputs 16-aligned and apart, input i + 1 at output i, tiles counted and contiguous."""
    ks = [16 * k0] + [16 * max(1, n // 16) for n in ns[:-1]]
    ns = [max(n, k) for n, k in zip(ns, [*ks[1:], 1], strict=True)]
    shapes = list(zip(ns, ks, strict=True))
    p = plan(shapes, block_n, kc)
    assert p.woff == [sum(n * k for n, k in shapes[:i]) for i in range(len(shapes))]
    assert all(y % 16 == 0 for y in p.yoff) and p.yoff[0] >= ks[0]
    for i in range(1, len(shapes)):
        assert p.yoff[i] >= p.yoff[i - 1] + ns[i - 1]  # no overlap
        assert p.xoff[i] == p.yoff[i - 1]
    assert p.xoff[0] == 0 and p.act_len >= p.yoff[-1] + ns[-1]
    assert p.need == [-(-n // block_n) * -(-k // kc) for n, k in shapes]
    assert p.starts == [sum(p.need[:i]) for i in range(len(shapes) + 1)]


@pytest.mark.parametrize(
    ("shapes", "says"),
    [
        ([], "a chain needs a GEMV"),
        ([(32, 20)], "every K a multiple of 16"),
        ([(0, 16)], "every N at least 1"),
        ([(32, 16), (16, 48)], "GEMV 1 reads K = 48 of 32 outputs"),
    ],
)
def test_plan_refuses_what_the_kernel_cannot_run(shapes: list, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        plan(shapes, 4, 64)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--layers", "0"], "--layers must be at least 1, not 0"),
        (["--repeats", "-2"], "--repeats must be at least 1, not -2"),
        (["--shape", "gpt2"], "invalid choice: 'gpt2'"),
        (["--name", "a/b"], "--name must be a file name (no folder), not 'a/b'"),
        ([], "needs a CUDA GPU"),  # this machine: no GPU
    ],
)
def test_bad_input_and_no_gpu_are_one_line(tmp_path, args: list[str], says: str) -> None:
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("a GPU is here: the probe would run")
    assert_refused("gemv_chain_probe.py", args, says, tmp_path)
