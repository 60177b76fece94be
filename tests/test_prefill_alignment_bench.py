"""benchmarks/prefill_alignment.py: its alignment classes and their residuals read a step at
aligned p and not the curve of each range; its arms change how the engine's attention treats
keys (as attend and blocked_attend call it) and not what it computes; its ratios compare the
arms they name; prefill_parity.prefill_times takes the least time of the timed rounds, arms
alternating; and a --quick run records every size of every arm."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench_script import assert_refused
from infermeter.backends.base import Measurement, Point
from paths import REPO

torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "prefill_alignment.py"
sys.path.insert(0, str(SCRIPT.parent))
bench = pytest.importorskip("prefill_alignment")
parity = pytest.importorskip("prefill_parity")


def test_alignment_is_the_largest_power_of_two_up_to_16() -> None:
    got = {p: bench.alignment(p) for p in (1, 3, 2, 6, 4, 12, 8, 24, 16, 48, 32, 1840, 496)}
    assert got == {
        1: 1, 3: 1, 2: 2, 6: 2, 4: 4, 12: 4, 8: 8, 24: 8,
        16: 16, 48: 16, 32: 16, 1840: 16, 496: 16,
    }  # fmt: skip


curve = st.tuples(st.floats(1e-10, 1e-7), st.floats(0.0, 1e-4), st.floats(1e-3, 1e-1))


@given(
    low=curve, high=curve, dips=st.tuples(*[st.floats(-0.05, 0.05)] * 4),
)  # fmt: skip
def test_residuals_read_each_classs_step_not_the_quadratic_of_its_range(
    low: tuple[float, float, float],
    high: tuple[float, float, float],
    dips: tuple[float, float, float, float],
) -> None:
    """Prefill time grows with p² (attention), on a curve of its own in each range (a GPU's
    kernels change between 512 and 1,800): each class's step shows, the curves do not."""
    sizes = bench.parse_sizes(bench.GPU_SIZES)
    step = dict(zip((2, 4, 8, 16), dips, strict=True))

    def time(p: int) -> float:
        a, b, c = low if p < 1000 else high
        return (a * p * p + b * p + c) * (1 + step.get(bench.alignment(p), 0.0))

    got = bench.class_residuals_pct(sizes, [time(p) for p in sizes])
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
    assert bench.parse_sizes("3-5", most=5) == [3, 4, 5]
    with pytest.raises(ValueError, match="--sizes: 6 is past 5"):
        bench.parse_sizes("1-5,3-6", most=5)
    with pytest.raises(ValueError, match="past 511"):  # refused before 10^12 sizes are made
        bench.parse_sizes("1-1000000000000", most=511)


def _pads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shapes attention's F.pad is asked to pad from now on."""
    from infermeter.engine import attention

    calls: list[tuple[int, ...]] = []
    pad = attention.F.pad

    def spy(x: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(x.shape))
        return pad(x, *args, **kwargs)

    monkeypatch.setattr(attention.F, "pad", spy)
    return calls


@pytest.mark.parametrize("t", [21, 24, 32])
def test_each_arm_changes_the_keys_attention_gets_and_not_its_output(
    monkeypatch: pytest.MonkeyPatch, t: int
) -> None:
    """As the engine's prefill calls it (blocked_attend -> attend), with sinks and a cap: at
    t = 21 or 24 keys the engine pads to 32 and the unpadded arm does not; at t = 32 neither
    pads and the copied arm copies; every arm gives the engine's output."""
    from infermeter.engine import attention

    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(1, 4, t, 8, generator=gen) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # 2 KV heads for 4 query heads
    sinks = torch.randn(4, generator=gen)
    pads = _pads(monkeypatch)
    clones: list[Any] = []
    clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda x, **kw: clones.append(x) or clone(x, **kw))

    def run(which: str | None) -> Any:
        pads.clear()
        clones.clear()
        bench.SEEN.clear()
        with bench.arm(which) if which else contextlib.nullcontext():
            return attention.blocked_attend(q, k, v, None, False, None, 3.0, sinks)

    def padded_keys() -> int:  # F.pad calls on [b, nkv, t, d]: keys and values
        return len([s for s in pads if len(s) == 4 and s[2] == t])

    engine = run(None)
    assert padded_keys() == (2 if t % 16 else 0)
    for which in bench.ARMS:
        torch.testing.assert_close(run(which), engine, rtol=1e-5, atol=1e-6)
        assert bench.SEEN.get(which, 0) == (1 if t % 16 else 0)  # the call went through the arm
        unpadded = which == "unpadded keys"
        assert padded_keys() == (2 if t % 16 and not unpadded else 0)
        copied = which == "copied keys" and not t % 16
        assert len(clones) == (3 if copied else 0)  # keys, values, mask
    assert attention._aligned_keys(k, v, None)[0].shape[2] == -(-t // 16) * 16  # restored


def test_the_ratios_compare_the_arms_they_name() -> None:
    """Known times: unpadded 10 % slower at odd p, copied 2 % slower at multiples of 16."""
    sizes = list(range(9, 41))
    padded = {p: 1.0 + p / 100 for p in sizes}
    times = {
        "padded keys": padded,
        "unpadded keys": {p: t * (1.10 if p % 2 else 1.0) for p, t in padded.items()},
        "copied keys": {p: t * (1.02 if p % 16 == 0 else 1.0) for p, t in padded.items()},
    }
    row = bench.summary(sizes, times, {}, padded_calls=7)
    assert row["pads_keys"] and row["padded_calls"] == 7
    assert row["padded_keys_prefill_s"] == [padded[p] for p in sizes]
    assert row["unpadded_keys_prefill_s"] == [times["unpadded keys"][p] for p in sizes]
    assert row["unpadded_over_padded_odd_pct"] == pytest.approx(10.0)
    assert row["unpadded_over_padded_16_pct"] == pytest.approx(0.0)
    assert row["copied_over_padded_16_pct"] == pytest.approx(2.0)
    assert row["copied_keys_residual_vs_odd_pct"]["16"] == pytest.approx(2.0, abs=0.01)
    assert row["padded_keys_residual_vs_odd_pct"]["16"] == pytest.approx(0.0, abs=1e-6)
    assert not bench.summary(sizes, times, {}, padded_calls=0)["pads_keys"]
    assert bench._ratio_pct([2.0, None, 3.0], [1.0, 1.0, 2.0], [True, True, False]) == 100.0
    assert bench._ratio_pct([2.0], [1.0], [False]) is None


def test_the_table_shows_each_figure_of_the_row() -> None:
    sizes = list(range(9, 41))
    base = {p: 1.0 for p in sizes}
    times = {
        "padded keys": base,
        "unpadded keys": {p: 1.3 if p % 2 else 1.0 for p in sizes},
        "copied keys": {p: 1.07 if p % 16 == 0 else 1.0 for p in sizes},
    }
    row = {"spec": "m", "layers": 2} | bench.summary(sizes, times, {"padded keys, p 9": "oom"}, 4)
    cells = {what: value for what, value, _ in bench.table([row])}
    assert cells["m: copied over padded keys, at multiples of 16 (the copies' cost)"] == "+7.00 %"
    assert cells["m: unpadded over padded keys, at odd p (the padding's gain)"] == "+30.00 %"
    assert cells["m: unpadded over padded keys, at multiples of 16 (same work: noise)"] == "+0.00 %"
    assert cells["m: prefill; sizes"] == "keys padded at unaligned p (4 calls in the run); 9-40"
    assert cells["m: failed"] == "padded keys, p 9: oom"
    what = "PE against the odd-p curve, at p whose largest power-of-2 divisor (≤ 16) is"
    assert cells[f"m: copied keys, {what}"] == "2: +0.00 %, 4: +0.00 %, 8: +0.00 %, 16: +7.00 %"


def test_sizes_up_to_8_apart_share_a_curve_and_further_apart_do_not() -> None:
    """Odd sizes 3 apart (no sizes between) are one range; 9 apart, two."""
    near = [11, 14, 16, 17, 20, 23]  # one curve through 11, 17, 23: 16 reads against it
    line = {p: 1.0 + p / 10 for p in near}
    got = bench.class_residuals_pct(near, [line[p] * (0.9 if p == 16 else 1.0) for p in near])
    assert got["16"] == pytest.approx(-10.0)
    far = [1, 3, 12, 14, 16]  # 3 to 12: two ranges; the second has no odd size for a curve
    assert bench.class_residuals_pct(far, [1.0] * 5)["16"] is None


def test_an_arm_is_undone_when_the_work_inside_it_fails() -> None:
    from infermeter.engine import attention

    engine = attention._aligned_keys
    for which in bench.ARMS:
        with pytest.raises(RuntimeError), bench.arm(which):
            assert attention._aligned_keys is not engine
            raise RuntimeError("out of memory")
        assert attention._aligned_keys is engine


class _Backend:
    """Times by arm, p and round (round 0, the warm-up, fastest of all); p = 13 fails."""

    def __init__(self) -> None:
        self.arm = ""
        self.order: list[tuple[str, int, int]] = []

    def measure(self, point: Point) -> Measurement:
        self.order.append((self.arm, point.prompt_tokens, point.trial))
        if point.prompt_tokens == 13:
            return Measurement(runtime_s=0.0, status="error", detail="out of memory")
        scale = {"a": 1.0, "b": 2.0}[self.arm]
        return Measurement(
            runtime_s=9.0, ttft_s=scale * (0.001 if point.trial == 0 else point.trial)
        )


def test_prefill_times_alternate_the_arms_and_keep_the_least_timed_round() -> None:
    backend = _Backend()

    @contextlib.contextmanager
    def enter(which: str) -> Iterator[None]:
        backend.arm = which
        yield

    times, failed = parity.prefill_times(backend, [12, 13], ("a", "b"), enter, trials=3)
    assert times == {"a": {12: 1.0, 13: None}, "b": {12: 2.0, 13: None}}  # ttft, not runtime
    assert failed == {"a, p 13": "out of memory", "b, p 13": "out of memory"}
    firsts = [arm for arm, p, _ in backend.order if p == 12]
    assert firsts == ["b", "a", "a", "b", "b", "a", "a", "b"]  # rounds 0-3, reversed in turn


@pytest.mark.slow
def test_quick_records_every_arm_at_every_size(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--trials", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "prefill_alignment_quick.json").read_text())
    assert {"device", "date", "commit"} <= record.keys()
    rows = {r["model"]: r for r in record["models"]}
    assert set(rows) == {"tiny-gemma2", "tiny-gpt-oss", "tiny-llama"}
    # tiny-gemma2: 15 unaligned sizes of 9-24, 2 rounds, at each layer's attention
    layers = rows["tiny-gemma2"]["layers"]
    assert rows["tiny-gemma2"]["padded_calls"] == 15 * 2 * layers
    assert rows["tiny-gpt-oss"]["pads_keys"] and not rows["tiny-llama"]["pads_keys"]
    for r in rows.values():
        assert r["sizes"] == list(range(9, 25)) and not r["failed"]
        for key in ("padded_keys", "unpadded_keys", "copied_keys"):
            times = r[f"{key}_prefill_s"]
            assert len(times) == 16 and all(t > 0 for t in times)
            assert math.isfinite(r[f"{key}_residual_vs_odd_pct"]["16"])  # p = 16 against 9..15
        for key in bench.RATIOS:
            assert math.isfinite(r[f"{key}_pct"])
    table = (tmp_path / "prefill_alignment_quick.md").read_text()
    assert "tiny-llama: prefill; sizes | keys never padded (a control); 9-24" in table
    assert "tiny-gpt-oss: copied over padded keys, at multiples of 16 (the copies' cost)" in table


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quick", "--sizes", "20-10"], "--sizes: '20-10' must be sizes of at least 1"),
        (["--quick", "--sizes", "9-512"], "512 is past 511, the largest prompt that leaves room"),
        (["--quick", "--models", "no-such-model"], "no-such-model"),
        ([], "no CUDA GPU here: run with --quick"),
    ],
)
def test_user_mistakes_are_one_line_before_any_work(
    tmp_path: Path, args: list[str], says: str
) -> None:
    if not args and torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run")
    assert_refused("prefill_alignment.py", args, says, tmp_path)
