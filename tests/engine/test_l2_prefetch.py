"""The decode GEMVs' L2 prefetch (engine/l2_prefetch.py): which weights each GEMV asks for,
how a region is shared out among programs, and where it is switched off.

The prefetch itself (a PTX instruction) runs only on an sm_90+ GPU, where the engine
self-checks it at start (select._prefetch_problem) and benchmarks/decode_power.py times it;
here: the wiring on a real tiny model, the share arithmetic in Triton's interpreter, and the
refusals.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

from infermeter.engine.model import Decoder  # noqa: E402
from infermeter.engine.parallel import Comm, partition  # noqa: E402
from infermeter.engine.select import l2_prefetch  # noqa: E402
from infermeter.errors import UserError  # noqa: E402
from infermeter.spec.catalog import resolve_spec  # noqa: E402

SHARES = """
import json, sys
import torch, triton, triton.language as tl
from infermeter.engine.l2_prefetch import share_range

@triton.jit
def _shares(Out, nbytes, parts):
    part = tl.program_id(0)
    start, size = share_range(nbytes, part, parts)
    tl.store(Out + 2 * part, start)
    tl.store(Out + 2 * part + 1, size)

result = []
for nbytes, parts in json.loads(sys.argv[1]):
    out = torch.zeros(2 * parts, dtype=torch.int64)
    _shares[(parts,)](out, nbytes, parts)
    result.append(out.view(parts, 2).tolist())
print(json.dumps(result))
"""


def test_shares_tile_the_region_in_16_byte_aligned_pieces() -> None:
    """Every byte asked for once, by at most one program, each piece 16-aligned: the shapes
    the engine passes (the grid of a GEMV against a weight of some MB) and edge cases."""
    rng = random.Random(20)
    cases = [(16, 1), (16, 7), (160, 10), (4096 * 2 * 4096, 1280), (17 * 2**20 + 48, 1000)]
    cases += [(16 * rng.randint(1, 10**6), rng.randint(1, 300)) for _ in range(12)]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SHARES, json.dumps(cases)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for (nbytes, parts), shares in zip(cases, json.loads(done.stdout), strict=True):
        pieces = [(start, size) for start, size in shares if size > 0]
        assert len(shares) == parts
        assert all(start % 16 == 0 and size % 16 == 0 for start, size in pieces)
        ends = [0] + [start + size for start, size in pieces]
        assert [start for start, _ in pieces] == ends[:-1]  # contiguous, no overlap
        assert ends[-1] == nbytes


def test_unknown_parts_are_refused_on_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMETER_L2_PREFETCH", "o,qkv")
    with pytest.raises(UserError, match=r"INFERMETER_L2_PREFETCH.*not qkv"):
        l2_prefetch(torch.device("cpu"), "sdpa")


def test_off_by_default_and_off_the_gpu_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERMETER_L2_PREFETCH", raising=False)
    assert l2_prefetch(torch.device("cpu"), "sdpa") == ([], None)
    monkeypatch.setenv("INFERMETER_L2_PREFETCH", " o , next,")
    parts, why = l2_prefetch(torch.device("cpu"), "sdpa")
    assert parts == [] and why is not None and "CUDA" in why


@pytest.mark.parametrize("name", ["tiny-qwen3-moe", "tiny-deepseek-v2"])
def test_plan_points_each_gemv_at_the_weight_read_after_it(name: str) -> None:
    """ "o": the first projection asks for the layer's output projection; "next": a MoE
    router asks for the next layer's first projection (none after the last layer); "down":
    the gate/up GEMV asks for the down projections. Plain tensors on the weights' storage,
    not parameters registered twice; an empty plan clears every one."""
    spec = resolve_spec(name)
    model = Decoder(spec, partition(spec), Comm(), torch.device("cpu"), torch.float32)
    params = len(list(model.parameters()))
    model.plan_prefetch(frozenset({"o", "next", "down"}))
    assert len(list(model.parameters())) == params
    blocks = list(model.layers)

    def first(blk: torch.nn.Module) -> torch.Tensor:
        return blk.mla.w_a if blk.mla is not None else blk.wqkv

    for i, blk in enumerate(blocks):
        asked = blk.mla.ahead if blk.mla is not None else blk.ahead_o
        assert asked is not None and not isinstance(asked, torch.nn.Parameter)
        assert asked.data_ptr() == blk.wo.data_ptr() and asked.shape == blk.wo.shape
        if blk.moe is None:
            continue
        assert blk.moe.ahead_down
        after = blk.moe.ahead_next
        if i + 1 < len(blocks):
            assert after is not None and after.data_ptr() == first(blocks[i + 1]).data_ptr()
        else:
            assert after is None
    assert any(blk.moe is not None for blk in blocks)
    model.plan_prefetch(frozenset())
    for blk in blocks:
        assert (blk.mla.ahead if blk.mla is not None else blk.ahead_o) is None
        if blk.moe is not None:
            assert blk.moe.ahead_next is None and not blk.moe.ahead_down
