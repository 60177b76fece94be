"""Attention under masks: the explicit path (soft-capping, sinks) and masked SDPA pad keys to
aligned rows, and a windowed or chunked prefill runs in blocks (blocked_attend); each result
must be the float math of the unpadded keys under the whole mask, for any size and mask kind."""

from __future__ import annotations

import math
from unittest.mock import patch

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from infermeter.engine import attention
from infermeter.engine.attention import (
    KEY_ALIGN,
    _aligned_keys,
    attend,
    blocked_attend,
    chunk_mask,
    window_mask,
)


def reference(q, k, v, mask, softcap, sinks, scale=None):  # type: ignore[no-untyped-def]
    """Attention written out in float64 with grouped heads expanded, no padding."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    if sinks is not None:
        b, nq, s, _ = scores.shape
        sink = sinks.double().view(1, nq, 1, 1).expand(b, nq, s, 1)
        probs = torch.cat([scores, sink], -1).softmax(-1)[..., :-1]
    else:
        probs = scores.softmax(-1)
    return probs @ v.double()


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 40),
    queries=st.integers(1, 3),
    mask_kind=st.sampled_from(["none", "bool", "additive"]),
    softcap=st.sampled_from([None, 30.0]),
    with_sinks=st.booleans(),
    sdpa=st.booleans(),
)
def test_padded_keys_give_the_unpadded_result(
    t: int, queries: int, mask_kind: str, softcap: float | None, with_sinks: bool, sdpa: bool
) -> None:
    gen = torch.Generator().manual_seed(t * 7 + queries)
    b, nq, nkv, d = 2, 4, 2, 8
    q = torch.randn(b, nq, queries, d, generator=gen)
    k, v = (torch.randn(b, nkv, t, d, generator=gen) for _ in range(2))
    keep = torch.rand(queries, t, generator=gen) < 0.7
    keep[:, 0] = True  # every query sees a key
    additive = torch.zeros(queries, t).masked_fill(~keep, -math.inf)
    mask = {"none": None, "bool": keep, "additive": additive}[mask_kind]
    sinks = torch.randn(nq, generator=gen) if with_sinks else None
    if sdpa:  # plain cases go to SDPA (its masked rows padded too)
        softcap = sinks = None
    elif softcap is None and sinks is None:
        softcap = 50.0  # the explicit path
    got = attend(q, k, v, mask, None, softcap, sinks)
    want = reference(q, k, v, mask, softcap, sinks)
    assert got.shape == (b, nq, queries, d)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


def test_keys_are_padded_to_the_alignment_and_the_padding_masked() -> None:
    k = v = torch.ones(1, 1, 17, 4)
    pk, pv, mask = _aligned_keys(k, v, None)
    assert pk.shape[2] % KEY_ALIGN == 0 and pk.shape[2] - 17 < KEY_ALIGN
    assert mask is not None and mask[:17].all() and not mask[17:].any()
    assert (pk[..., 17:, :] == 0).all() and (pv[..., 17:, :] == 0).all()
    same = _aligned_keys(torch.ones(1, 1, 32, 4), torch.ones(1, 1, 32, 4), None)
    assert same[0].shape[2] == 32 and same[2] is None  # aligned keys are left as they are


@settings(max_examples=60, deadline=None)
@given(
    s=st.integers(1, 50),
    window=st.one_of(st.none(), st.integers(1, 20)),
    block=st.integers(1, 24),
    chunked=st.booleans(),
    kind=st.sampled_from(["plain", "softcap", "sinks"]),
    budget=st.sampled_from([1, 1 << 28]),
    scale=st.sampled_from([None, 0.1]),
)
# blocks of several windows or chunks (20 queries over chunks of 8: a block across chunks)
@example(s=20, window=8, block=10, chunked=True, kind="plain", budget=1, scale=None)
@example(s=20, window=8, block=10, chunked=False, kind="plain", budget=1, scale=0.1)
@example(s=37, window=5, block=12, chunked=True, kind="sinks", budget=1, scale=0.1)
@example(s=37, window=5, block=12, chunked=False, kind="softcap", budget=1, scale=None)
def test_blocked_prefill_is_attention_under_the_whole_mask(
    s: int,
    window: int | None,
    block: int,
    chunked: bool,
    kind: str,
    budget: int,
    scale: float | None,
) -> None:
    """blocked_attend's blocks of queries (whole windows, or a score budget's worth for a
    global layer; flash-causal ones among them) against one attention over all s keys under
    the window's, the chunk's or the causal [s, s] mask, at the default softmax scale or
    another (Gemma's query_pre_attn_scalar)."""
    gen = torch.Generator().manual_seed(s * 31 + (window or 0))
    b, nq, nkv, d = 2, 4, 2, 8
    q = torch.randn(b, nq, s, d, generator=gen)
    k, v = (torch.randn(b, nkv, s, d, generator=gen) for _ in range(2))
    softcap = 30.0 if kind == "softcap" else None
    sinks = torch.randn(nq, generator=gen) if kind == "sinks" else None
    pos = torch.arange(s)
    chunked = chunked and window is not None
    mask = chunk_mask(pos, pos, window) if chunked else window_mask(pos, pos, window)
    with patch.object(attention, "SCORE_BUDGET", budget):  # global blocks of 16 queries or all
        got = blocked_attend(q, k, v, window, chunked, scale, softcap, sinks, block)
    want = reference(q, k, v, mask, softcap, sinks, scale)
    assert got.shape == (b, nq, s, d)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()
