"""benchmarks/explicit_attention.py's --quick: its flex arm (soft-capping as a score
modification, windows as a block mask, sinks from the log-sum-exp) computes what the engine's
blocked_attend computes, so a GPU run's times compare like with like."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench_script import assert_refused
from paths import REPO

torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "explicit_attention.py"
sys.path.insert(0, str(SCRIPT.parent))
bench = pytest.importorskip("explicit_attention")


@given(
    a=st.floats(1e-9, 1e-6), b=st.floats(0.0, 1e-3), c=st.floats(0.0, 1e-2),
    dip=st.floats(-0.05, 0.05),
)  # fmt: skip
def test_the_aligned_residual_reads_a_step_at_multiples_of_16_not_the_curve(
    a: float, b: float, c: float, dip: float
) -> None:
    """Attention's time grows with s² (a review found one line across 493..4097 read -73 % for
    t = s²): only a change at the multiples of 16 themselves may show."""
    sizes = list(bench.GPU_SIZES)
    times = [(a * s * s + b * s + c) * (1 + dip * (s % 16 == 0)) for s in sizes]
    assert bench.aligned_residual_pct(sizes, times) == pytest.approx(dip * 100, abs=0.01)


def test_no_cluster_with_a_multiple_of_16_and_two_others_gives_none() -> None:
    assert bench.aligned_residual_pct([100, 200, 496, 4097], [1.0, 2.0, 3.0, 4.0]) is None
    assert bench.aligned_residual_pct([495, 496, 497], [1.0, 1.0, 1.0]) == pytest.approx(0.0)


@pytest.mark.slow
def test_quick_flex_matches_the_engine_and_records_every_size(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--trials", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "explicit_attention_quick.json").read_text())
    assert {"device", "date", "commit"} <= record.keys()
    shapes = {r["shape"]["name"]: r for r in record["rows"]}
    assert set(shapes) == {"tiny capped global", "tiny sinks local"}
    for row in shapes.values():
        assert row["max_rel_diff"] < 1e-5  # float32 on both arms
        n = len(row["sizes"])
        assert len(row["engine_s"]) == len(row["flex_s"]) == len(row["flex_over_engine_pct"]) == n
        assert row["engine_aligned_residual_pct"] is not None  # 32 against 31 and 33
    table = (tmp_path / "explicit_attention_quick.md").read_text()
    assert "tiny sinks local: flex vs engine, largest difference / largest output" in table


def test_out_a_file_is_one_line_before_any_work(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    (tmp_path / "f").write_text("")
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "f")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "is a file: it must be a folder" in done.stderr and "Traceback" not in done.stderr


def test_a_run_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run")
    assert_refused("explicit_attention.py", [], "no CUDA GPU here: run with --quick", tmp_path)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_the_flex_arm_asks_for_the_kernel_the_engine_prefills_with() -> None:
    """Under 128 queries compiled flex may lower to its decoding kernel unless told otherwise
    (engine/flex.py PREFILL_KERNEL): the arm must time the kernel the engine runs. Here flex
    runs unfused (the kernel options change nothing on a CPU), so the call is read as it
    passes to the real flex_attention, and its result checked against the engine's."""
    from torch.nn.attention.flex_attention import flex_attention

    from infermeter.engine.attention import blocked_attend
    from infermeter.engine.flex import PREFILL_KERNEL

    options: list[Any] = []

    def flex(*args: Any, **kwargs: Any) -> Any:
        options.append(kwargs.get("kernel_options"))
        return flex_attention(*args, **kwargs)

    shape, s = bench.QUICK_SHAPES[1], 33  # sinks and a window, one block under 128
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, n, s, shape.d, generator=gen) for n in (shape.nq, shape.nkv, shape.nkv)
    )
    sinks = torch.randn(shape.nq, generator=gen)
    got = bench.flex_arm(shape, bench.flex_mods(shape), s, "cpu", flex)(q, k, v, sinks)
    assert options == [PREFILL_KERNEL]
    want = blocked_attend(q, k, v, shape.window, False, shape.scale, shape.softcap, sinks)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
