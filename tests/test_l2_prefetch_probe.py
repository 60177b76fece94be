"""benchmarks/l2_prefetch_probe.py's share arithmetic, in Triton's interpreter: the bulk L2
prefetch itself (a PTX instruction) runs only on an sm_90+ GPU, in that benchmark."""

from __future__ import annotations

import json
import random

import pytest

from bench_script import assert_refused, interpreted
from paths import REPO

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

SHARES = """
import json, sys
sys.path.insert(0, sys.argv[2])
import torch, triton, triton.language as tl
from l2_prefetch_probe import share_range

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
    """Every byte asked for once, by at most one program, each piece 16-aligned: the probe's
    shapes (132 programs, 16 MB), one program, and random sizes and grids."""
    rng = random.Random(20)
    cases = [(16, 1), (16, 7), (160, 10), (16 * 2**20, 132), (17 * 2**20 + 48, 1000)]
    cases += [(16 * rng.randint(1, 10**6), rng.randint(1, 300)) for _ in range(12)]
    stdout = interpreted(SHARES, json.dumps(cases), str(REPO / "benchmarks"), timeout_s=600)
    for (nbytes, parts), shares in zip(cases, json.loads(stdout), strict=True):
        pieces = [(start, size) for start, size in shares if size > 0]
        assert len(shares) == parts
        assert all(start % 16 == 0 and size % 16 == 0 for start, size in pieces)
        ends = [0] + [start + size for start, size in pieces]
        assert [start for start, _ in pieces] == ends[:-1]  # contiguous, no overlap
        assert ends[-1] == nbytes


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mb", "0.001"], "--mb must hold at least one row"),
        (["--repeats", "0"], "--repeats must be at least 1, not 0"),
        (["--programs", "0"], "--programs must be at least 1, not 0"),
        (["--wait-us", "-1"], "--wait-us must be a number of at least 0"),
        (["--wait-us", "nan"], "--wait-us must be a number of at least 0"),
        (["--mb", "inf"], "--mb must hold at least one row"),
        (["--mb", "5000", "--programs", "2"], "a program's share must be under 2 GiB"),
        ([], "needs an sm_90+ GPU"),  # this machine: no GPU
    ],
)
def test_bad_input_and_no_gpu_are_one_line(tmp_path, args: list[str], says: str) -> None:
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("a GPU is here: the probe would run")
    assert_refused("l2_prefetch_probe.py", args, says, tmp_path)
