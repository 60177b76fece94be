"""Triton grouped GEMM for mixture-of-experts layers (CUDA; imported lazily, self-checked).

The (token, expert) pairs of a batch are sorted by expert and each expert's run is padded to
a multiple of BLOCK_M rows (`align`, plain torch ops with static shapes, so the whole MoE
layer is one CUDA graph whatever the routing). One program multiplies a BLOCK_M-row block of
one expert by a BLOCK_N-column tile of that expert's weights, so every expert the batch
touches is streamed once per block of its tokens and an untouched expert is never read: at
decode (a few tokens, BLOCK_M 16) the bytes read are those of the distinct experts, the
quantity spec.expected_distinct_experts predicts. Blocks past the last expert's run exit at
once. The same kernel serves prefill with larger blocks (the grouped GEMM of serving
engines, e.g. vLLM's fused_moe).

Pair p = token·k + j is token p // k's j-th choice. The first GEMM reads activations by
token (`a_div` = k), computes the gate and up tiles of its columns together and writes the
gated activation of pair rows; the second reads pair rows (`a_div` = 1), adds the expert's
bias and multiplies by the pair's routing weight, so a sum over k finishes the layer.

At decode sizes (pairs <= 64) routing and alignment are one kernel (`route_align`): softmax or
sigmoid scores, an optional selection bias, top-k by k rounds of argmax, renormalisation and
scale, then the padded expert-sorted layout, all in one program; a MoE layer is then five
launches: router GEMV, route_align, two grouped GEMMs and the sum over k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from infermeter.engine.gemv_kernels import GLU, _glu, rows_gemv
from infermeter.engine.kernels import _grid_sync, _launch, autotune, tile_configs

DECODE_BLOCK_M = 16  # the smallest tile of a tensor-core dot
PREFILL_BLOCK_M = 64


def capacity(pairs: int, experts: int, block_m: int) -> int:
    """Rows of the padded, expert-sorted layout: every pair plus each touched expert's
    padding (at most block_m − 1 rows, and at most min(E, pairs) experts are touched)."""
    rows = pairs + min(experts, pairs) * (block_m - 1)
    return triton.cdiv(rows, block_m) * block_m


def align(ids: Tensor, experts: int, block_m: int) -> tuple[Tensor, Tensor]:
    """ids [T, k] expert choices -> (rows [cap] int32, block_experts [cap / block_m] int32).

    rows[r] is the pair index in padded row r (T·k for padding); block_experts[i] is the
    expert of block i, or -1 past the last expert's run. No host sync, static shapes.
    """
    flat = ids.reshape(-1)
    pairs = flat.numel()
    cap = capacity(pairs, experts, block_m)
    device = flat.device
    counts = torch.zeros(experts, device=device, dtype=torch.long)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    chosen = flat[order]
    first = counts.cumsum(0) - counts  # first sorted position of each expert
    rank = torch.arange(pairs, device=device) - first[chosen]
    dest = (ends - padded)[chosen] + rank
    rows = torch.full((cap,), pairs, device=device, dtype=torch.int32)
    rows.scatter_(0, dest, order.to(torch.int32))
    starts = torch.arange(0, cap, block_m, device=device)
    owner = torch.searchsorted(ends, starts, right=True)
    block_experts = torch.where(owner < experts, owner, -1).to(torch.int32)
    return rows, block_experts


def _gemm_configs() -> list[triton.Config]:
    """Tiles tried once per (N, K, block rows) shape and range of row blocks
    (row_blocks_bucket): narrow ones keep enough programs in flight when a decode step touches
    few experts, wide ones serve prefill (four, as each is compiled per kernel variant in
    every fresh process's first run)."""
    return tile_configs([(16, 256, 4, 4), (32, 128, 4, 4), (64, 128, 4, 3), (128, 64, 8, 3)])


def row_blocks_bucket(blocks: int) -> int:
    """The range of row blocks a grouped GEMM's tile is tuned for: `blocks` (align()'s
    BlockExperts, one program row each) rounded up to a power of two.

    The best tile depends on how many row blocks there are (few: narrow tiles keep programs
    in flight; many: wide ones serve the bandwidth), so a tile tuned once per weight shape
    served every prompt size with the one its first use tuned, kept in Triton's cache for
    later processes: on an H100 at 009dd74 gpt-oss-20b's default profile took 11-20 % longer
    at p >= 2,017 than at 1682906 (docs/benchmarks/stores/flex_short_kernel_009dd74). Measured
    apart on an H100 (stores/tile_bucket_7732325, tiles/): with one tile per shape the tiles
    were the same whichever prompt size ran first, so what the engine runs at its start tuned
    them, at few row blocks; per range, 8 layers' prefill at p = 4,065 took 35.9 ms against
    41.8-42.1 in either order. About 11-12 ranges a GEMM from batch-1 decode to 32,768
    prompt tokens, each tuned once (four tiles), kept like any tile."""
    return 1 << max(0, blocks - 1).bit_length()


@autotune(_gemm_configs(), key=["N", "K", "BLOCK_M", "ACT", "blocks_bucket"])
@triton.jit(do_not_specialize=["blocks_bucket"])  # read by the tuner only: one compile
def _grouped_gemm(
    A, W, Bias, Scale, Out, Rows, BlockExperts,
    pairs, N, K, a_div, limit, alpha, blocks_bucket,
    stride_am, stride_we, stride_wn, stride_be, stride_om,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, PDL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ACT: tl.constexpr = 0,
):  # fmt: skip
    """ACT 0: out = A·Wᵀ (+ bias)(· scale). ACT > 0: W holds [gate; up] rows (N each) and
    out = act(gate) · up (see _glu)."""
    _grid_sync(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(BlockExperts + pid_m).to(tl.int64)
    if expert < 0:
        return
    rows = tl.load(Rows + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < pairs
    a_rows = rows // a_div
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    w_base = W + expert * stride_we + cols[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        a = tl.load(
            A + a_rows[:, None] * stride_am + kk[None, :],
            mask=rmask[:, None] & kmask[None, :],
            other=0.0,
        )
        wmask = nmask[:, None] & kmask[None, :]
        w = tl.load(w_base + kk[None, :], mask=wmask, other=0.0)
        acc += tl.dot(a, tl.trans(w))
        if ACT > 0:
            wu = tl.load(w_base + N * stride_wn + kk[None, :], mask=wmask, other=0.0)
            up += tl.dot(a, tl.trans(wu))
    if HAS_BIAS:
        bias = tl.load(Bias + expert * stride_be + cols, mask=nmask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
        if ACT > 0:
            bias_up = tl.load(Bias + expert * stride_be + N + cols, mask=nmask, other=0.0)
            up += bias_up.to(tl.float32)[None, :]
    acc = _glu(acc, up, ACT, limit, alpha)
    if HAS_SCALE:
        acc *= tl.load(Scale + rows, mask=rmask, other=0.0)[:, None]
    out = Out + rows[:, None] * stride_om + cols[None, :]
    tl.store(out, acc.to(Out.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])


def _unit_stride(a: Tensor, w: Tensor) -> None:
    """The kernels step along K by one element: rows of `a` and `w` must be contiguous in K
    (a strided view would be read wrongly, not refused, by the kernel itself)."""
    if a.stride(-1) != 1 or w.stride(-1) != 1:
        raise ValueError(
            f"MoE kernels need unit stride along K (a {tuple(a.stride())}, w {tuple(w.stride())})"
        )


def grouped_linear(
    a: Tensor,
    w: Tensor,
    rows: Tensor,
    block_experts: Tensor,
    pairs: int,
    a_div: int,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    act: str | None = None,
    limit: float = 7.0,
    alpha: float = 1.702,
) -> Tensor:
    """out[p] = (a[p // a_div] @ w[expert(p)].T + bias[expert(p)]) · scale[p] for every pair p.

    a [rows_a, K], w [E, N, K], bias [E, N], scale [pairs] float32 -> out [pairs, N] in
    a's dtype. With `act` (a GLU key), w is [E, 2N', K] = [gate; up] and out [pairs, N'] is
    the gated activation. `rows`/`block_experts` come from align(); the block size is theirs.
    """
    _unit_stride(a, w)
    n, k = w.shape[1] // (2 if act else 1), w.shape[2]
    block_m = rows.numel() // block_experts.numel()
    out = torch.empty(pairs, n, device=a.device, dtype=a.dtype)
    grid = lambda meta: (block_experts.numel(), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _grouped_gemm[grid](
        a, w, bias if bias is not None else w, scale if scale is not None else w, out,
        rows, block_experts, pairs, n, k, a_div, limit, alpha,
        row_blocks_bucket(block_experts.numel()),
        a.stride(0), w.stride(0), w.stride(1), bias.stride(0) if bias is not None else 0,
        out.stride(0),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None,
        BLOCK_M=block_m, ACT=GLU[act] if act else 0, **_launch(a.device),
    )  # fmt: skip
    return out


def expert_gemv(
    a: Tensor,
    w: Tensor,
    ids: Tensor,
    a_div: int,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    act: str | None = None,
    total: bool = False,
    limit: float = 7.0,
    alpha: float = 1.702,
    residual: Tensor | None = None,
    norm: tuple[Tensor, float] | None = None,
) -> Tensor:
    """grouped_linear() for the k pairs of ONE token, without the expert-sorted layout: ids
    [1, k] (distinct experts, as top-k gives them), a [rows_a, K], w [E, N(·2), K] ->
    out [k, N] in a's dtype, or with `total` their sum [1, N] (+ residual [1, N]); `norm`
    (weight, eps): a's rows RMSNorm-ed as they are loaded. Each
    chosen expert's rows are read once, whole (gemv_kernels.rows_gemv); a batch-1 decode
    step's MoE layer is then router GEMV, route_align (routing only) and two of these, plus
    the sum over k in the "pairs" mode. ValueError where a or w is not contiguous along K
    or a row does not fit (the engine's self-check then keeps the grouped GEMM).
    """
    return rows_gemv(
        a, w, ids=ids.reshape(-1), a_div=a_div, bias=bias, scale=scale, act=act, total=total,
        limit=limit, alpha=alpha, residual=residual, norm=norm,
    )  # fmt: skip


FUSED_PAIRS = 64  # route_align's limit: tokens x k (padded to powers of two)


def fused_routing(tokens: int, k: int, experts: int) -> bool:
    """Whether route_align handles this size (decode), else torch routing + align()."""
    slots = triton.next_power_of_2(tokens) * triton.next_power_of_2(k)
    return slots <= FUSED_PAIRS and experts <= 256


@triton.jit
def _route_align(
    Logits, ScoreBias, Ids, Weights, Rows, Blocks,
    T, E, stride_l, scale,
    K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
    CAP: tl.constexpr, CHUNK: tl.constexpr, NB_PAD: tl.constexpr, BM: tl.constexpr,
    SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
    LAYOUT: tl.constexpr = True,
):  # fmt: skip
    _grid_sync(PDL)
    t = tl.arange(0, BLOCK_T)
    e = tl.arange(0, BLOCK_E)
    tmask = t < T
    emask = e < E
    logits = tl.load(
        Logits + t[:, None] * stride_l + e[None, :], mask=tmask[:, None] & emask[None, :],
        other=0.0,
    ).to(tl.float32)  # fmt: skip
    logits = tl.where(emask[None, :], logits, float("-inf"))
    if SIGMOID:
        scores = tl.sigmoid(logits)
    else:
        ex = tl.exp(logits - tl.max(logits, 1)[:, None])
        scores = ex / tl.sum(ex, 1)[:, None]
    choice = scores
    if SIGMOID:  # the sigmoid's order without float32's ties at 1 (as MoELayer.route ranks)
        choice = logits
    if HAS_BIAS:  # DeepSeek-V3: a bias that steers the choice, not the weights
        choice = scores + tl.load(ScoreBias + e, mask=emask, other=0.0).to(tl.float32)[None, :]
    choice = tl.where(emask[None, :], choice, float("-inf"))
    kk = tl.arange(0, K_PAD)
    ids = tl.zeros([BLOCK_T, K_PAD], dtype=tl.int32) + E
    w = tl.zeros([BLOCK_T, K_PAD], dtype=tl.float32)
    for j in tl.static_range(K):  # top-k: k rounds of argmax
        best = tl.argmax(choice, 1)
        hit = e[None, :] == best[:, None]
        value = tl.sum(tl.where(hit, scores, 0.0), 1)
        ids = tl.where(kk[None, :] == j, best[:, None], ids)
        w = tl.where(kk[None, :] == j, value[:, None], w)
        choice = tl.where(hit, float("-inf"), choice)
    if NORMALIZE:
        w = w / (tl.sum(w, 1)[:, None] + 1e-20)
    w = w * scale
    valid = tmask[:, None] & (kk[None, :] < K)
    pair = t[:, None] * K + kk[None, :]
    tl.store(Ids + pair, ids, mask=valid)
    tl.store(Weights + pair, w, mask=valid)
    if not LAYOUT:
        return
    # the padded, expert-sorted layout of the pairs (align() below, in one program)
    pe = tl.reshape(tl.where(valid, ids, E), [BLOCK_T * K_PAD])
    pp = tl.reshape(pair, [BLOCK_T * K_PAD])
    pvalid = pe < E
    onehot = (pe[:, None] == e[None, :]) & pvalid[:, None]
    counts = tl.sum(onehot.to(tl.int32), 0)
    padded = (counts + BM - 1) // BM * BM
    ends = tl.cumsum(padded, 0)
    start = tl.sum(tl.where(onehot, (ends - padded)[None, :], 0), 1)
    before = (pe[:, None] == pe[None, :]) & (pp[None, :] < pp[:, None]) & pvalid[None, :]
    dest = start + tl.sum(before.to(tl.int32), 1)
    for r0 in tl.static_range(0, CAP, CHUNK):
        r = r0 + tl.arange(0, CHUNK)
        match = (dest[None, :] == r[:, None]) & pvalid[None, :]
        found = tl.sum(match.to(tl.int32), 1)
        which = tl.sum(tl.where(match, pp[None, :], 0), 1)
        tl.store(Rows + r, tl.where(found > 0, which, T * K), mask=r < CAP)
    nb = tl.arange(0, NB_PAD)
    owner = tl.sum((ends[None, :] <= (nb * BM)[:, None]).to(tl.int32), 1)
    tl.store(Blocks + nb, tl.where(owner < E, owner, -1), mask=nb < CAP // BM)


def route_warps(tokens: int) -> int:
    """route_align's warps: the tokens rounded up to a power of two, at most 8. One token's
    k rounds of argmax over E scores then reduce within a warp, by shuffles, with no shared
    memory or barrier; more tokens' layout ([pairs, E] one-hot sums) needs more threads.
    Measured on an H200 (docs/benchmarks/route_align_bench.md, 2026-12-04) at 1, 2, 4 and 8
    tokens, and at 16 and 32 (k of 4 or 2), where eight warps were fastest too. One token's
    routing took 2.19 µs at one warp against 3.63 µs at four (Qwen3-30B-A3B, E 128, k 8),
    eight tokens' routing and layout 19.8 µs at eight warps against 37.4 µs at four; at 2
    tokens two warps were within 8 % of the fastest (a rule, not a per-size choice).
    INFERMETER_ROUTE_WARPS overrides it (engine/select.py). Whole models:
    docs/benchmarks/route_warps/."""
    return min(8, triton.next_power_of_2(max(1, tokens)))


def route_align(
    logits: Tensor,
    k: int,
    *,
    sigmoid: bool = False,
    normalize: bool = True,
    scale: float = 1.0,
    score_bias: Tensor | None = None,
    layout: bool = True,
    warps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Router logits [T, E] -> (ids [T, k] int64, weights [T, k] float32, rows, block_experts)
    as route() + align(ids, E, DECODE_BLOCK_M) give them, in one launch; for
    fused_routing(T, k, E) sizes only. Without `layout` (one token on the expert GEMVs,
    which read ids alone) the padded layout is not built and rows, block_experts are None.
    `warps`: the program's warps (None: route_warps(T); benchmarks/route_align_bench.py).
    Raises ValueError for warps that are not 1, 2, 4 or 8 (the counts checked on a GPU)."""
    tokens, experts = logits.shape
    if warps is not None and warps not in (1, 2, 4, 8):
        raise ValueError(f"route_align: warps must be 1, 2, 4 or 8, not {warps}")
    cap = capacity(tokens * k, experts, DECODE_BLOCK_M)
    device = logits.device
    ids = torch.empty(tokens, k, device=device, dtype=torch.long)
    weights = torch.empty(tokens, k, device=device, dtype=torch.float32)
    rows = torch.empty(cap if layout else 1, device=device, dtype=torch.int32)
    blocks = torch.empty(cap // DECODE_BLOCK_M if layout else 1, device=device, dtype=torch.int32)
    chunk = min(128, triton.next_power_of_2(cap))
    _route_align[(1,)](
        logits, score_bias if score_bias is not None else logits, ids, weights, rows, blocks,
        tokens, experts, logits.stride(0), scale,
        K=k, K_PAD=triton.next_power_of_2(k), BLOCK_T=triton.next_power_of_2(tokens),
        BLOCK_E=max(16, triton.next_power_of_2(experts)), CAP=cap, CHUNK=chunk,
        NB_PAD=triton.next_power_of_2(cap // DECODE_BLOCK_M), BM=DECODE_BLOCK_M,
        SIGMOID=sigmoid, NORMALIZE=normalize, HAS_BIAS=score_bias is not None, LAYOUT=layout,
        num_warps=route_warps(tokens) if warps is None else warps, **_launch(device),
    )  # fmt: skip
    return (ids, weights, rows, blocks) if layout else (ids, weights, None, None)
