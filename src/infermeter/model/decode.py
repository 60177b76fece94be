"""D(p, o) from decode curves, with each decode step priced at the context it attends over.

A decode step reads the keys and values of its whole context, and the attention kernel works
on spans of it, so what a step costs depends on its context, not on the prompt size as such.
Blending whole curves linearly in p (the form before this module) gave a query the steps of a
curve at another prompt size: on an H200 (LLaMA-7B, docs/benchmarks/heldout_llama-7b.md at
42b47d9) the p = 1 curve's steps below a context of 128 cost 3.89 ms and those above 3.99 ms,
and a query with p = 124 and o = 404, whose steps never see a context below 126, was priced
with 83% of the cheap ones: its long outputs came out 0.7% low on average.

The form here, where o₁ is the profiled output length after which every segment of every
curve holds at least MIN_SEGMENT_STEPS steps (8 on the default grid, o = 1, 2, 4, 8, 32, 128,
512: its head holds the first decode step, which costs more after a long prompt, and segments
too short to tell a step's cost from the noise):

    D(p, o) = head(p, o)                                  for o ≤ o₁
    D(p, o) = head(p, o₁) + Σ_{k = o₁}^{o − 1} t(p + k)     for o > o₁

head is the curves' D(o) blended linearly in p (held at the end curves; a head curve,
profiled up to o₁ only, takes part here and not in t(x)), or what its steps
would cost at their contexts later on where the head is below FIRST_STEP_SHARE of that: the
first step after a prompt is never the cheapest, and on an H200 at its power limit a
prefill-only o = 1 point runs at a lower clock than the same prefill followed by decode steps
(D(1505, 2) came out at 2.6 ms for ~4.2). Step k
of a query attends over p + k tokens; t(x) is the cost of a step at context x: on each curve
c, between two profiled lengths oₐ < o_b, the measured (D(o_b) − D(oₐ)) / (o_b − oₐ) at every
context in [p_c + oₐ, p_c + o_b); flat past the ends, at the nearest segment's cost (on
the default grid only the head's floor reads contexts below the p = 1 curve's, and the last
curve's last segment is its longest); across contexts no curve covers, linear from the whole
slope past o₁ of the curve before, (D(o_last) − D(o₁)) / (o_last − o₁), to that of the curve
after, each placed at the gap's edge (the mean cost of a curve's steps some hundreds of
contexts inside it: little against a gap of thousands). Not from the segments nearest the
gap: the one next to a gap can be the curve's shortest (o = 8 to 32), and a 32k model's gaps
span some 15,000 contexts. On an H100 (gpt-oss-20b, 7732325) a metered o = 8 point about 3-4%
low at p = 16,097 put that segment at 2.31 J a step for 1.79 over the whole curve, and priced
validation queries in the gap before it (p = 10,566 and 12,654, o = 171 and 234) 10% and 14%
high.
Where two curves cover a context, the one whose prompt size is nearer the query's is used, so
that a query at a curve's own prompt size gets exactly that curve's measurement at its
profiled lengths. Curves without such a common o₁ are blended in p as before. All in numpy,
no loop over queries.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np

# A step's cost is read off segments of at least this many steps: on an H200 a 2-step segment
# (o = 2 to 4 after 1,505 tokens, two 40-50 ms measurements apart) gave 4.55 ms per step for
# 4.1, and pricing the contexts next to it on that put 30-token outputs 8% high.
MIN_SEGMENT_STEPS = 16
# A head whose steps cost less than this share of what steps at their contexts cost later on is
# a measurement of the card's state, not of the steps (see the module's docstring): the later
# steps' cost is used instead. Within it, the measured head stands.
FIRST_STEP_SHARE = 0.9


def curve_at(curve: dict[str, Any], o: np.ndarray) -> np.ndarray:
    """D at output lengths `o` along one curve: 0 at o = 1, linear between profiled lengths,
    the tail slope past the last one."""
    xs = np.array([1.0, *curve["output_tokens"]])
    ys = np.array([0.0, *curve["decode"]])
    inside = np.interp(o, xs, ys)
    beyond = ys[-1] + (o - xs[-1]) * curve["tail_slope"]
    return np.where(o > xs[-1], beyond, np.where(o < 1, 0.0, inside))


def blend_in_p(curves: list[dict[str, Any]], p: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Each curve's D at `o`, blended linearly in p between the two curves around it (held at
    the end curves outside them); p and o are flat arrays of one length."""
    values = np.stack([curve_at(c, o) for c in curves])  # [curves, queries]
    sizes = np.array([c["prompt_tokens"] for c in curves], dtype=float)
    position = np.interp(p, sizes, np.arange(len(sizes), dtype=float))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(sizes) - 1)
    weight = position - low
    rows = np.arange(p.size)
    return (1 - weight) * values[low, rows] + weight * values[high, rows]


def decode_time(curves: list[dict[str, Any]], p: np.ndarray, o: np.ndarray) -> np.ndarray:
    """D(p, o) for flat arrays p (prompt tokens) and o (output tokens, the first included),
    in the curves' unit (s or J); see the module's docstring for the form."""
    heads = [head_length(curve["output_tokens"]) for curve in curves]
    o1 = _common_head(heads)
    if o1 is None:
        return blend_in_p(curves, p, o)
    reach = [c for c in curves if max(c["output_tokens"]) >= o1]  # a head curve ends at o₁
    head = blend_in_p(reach, p, np.minimum(o, o1))
    stepped = [i for i, end in enumerate(heads) if end is not None]
    sizes = np.array([curves[i]["prompt_tokens"] for i in stepped], dtype=float)
    nearest = np.array(stepped)[np.abs(p[:, None] - sizes[None, :]).argmin(axis=1)]
    out = head.copy()
    for index in stepped:
        rows = nearest == index
        if not rows.any():
            continue
        steps = _StepCost(curves, preferred=index, o1=o1)
        q, n = p[rows], o[rows]
        rest = np.where(n > o1, steps.total(q + o1, q + np.maximum(n, o1)), 0.0)
        kept = _kept_head(reach, steps, q, n, o1)
        out[rows] = kept + rest
    return out


def _kept_head(
    reach: list[dict[str, Any]], steps: _StepCost, q: np.ndarray, n: np.ndarray, o1: float
) -> np.ndarray:
    """The head's D at min(n, o₁) for prompts q: the measured head, or what its steps cost at
    their contexts later on where it is below FIRST_STEP_SHARE of that, and never less than
    at a shorter length: the choice is made at each length, and a head measured cheap at a
    step whose context costs less than the one before would otherwise price a longer output
    below a shorter one."""
    kept = np.zeros(q.shape)
    for length in range(2, int(o1) + 1):
        at = np.minimum(n, length).astype(float)
        head = blend_in_p(reach, q, at)
        floor = steps.total(q + 1, q + at)
        kept = np.maximum(kept, np.where(head < FIRST_STEP_SHARE * floor, floor, head))
    return kept


class _StepCost:
    """t(x) as pieces over the context x, and its integral C(x) = ∫ t up to x."""

    def __init__(self, curves: list[dict[str, Any]], preferred: int, o1: float) -> None:
        order = sorted(
            range(len(curves)),
            key=lambda i: (
                abs(curves[i]["prompt_tokens"] - curves[preferred]["prompt_tokens"]),
                i,
            ),
        )
        covered: list[_Span] = []
        for i in order:  # a curve with no head length (no long segment at its end) has no steps
            if head_length(curves[i]["output_tokens"]) is not None:
                covered = _add_curve(covered, curves[i], o1)
        covered.sort()
        # Pieces (a, b, t at a, t at b): the covered spans, and linear pieces across gaps from
        # the whole slope of the curve before to that of the curve after (module docstring).
        pieces: list[tuple[float, float, float, float]] = []
        for span, before in zip(covered, [None, *covered[:-1]], strict=True):
            if before is not None and span.start > before.end:
                pieces.append((before.end, span.start, before.anchor, span.anchor))
            pieces.append((span.start, span.end, span.cost, span.cost))
        self.starts = np.array([a for a, _, _, _ in pieces])
        self.ends = np.array([b for _, b, _, _ in pieces])
        self.left = np.array([ta for _, _, ta, _ in pieces])
        self.right = np.array([tb for _, _, _, tb in pieces])
        widths = self.ends - self.starts
        areas = (self.left + self.right) / 2 * widths
        self.before = np.concatenate([[0.0], np.cumsum(areas)])  # C at each piece's start

    def integral(self, x: np.ndarray) -> np.ndarray:
        """C(x): ∫ t from the first piece's start to x (flat extension on both sides)."""
        first, last = self.starts[0], self.ends[-1]
        below = np.minimum(x - first, 0.0) * self.left[0]  # negative area before the first
        above = np.maximum(x - last, 0.0) * self.right[-1]
        inside = np.clip(x, first, last)
        k = np.clip(np.searchsorted(self.starts, inside, side="right") - 1, 0, len(self.starts) - 1)
        a, width = self.starts[k], self.ends[k] - self.starts[k]
        u = inside - a
        safe = np.where(width > 0, width, 1.0)
        slope = np.where(width > 0, (self.right[k] - self.left[k]) / safe, 0.0)
        partial = self.left[k] * u + slope * u * u / 2
        return self.before[k] + partial + below + above

    def total(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Σ t over the contexts [start, end): C(end) − C(start)."""
        return self.integral(end) - self.integral(start)


def head_length(lengths: list[float] | tuple[float, ...]) -> float | None:
    """The output length where one curve's head ends, from its profiled lengths past o = 1 (a
    curve's output_tokens): the last one after which every segment holds at least
    MIN_SEGMENT_STEPS steps (8 for 2, 4, 8, 32, 128, 512; 20 for 20, 40); None where no segment
    is that long (a head-only curve, e.g. 2, 4, 8)."""
    lengths = [float(x) for x in lengths]
    start = len(lengths) - 1
    while start > 0 and lengths[start] - lengths[start - 1] >= MIN_SEGMENT_STEPS:
        start -= 1
    return lengths[start] if start < len(lengths) - 1 else None


def _common_head(heads: list[float | None]) -> float | None:
    """The output length o₁ where the head ends, common to every curve with steps past it,
    from each curve's head_length (None where no curve has such a segment, or the curves share
    no such length). A head-only curve (profiled up to o₁ and no further) takes part in the
    head, not in t(x)."""
    ends = set(heads) - {None}
    return ends.pop() if len(ends) == 1 else None


class _Span(NamedTuple):
    """Contexts [start, end) a curve's segment covers at `cost` per step, and `anchor`: that
    curve's whole slope past its head, where a gap between curves starts or ends."""

    start: float
    end: float
    cost: float
    anchor: float


def _add_curve(covered: list[_Span], curve: dict[str, Any], o1: float) -> list[_Span]:
    """`covered` with the curve's segments past `o1` (the head's end) added where nothing
    covers their contexts yet, each with the curve's whole slope past o₁ as its anchor. Past
    o₁ every segment of a curve with steps holds MIN_SEGMENT_STEPS or more; a head curve
    (it ends at o₁), or one whose only segments past o₁ are shorter, adds nothing."""
    p_c = float(curve["prompt_tokens"])
    points = zip(curve["output_tokens"], curve["decode"], strict=True)
    stepped = [
        (oa, da, ob, db)
        for (oa, da), (ob, db) in pairwise((float(o), float(d)) for o, d in points)
        if oa >= o1 and ob - oa >= MIN_SEGMENT_STEPS
    ]
    if not stepped:
        return list(covered)
    first, last = stepped[0], stepped[-1]
    anchor = (last[3] - first[1]) / (last[2] - first[0])
    out = list(covered)
    for oa, da, ob, db in stepped:
        cost = (db - da) / (ob - oa)
        for start, end in _uncovered(out, p_c + oa, p_c + ob):
            out.append(_Span(start, end, cost, anchor))
    return out


def _uncovered(covered: list[_Span], start: float, end: float) -> list[tuple[float, float]]:
    """The parts of [start, end) that no span of `covered` holds."""
    parts = [(start, end)]
    for a, b, _, _ in covered:
        parts = [
            piece
            for lo, hi in parts
            for piece in ((lo, min(hi, a)), (max(lo, b), hi))
            if piece[1] > piece[0]
        ]
    return parts
