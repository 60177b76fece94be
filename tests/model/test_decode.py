"""Decode priced step by step at the context each step attends over (infermeter.model.decode)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.model.decode import blend_in_p, decode_time
from infermeter.model.fit import fit_cost_model, validation_errors

OUTPUTS = (1, 2, 4, 8, 32, 128, 512)
CURVES = (1, 737, 1505)
KNOTS = (97, 225, 353, 481, 609, 865, 993, 1121, 1249, 1377, 1633, 1761, 1889, 2047)


def step_s(context: int) -> float:
    """As measured on an H200 (LLaMA-7B): steps attending over fewer than 128 tokens cost
    3.89 ms, later ones 3.99 ms, growing with the context."""
    return (3.89e-3 if context < 128 else 3.99e-3) + 7e-8 * context


def stack(p: int, o: int) -> float:
    """PE, a first decode step dearer after a long prompt, then each step at its context."""
    pe = 0.005 + 2.2e-5 * p
    first = step_s(p + 1) + 3e-7 * p if o >= 2 else 0.0
    return pe + first + sum(step_s(p + k) for k in range(2, o))


def points(shapes: list[tuple[int, int]]) -> pd.DataFrame:
    rows = [(p, o, 1, 0, stack(p, o)) for p, o in shapes]
    return pd.DataFrame(
        rows, columns=["prompt_tokens", "output_tokens", "batch_size", "trial", "runtime_s"]
    )


GRID = [(p, o) for p in CURVES for o in OUTPUTS] + [(p, 1) for p in KNOTS]


def test_a_query_pays_the_steps_of_its_own_contexts() -> None:
    """p = 124, o = 404 never attends over fewer than 126 tokens: blending the p = 1 curve in
    p gave it that curve's cheap early steps (0.7% low on an H200); per context it is exact
    up to the step's growth within a segment."""
    model = fit_cost_model(points(GRID), decode="curve")
    queries = points([(124, 404), (300, 200), (1000, 300), (1800, 100), (60, 50)])
    errors = validation_errors(model, queries)
    assert abs(errors["bias_pct"]) < 0.1 and errors["max_error_pct"] < 0.25
    p = queries.prompt_tokens.to_numpy(float)
    o = queries.output_tokens.to_numpy(float)
    blended = model.prompt_encoding_at(p) + blend_in_p(model.decode_curves, p, o)
    assert blended[0] / queries.runtime_s[0] - 1 < -0.004  # the old form, on the same curves


def test_every_profiled_point_of_a_curve_is_priced_as_measured() -> None:
    model = fit_cost_model(points(GRID), decode="curve")
    for curve in model.decode_curves:
        o = np.array(curve["output_tokens"])
        p = np.full(o.shape, float(curve["prompt_tokens"]))
        assert np.allclose(decode_time(model.decode_curves, p, o), curve["decode"], rtol=1e-12)


def curves_from(steps: list[float], first: list[float], sizes: list[int]) -> list[dict]:
    out = []
    lengths = [2.0, 4.0, 8.0, 32.0]
    for p_c, head in zip(sizes, first, strict=True):
        decode, total, k = [], head, 2
        for o in lengths:
            while k < o:
                total += steps[min(int((p_c + k) // 64), len(steps) - 1)]
                k += 1
            decode.append(total)
        out.append(
            {"prompt_tokens": p_c, "output_tokens": lengths, "decode": decode,
             "tail_slope": (decode[-1] - decode[-2]) / (lengths[-1] - lengths[-2])}
        )  # fmt: skip
    return out


@settings(max_examples=60, deadline=None)
@given(
    # Steps within 10% of each other, a first step at least as dear as any: the heads stand.
    steps=st.lists(st.floats(4.5e-3, 5e-3), min_size=4, max_size=12),
    first=st.lists(st.floats(5e-3, 2e-2), min_size=3, max_size=3),
    gaps=st.lists(st.integers(1, 300), min_size=2, max_size=2),
    queries=st.lists(st.tuples(st.integers(1, 1200), st.integers(1, 900)), min_size=1),
)
def test_decode_is_exact_at_the_curves_and_grows_with_the_output(
    steps: list[float], first: list[float], gaps: list[int], queries: list[tuple[int, int]]
) -> None:
    sizes = [1, 1 + gaps[0], 1 + gaps[0] + gaps[1]]
    curves = curves_from(steps, first, sizes)
    for curve in curves:
        o = np.array(curve["output_tokens"])
        got = decode_time(curves, np.full(o.shape, float(curve["prompt_tokens"])), o)
        assert np.allclose(got, curve["decode"], rtol=1e-9)
    p = np.array([q[0] for q in queries], dtype=float)
    o = np.array([q[1] for q in queries], dtype=float)
    here, longer = decode_time(curves, p, o), decode_time(curves, p, o + 1)
    assert (here >= 0).all() and (longer >= here - 1e-12).all()
    assert (decode_time(curves, p, np.ones_like(p)) == 0).all()


def test_curves_without_a_common_first_length_are_blended_in_p() -> None:
    curves = [
        {"prompt_tokens": 1, "output_tokens": [2.0, 8.0], "decode": [0.004, 0.028],
         "tail_slope": 0.004},
        {"prompt_tokens": 500, "output_tokens": [4.0, 8.0], "decode": [0.013, 0.030],
         "tail_slope": 0.00425},
    ]  # fmt: skip
    p, o = np.array([1.0, 250.0, 900.0]), np.array([6.0, 30.0, 3.0])
    assert np.array_equal(decode_time(curves, p, o), blend_in_p(curves, p, o))


def test_a_head_cheaper_than_the_later_steps_is_priced_at_their_cost() -> None:
    """A first decode step measured at 2.6 ms where later steps cost 4.2 ms (an H200 at its
    power limit ran the o = 1 point at a lower clock): below 90% of the later steps' cost, the
    head is priced at that cost; above it, as measured."""
    curves = curves_from([4.2e-3] * 40, [2.6e-3, 4.0e-3, 5.0e-3], [1, 700, 1500])
    p = np.array([1.0, 700.0, 1500.0, 1000.0])
    o = np.array([2.0, 2.0, 2.0, 40.0])
    got = decode_time(curves, p, o)
    assert got[0] == pytest.approx(4.2e-3)  # 2.6 < 0.9 × 4.2: the later steps' cost
    assert got[1] == pytest.approx(4.0e-3) and got[2] == pytest.approx(5.0e-3)  # as measured
    assert got[3] > 39 * 4.2e-3 * 0.999


def dip(p: float) -> float:
    """Share of a decode step the first one saves, most after a few hundred tokens: a head
    that a blend of the curves at p = 1 and 737 cannot follow (the shape, not a measurement:
    on an H200 the first step moved by 0.3-0.75 ms between profiles: stores/heldout/)."""
    return 0.1 * max(0.0, 1 - abs(p - 353) / 353)


def test_a_head_curve_prices_the_first_steps_between_curves_and_leaves_later_steps() -> None:
    """A head-only curve (o = 1, 2, 4, 8 at p = 353) takes part in the head's blend in p and
    not in t(x): a 336-token prompt's first step is priced from it, its later steps as before."""

    def dipped(p: int, o: int) -> float:
        return stack(p, o) - (dip(p) * step_s(p + 1) if o >= 2 else 0.0)

    def frame(shapes: list[tuple[int, int]]) -> pd.DataFrame:
        return pd.DataFrame(
            [(p, o, 1, 0, dipped(p, o)) for p, o in shapes],
            columns=["prompt_tokens", "output_tokens", "batch_size", "trial", "runtime_s"],
        )

    head = [(353, o) for o in (1, 2, 4, 8)]
    without = fit_cost_model(frame(GRID), decode="curve")
    with_head = fit_cost_model(frame([*GRID, *head]), decode="curve")
    assert [c["prompt_tokens"] for c in with_head.decode_curves] == [1, 353, 737, 1505]
    p, o = np.array([336.0, 300.0, 420.0]), np.array([2.0, 3.0, 5.0])
    truth = np.array([dipped(int(a), int(b)) for a, b in zip(p, o, strict=True)])
    first_steps = truth - with_head.prompt_encoding_at(p)
    headed = np.abs(with_head.decode_at(p, o) / first_steps - 1)
    blended = without.decode_at(p, o) / first_steps - 1  # from the curves at 1 and 737
    assert np.max(headed) < 0.012 and blended[0] > 0.08 and np.all(blended > headed)
    # Later steps: t(x) is the full curves' alone, so past o₁ = 8 both price the same steps.
    long = np.array([400.0, 400.0, 400.0])
    later = [m.decode_at(p, long) - m.decode_at(p, np.full(3, 8.0)) for m in (without, with_head)]
    assert np.allclose(later[0], later[1], rtol=1e-12)


def test_a_head_curve_short_of_the_head_length_is_left_out() -> None:
    """A curve that stops before o₁ (here o = 2, 4 where o₁ = 8) cannot give the head's D at o₁:
    it is not extrapolated into the blend; the full curves price as without it."""
    full = fit_cost_model(points(GRID), decode="curve").decode_curves
    assert full is not None
    short = {"prompt_tokens": 353, "output_tokens": [2.0, 4.0], "decode": [0.002, 0.006],
             "tail_slope": 0.002}  # fmt: skip
    p, o = np.array([336.0, 353.0, 500.0]), np.array([2.0, 8.0, 300.0])
    assert np.array_equal(decode_time([full[0], short, *full[1:]], p, o), decode_time(full, p, o))


def test_a_head_curve_does_not_choose_whose_steps_a_query_pays() -> None:
    """Where two curves' steps cover the same contexts, a query pays those of the curve nearest
    its prompt size among curves with steps: a head curve nearer still does not change that."""
    lengths = [2.0, 4.0, 8.0, 32.0, 128.0, 512.0]

    def curve(p_c: int, step: float) -> dict:
        decode = [step * (o - 1) for o in lengths]
        return {"prompt_tokens": p_c, "output_tokens": lengths, "decode": decode,
                "tail_slope": step}  # fmt: skip

    head = {"prompt_tokens": 230, "output_tokens": lengths[:3],
            "decode": [0.0041 * (o - 1) for o in lengths[:3]], "tail_slope": 0.0041}  # fmt: skip
    full = [curve(1, 0.004), curve(400, 0.005)]  # both cover contexts 408..513
    p, o = np.array([200.0]), np.array([400.0])  # nearer p = 1 than 400, nearest the head
    later = [decode_time(c, p, o) - decode_time(c, p, np.array([8.0]))
             for c in (full, [full[0], head, full[1]])]  # fmt: skip
    assert later[1] == pytest.approx(later[0], rel=1e-12)


def test_a_gap_between_curves_runs_between_their_whole_slopes() -> None:
    """Contexts no curve covers are priced from each curve's slope past o₁ as a whole, not from
    the segments next to the gap: a 32k model's curves at p = 1 and 16,097 leave 15,000
    contexts between them, and one noisy short segment (o = 8 to 32, here 30 % dear) would
    otherwise set the steps of every query there (an H100's metered gpt-oss-20b profile priced
    two such queries 10 % and 14 % high). The curve before the gap ends on a segment cheaper
    than its whole slope, so both ends of the line are tested."""
    lengths = [2.0, 4.0, 8.0, 32.0, 128.0, 512.0]

    def curve(p_c: int, step: float, first_segment: float, last_segment: float) -> dict:
        decode = [step * (o - 1) for o in lengths]
        decode[3] = decode[2] + 24 * first_segment  # o = 8 to 32 (the rest keeps its D)
        decode[5] = decode[4] + 384 * last_segment  # o = 128 to 512
        return {"prompt_tokens": p_c, "output_tokens": lengths, "decode": decode,
                "tail_slope": last_segment}  # fmt: skip

    before = curve(1, 1.66, 1.66, 1.50)
    after = curve(16_097, 1.78, 1.3 * 1.78, 1.78)
    whole = [(c["decode"][5] - c["decode"][2]) / 504 for c in (before, after)]
    assert whole[0] < 1.66 and whole[0] != pytest.approx(1.50, abs=0.02)
    p, o = np.array([12_654.0]), np.array([234.0])
    later = decode_time([before, after], p, o) - decode_time([before, after], p, np.array([8.0]))
    # from the first curve's whole slope at context 513 to the second's at 16,105, linearly
    at = lambda x: whole[0] + (x - 513) / (16_105 - 513) * (whole[1] - whole[0])  # noqa: E731
    expected = sum(at(12_654 + k + 0.5) for k in range(8, 234))
    assert later[0] == pytest.approx(expected, rel=1e-6)
    # each curve's own contexts keep its segments: the dear one and the cheap one included
    own = decode_time([before, after], np.array([16_097.0, 16_097.0, 1.0, 1.0]),
                      np.array([32.0, 8.0, 512.0, 128.0]))  # fmt: skip
    assert own[0] - own[1] == pytest.approx(24 * 1.3 * 1.78, rel=1e-9)
    assert own[2] - own[3] == pytest.approx(384 * 1.50, rel=1e-9)


def test_a_long_segment_inside_the_head_is_not_a_step_cost() -> None:
    """With lengths 2, 20, 24, 64, 128 the head ends at o₁ = 24 (20 to 24 is too short to read
    a step's cost): the 18-step segment from 2 to 20 belongs to the head, so it neither prices
    contexts nor moves the whole slope a gap runs from."""
    lengths = [2.0, 20.0, 24.0, 64.0, 128.0]

    def curve(p_c: int, step: float) -> dict:
        decode = [step * (o - 1) for o in lengths]
        decode[1] = decode[0] + 18 * 3 * step  # a dear head: 2 to 20 at three times the step
        decode[2] = decode[1] + 4 * step
        decode[3], decode[4] = decode[2] + 40 * step, decode[2] + 104 * step
        return {"prompt_tokens": p_c, "output_tokens": lengths, "decode": decode,
                "tail_slope": step}  # fmt: skip

    curves = [curve(1, 1.0), curve(4_000, 2.0)]
    p, o = np.array([2_000.0]), np.array([100.0])
    later = decode_time(curves, p, o) - decode_time(curves, p, np.array([24.0]))
    at = lambda x: 1.0 + (x - 129) / (4_024 - 129) * (2.0 - 1.0)  # noqa: E731
    assert later[0] == pytest.approx(sum(at(2_000 + k + 0.5) for k in range(24, 100)), rel=1e-6)


def test_a_longer_output_never_prices_below_a_shorter_one_inside_the_head() -> None:
    """The head is kept or floored at each length; where a step's context costs less than the
    one before (1.5 then 0.9 a step from context 1,032 here), a head floored at o = 7 and kept
    at o = 8 priced D(7) = 9.0 above D(8) = 8.95. Never below what a shorter output costs."""
    curve = {"prompt_tokens": 1000, "output_tokens": [2.0, 4.0, 8.0, 32.0, 128.0, 512.0],
             "decode": [2.0, 5.15, 8.95, 44.95, 131.35, 476.95], "tail_slope": 0.9}  # fmt: skip
    o = np.arange(1.0, 40.0)
    d = decode_time([curve], np.full(o.shape, 1025.0), o)
    assert d[0] == 0 and np.all(np.diff(d) >= 0)


def test_a_curve_without_a_head_length_adds_no_steps() -> None:
    """A curve whose last segment is too short to end a head (40 to 50) has no head length: it
    takes no part in which curve's steps a query pays, so it adds no steps either, and a query
    at its own prompt size is priced from the full curves around it."""

    def full(p_c: int, step: float) -> dict:
        lengths = [2.0, 4.0, 8.0, 32.0, 128.0, 512.0]
        return {"prompt_tokens": p_c, "output_tokens": lengths,
                "decode": [step * (o - 1) for o in lengths], "tail_slope": step}  # fmt: skip

    odd = {"prompt_tokens": 500, "output_tokens": [2.0, 4.0, 8.0, 40.0, 50.0],
           "decode": [5.0, 15.0, 35.0, 195.0, 245.0], "tail_slope": 5.0}  # fmt: skip
    without = [full(1, 1.0), full(3000, 2.0)]
    p, o = np.full(2, 500.0), np.array([40.0, 50.0])
    later = [decode_time(c, p, o) - decode_time(c, p, np.full(2, 8.0))
             for c in (without, [without[0], odd, without[1]])]  # fmt: skip
    assert np.allclose(later[0], later[1], rtol=1e-12)
