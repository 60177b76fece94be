"""benchmarks/prefill_alignment.py: its alignment classes and their residuals read a step at
aligned p and not the curve, its "unpadded keys" arm removes the engine's key padding and
nothing else (same outputs), and a --quick run records every size of both arms."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench_script import assert_refused
from paths import REPO

torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "prefill_alignment.py"
sys.path.insert(0, str(SCRIPT.parent))
bench = pytest.importorskip("prefill_alignment")


def test_alignment_is_the_largest_power_of_two_up_to_16() -> None:
    got = {p: bench.alignment(p) for p in (1, 3, 2, 6, 4, 12, 8, 24, 16, 48, 32, 1840, 496)}
    assert got == {
        1: 1, 3: 1, 2: 2, 6: 2, 4: 4, 12: 4, 8: 8, 24: 8,
        16: 16, 48: 16, 32: 16, 1840: 16, 496: 16,
    }  # fmt: skip


@given(
    a=st.floats(1e-10, 1e-7), b=st.floats(0.0, 1e-4), c=st.floats(1e-3, 1e-1),
    dips=st.tuples(*[st.floats(-0.05, 0.05)] * 4),
)  # fmt: skip
def test_residuals_read_each_classs_step_not_the_quadratic(
    a: float, b: float, c: float, dips: tuple[float, float, float, float]
) -> None:
    """Prefill time grows with p² (attention): each class's step shows, the curve does not."""
    sizes = bench.parse_sizes(bench.GPU_SIZES)
    step = dict(zip((2, 4, 8, 16), dips, strict=True))
    times = [(a * p * p + b * p + c) * (1 + step.get(bench.alignment(p), 0.0)) for p in sizes]
    got = bench.class_residuals_pct(sizes, times)
    assert got["1"] == pytest.approx(0.0, abs=1e-6)
    for cls, dip in step.items():
        assert got[str(cls)] == pytest.approx(dip * 100, abs=1e-4)


def test_a_missing_time_is_left_out_and_a_class_without_sizes_is_none() -> None:
    sizes = [9, 10, 11, 12, 13]
    got = bench.class_residuals_pct(sizes, [1.0, 0.5, 1.0, None, 1.0])
    assert got["1"] == pytest.approx(0.0) and got["2"] == pytest.approx(-50.0)
    assert got["4"] is None and got["8"] is None and got["16"] is None
    # one odd size in a range: no curve, no residual
    assert set(bench.class_residuals_pct([15, 16], [1.0, 1.0]).values()) == {None}


def test_sizes_parse_ranges_and_refuse_anything_else_in_one_line() -> None:
    assert bench.parse_sizes("7,3-5, 4") == [3, 4, 5, 7]
    for bad in ("5-3", "0-4", "a", "3-", "1-2-3"):
        with pytest.raises(ValueError, match="--sizes"):
            bench.parse_sizes(bad)


def test_the_unpadded_arm_skips_the_padding_and_changes_no_output() -> None:
    """At t = 21 keys the engine pads to 32; the arm attends over the 21 as they are, with
    the same result, and the padding is back after it."""
    from infermeter.engine import attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 21, 8, generator=gen) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # 2 KV heads for 4 query heads
    sinks = torch.randn(4, generator=gen)
    mask = attention.window_mask(torch.arange(21), torch.arange(21), 5)
    padded = attention.attend(q, k, v, mask, None, 3.0, sinks)
    assert attention._aligned_keys(k, v, mask)[0].shape[2] == 32
    with bench.arm("unpadded keys"):
        kept = attention._aligned_keys(k, v, mask)
        assert kept[0] is k and kept[1] is v and kept[2] is mask
        unpadded = attention.attend(q, k, v, mask, None, 3.0, sinks)
    with bench.arm("padded keys"):
        assert attention._aligned_keys(k, v, mask)[0].shape[2] == 32
    assert attention._aligned_keys(k, v, mask)[0].shape[2] == 32
    torch.testing.assert_close(unpadded, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_quick_records_both_arms_at_every_size(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--trials", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "prefill_alignment_quick.json").read_text())
    assert {"device", "date", "commit"} <= record.keys()
    rows = {r["model"]: r for r in record["models"]}
    assert set(rows) == {"tiny-gemma2", "tiny-gpt-oss", "tiny-llama"}
    assert rows["tiny-gemma2"]["explicit_attention"] and rows["tiny-gpt-oss"]["explicit_attention"]
    assert not rows["tiny-llama"]["explicit_attention"]
    for r in rows.values():
        assert r["sizes"] == list(range(9, 25)) and not r["failed"]
        for key in ("padded_keys", "unpadded_keys"):
            times = r[f"{key}_prefill_s"]
            assert len(times) == 16 and all(t > 0 for t in times)
            assert math.isfinite(r[f"{key}_residual_vs_odd_pct"]["16"])  # p = 16 against 9..15
    table = (tmp_path / "prefill_alignment_quick.md").read_text()
    assert "tiny-gemma2@1L" not in table  # tiny specs have fewer layers than --layers: whole
    assert "tiny-gpt-oss: unpadded over padded, at odd p / at multiples of 16" in table


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quick", "--sizes", "20-10"], "--sizes: '20-10' must be sizes of at least 1"),
        (["--quick", "--sizes", "100000"], "--sizes: 100000 is past tiny-gemma2's context"),
        (["--quick", "--models", "no-such-model"], "no-such-model"),
        ([], "no CUDA GPU here: run with --quick"),
    ],
)
def test_user_mistakes_are_one_line_before_any_work(
    tmp_path: Path, args: list[str], says: str
) -> None:
    assert_refused("prefill_alignment.py", args, says, tmp_path)
