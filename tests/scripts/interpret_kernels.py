"""Run the engine's Triton decode kernels in Triton's CPU interpreter and compare them with
plain PyTorch; prints one JSON object. Run by tests/engine/test_kernels.py with TRITON_INTERPRET=1
(the interpreter is chosen when the kernels are defined, so this needs its own process)."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import triton

from infermeter.engine import gemv_kernels, kernels, mla_kernels, moe_kernels, select
from infermeter.engine.generate import Engine
from infermeter.engine.select import _check_newer_kernels
from infermeter.spec.catalog import get_spec

DENSE = ("tiny-llama", "tiny-gptj", "tiny-bloom")
# MoE routing, latent attention, windows + sinks + biased experts, windows + soft-caps,
# chunks + a layer without rotary + input-scaled top-1 experts (Llama-4)
NEWER = ("tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-gpt-oss", "tiny-gemma2", "tiny-llama4")
LOOPED_MODELS = ("tiny-llama", "tiny-gpt-oss")  # also decoded through kernels.LOOPED


def gemv_errors(dtype: torch.dtype) -> dict[str, float]:
    """Largest error of each small_linear mode relative to the output's largest value."""
    torch.manual_seed(0)
    m, k, n = 3, 320, 100  # ragged against the 32 x 64 tiles on purpose
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype) / k**0.5
    bias = torch.randn(n, dtype=dtype)
    res = torch.randn(m, n, dtype=dtype)
    cases = {
        "plain": (kernels.small_linear(x, w), x.float() @ w.float().T),
        "bias_residual": (
            kernels.small_linear(x, w, bias, res),
            x.float() @ w.float().T + bias.float() + res.float(),
        ),
        "one_tile": (  # the engine's self-check: one tile, nothing tuned
            kernels.small_linear(x, w, bias, res, tuned=False),
            x.float() @ w.float().T + bias.float() + res.float(),
        ),
        # one token: whole rows a program (gemv_kernels), K = 320 split as 256 + 64
        "one_token": (
            kernels.small_linear(x[:1], w, bias, res[:1]),
            x[:1].float() @ w.float().T + bias.float() + res[:1].float(),
        ),
        "one_token_looped": (
            kernels.small_linear(x[:1], w, bias, res[:1], whole_rows=False),
            x[:1].float() @ w.float().T + bias.float() + res[:1].float(),
        ),
    }
    return {
        name: float((got.float() - want).abs().max() / want.abs().max())
        for name, (got, want) in cases.items()
    }


def decode_tokens(name: str, path: str, batch: int = 2) -> list[list[int]]:
    """Greedy tokens of a float32 tiny model with decode attention `path` (sdpa, triton, or
    looped: triton with kernels.LOOPED's one-token GEMVs); the Triton paths also run its MoE
    layers through the grouped GEMM."""
    engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, cuda_graphs=False)
    with torch.inference_mode():  # qk-norm weights of ones would hide a norm applied twice
        for block in engine.model.layers:
            if block.q_norm is not None:
                block.q_norm.copy_(torch.linspace(0.25, 3.0, block.q_norm.numel()))
                block.k_norm.copy_(torch.linspace(3.0, 0.25, block.k_norm.numel()))
    if path != "sdpa":
        engine.model.kernels = kernels.LOOPED if path == "looped" else kernels
        engine.attention = "triton"
        if engine.model.mla:
            engine.model.mla_kernels = mla_kernels
        for block in engine.model.layers:
            if block.moe is not None:
                block.moe.path, block.moe.kernels = "triton", moe_kernels
                block.moe.gemv = "sum"
    # two lengths (per-sequence slots); 20 + 6 tokens pass the 16-token windows (ring wraps;
    # tiny-llama4's chunk of 16 starts again at 16, its query temperature grows from 7)
    prompts = [[5, 9, 3, 7, 11, 2, 8, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [6, 1, 12, 3]]
    return engine.generate(prompts[:batch], 6).tokens


def step_error(name: str) -> float:
    """One decode step's logits through the Triton kernels (one sequence: whole-rows GEMVs,
    the experts by GEMV) against the plain path's, relative L2 error, after a 20-token prompt
    (past the 16-token windows and chunks): tokens alone can agree by chance."""
    engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, cuda_graphs=False)
    model = engine.model
    tokens = torch.tensor([[5, 9, 3, 7, 11, 2, 8, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    n = tokens.shape[1]

    def step(path: str) -> torch.Tensor:
        with torch.inference_mode():
            engine._ensure_state(1, n + 1)
            model(tokens[:, :-1], model.prefill_context(1, n - 1))
            ctx = model.decode_context(torch.tensor([n - 1]), engine._state.length, path)
            return model.logits(model(tokens[:, -1:], ctx), ctx.fast)[0]

    want = step("sdpa")
    model.kernels = kernels
    if model.mla:
        model.mla_kernels = mla_kernels
    for block in model.layers:
        if block.moe is not None:
            block.moe.path, block.moe.kernels, block.moe.gemv = "triton", moe_kernels, "sum"
    got = step("triton")
    return float((got - want).norm() / want.norm())


def counting_rows(name: str, path: str) -> tuple[list[list[int]], int]:
    """decode_tokens(name, path, 1) and the calls of gemv_kernels.rows_gemv it made from
    outside the MoE experts (moe_kernels holds its own reference to the function)."""
    real, calls = gemv_kernels.rows_gemv, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    gemv_kernels.rows_gemv = counted
    try:
        return decode_tokens(name, path, 1), len(calls)
    finally:
        gemv_kernels.rows_gemv = real


def gemv_self_check() -> dict[str, object]:
    """The engine's kernel self-check (select._check_kernels) on a tiny model, counting the
    times it enters the GEMV's autotuner (none: it runs one tile, so that a GPU does not
    compile and time 12 tiles for its 96-row shape), and then a tuned call (one)."""
    engine = Engine(get_spec("tiny-llama"), device="cpu", dtype=torch.float32)
    entered: dict[str, list[int]] = {"looped": [], "rows": []}
    tuners = {"looped": kernels._small_linear, "rows": gemv_kernels._rows_gemv}
    real = {name: tuner.run for name, tuner in tuners.items()}

    def counter(name: str):
        def counted(*args, **kwargs):
            entered[name].append(1)
            return real[name](*args, **kwargs)

        return counted

    for name, tuner in tuners.items():
        tuner.run = counter(name)
    try:
        problem = select._check_kernels(engine.model, kernels)  # default: looped
        os.environ["INFERMETER_ONE_TOKEN_GEMV"] = "rows"  # whole rows checked as well
        try:
            problem_rows = select._check_kernels(engine.model, kernels)
        finally:
            del os.environ["INFERMETER_ONE_TOKEN_GEMV"]
        in_check = sum(len(v) for v in entered.values())
        kernels.small_linear(torch.randn(2, 64), torch.randn(32, 64))  # looped: M = 2
        kernels.small_linear(torch.randn(1, 64), torch.randn(32, 64))  # whole rows: M = 1
    finally:
        for name, tuner in tuners.items():
            tuner.run = real[name]
    return {
        "problem": problem,
        "problem_rows": problem_rows,
        "tuner_in_check": in_check,
        "tuner_after": len(entered["looped"]),
        "rows_tuner_after": len(entered["rows"]),
    }


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def moe_errors() -> dict[str, float]:
    """MoE layers through the Triton path (fused routing + alignment at decode sizes, torch
    routing at 40 tokens; grouped GEMMs with the gated activation fused) against the
    per-expert loop, relative to the output's largest value: gpt-oss (clamped SiLU, biases)
    and Qwen3-MoE (SiLU, renormalised top-4 of 16)."""
    out = {}
    for name in ("tiny-gpt-oss", "tiny-qwen3-moe"):
        engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, seed=3)
        moe = next(b.moe for b in engine.model.layers if b.moe is not None)
        moe.kernels, moe.path = moe_kernels, "triton"
        for tokens in (1, 3, 40):
            x = torch.randn(
                tokens, engine.spec.hidden_size, generator=torch.Generator().manual_seed(1)
            )
            want = moe._loop(x, *moe.route(x))
            out[f"{name}_tokens_{tokens}"] = _rel(moe._routed(x, None), want)
            if tokens == 1:  # the one-token expert GEMVs, both ways of summing over k
                for mode in ("sum", "pairs"):
                    moe.gemv = mode
                    out[f"{name}_gemv_{mode}"] = _rel(moe._routed(x, None), want)
                moe.gemv = None
    return out


def moe_residual_errors() -> dict[str, float]:
    """A whole MoE block's forward at one token with the residual (and, for DeepSeek-V2,
    the shared experts) folded into the last GEMV's epilogue, each GEMV mode, against the
    plain path (per-expert loop, torch linears, the residual added after)."""
    out = {}
    for name in ("tiny-gpt-oss", "tiny-qwen3-moe", "tiny-deepseek-v2"):
        engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, seed=3)
        moe = next(b.moe for b in engine.model.layers if b.moe is not None)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(1, engine.spec.hidden_size, generator=gen)
        moe.path, moe.gemv = "loop", None
        # a residual as large as the block's own output (random weights give ~1e-3), so
        # that an error in either shows
        scale = moe.forward(x, None, None).abs().max()
        res = torch.randn(1, engine.spec.hidden_size, generator=gen) * scale
        want = moe.forward(x, res, None)
        moe.kernels, moe.path = moe_kernels, "triton"
        for mode in ("sum", "pairs"):
            moe.gemv = mode
            out[f"{name}_{mode}"] = _rel(moe.forward(x, res, kernels), want)
        moe.gemv = None
        out[f"{name}_grouped"] = _rel(moe.forward(x, res, kernels), want)
    return out


def batch1_choice() -> dict[str, object]:
    """select.batch1_paths on a tiny MoE layer through the interpreted kernels, with its
    clock injected (the modes' times are the subject, and a CPU has no CUDA events): each
    mode's self-check runs for real; a "sum" variant broken on purpose is priced out."""
    engine = Engine(get_spec("tiny-qwen3-moe"), device="cpu", dtype=torch.float32, seed=3)
    moe = next(b.moe for b in engine.model.layers if b.moe is not None)
    moe.kernels, moe.path = moe_kernels, "triton"
    fake_us = {None: 30.0, "sum": 10.0, "pairs": 20.0}

    def fake_call_us(fn, device, graphs, calls=20, rounds=5):
        fn()
        return fake_us[moe.gemv]

    real_call_us, select.call_us = select.call_us, fake_call_us
    try:  # a pool's worker runs other jobs after this one
        return _batch1_paths(engine, moe)
    finally:
        select.call_us = real_call_us


def _batch1_paths(engine: Engine, moe: object) -> dict[str, object]:
    modes = (None, "sum", "pairs")
    timings, problems = select.batch1_paths(engine.model, moe, modes, False, "triton")
    real = moe_kernels.expert_gemv

    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        return out + 1.0 if kwargs.get("total") else out  # far off: outputs here are ~1e-3

    moe_kernels.expert_gemv = broken
    try:
        broken_timings, broken_problems = select.batch1_paths(
            engine.model, moe, modes, False, "triton"
        )
    finally:
        moe_kernels.expert_gemv = real
    return {
        "timings": timings,
        "problems": problems,
        "broken_timings": {k: None if v == float("inf") else v for k, v in broken_timings.items()},
        "broken_problems": broken_problems,
        "dense_timings": {  # the experts' path is not triton here: nothing is timed
            k: None if v == float("inf") else v
            for k, v in select.batch1_paths(engine.model, moe, modes, False, "dense")[0].items()
        },
        "forced_sum": select.batch1_paths(engine.model, moe, ("sum",), False, "triton", False),
    }


def routing_checks() -> dict[str, float | bool]:
    """route_align against torch routing + align: DeepSeek-V3's sigmoid scores with a
    selection bias and scale, and softmax without renormalisation; and the geGLU epilogue."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 24, generator=gen)
    bias = 0.3 * torch.randn(24, generator=gen)
    out: dict[str, float | bool] = {}
    for label, kwargs in {
        "sigmoid_bias": {"sigmoid": True, "normalize": True, "scale": 2.5, "score_bias": bias},
        "softmax_plain": {"sigmoid": False, "normalize": False, "scale": 1.0},
    }.items():
        ids, weights, rows, blocks = moe_kernels.route_align(logits, 3, **kwargs)
        scores = logits.sigmoid() if kwargs["sigmoid"] else logits.softmax(-1)
        choice = scores + kwargs.get("score_bias", torch.zeros(24))
        want_ids = choice.topk(3, -1).indices
        want_w = scores.gather(1, want_ids)
        if kwargs["normalize"]:
            want_w = want_w / want_w.sum(-1, keepdim=True)
        want_w = want_w * kwargs["scale"]
        want_rows, want_blocks = moe_kernels.align(ids, 24, moe_kernels.DECODE_BLOCK_M)
        out[f"{label}_ids"] = bool(torch.equal(ids, want_ids))
        out[f"{label}_weights"] = _rel(weights, want_w)
        out[f"{label}_layout"] = bool(
            torch.equal(blocks, want_blocks) and _same_rows(rows, want_rows, blocks)
        )
    # Llama-4: sigmoid scores with no bias rank by the logits; float32's sigmoid rounds 18 and
    # 20 both to 1, so ranking the scores would pick the lower index (expert 5, not 9)
    big = logits.clone()
    big[:, 5], big[:, 9] = 18.0, 20.0
    ids, weights, _, _ = moe_kernels.route_align(
        big, 1, sigmoid=True, normalize=False, scale=1.0, layout=False
    )
    out["sigmoid_saturated_ids"] = bool(torch.equal(ids, big.topk(1, -1).indices))
    out["sigmoid_saturated_layout"] = True  # no layout asked for
    out["sigmoid_saturated_weights"] = _rel(weights, big.sigmoid().gather(1, ids))
    x = torch.randn(6, 32, generator=gen)
    w = torch.randn(4, 2 * 48, 32, generator=gen) / 32**0.5
    ids = torch.randint(0, 4, (6, 2), generator=gen)
    rows, blocks = moe_kernels.align(ids, 4, moe_kernels.DECODE_BLOCK_M)
    got = moe_kernels.grouped_linear(x, w, rows, blocks, 12, 2, act="geglu")
    flat = ids.reshape(-1)
    y = torch.einsum("ph,pnh->pn", x.repeat_interleave(2, 0), w[flat])
    gate, up = y.split(48, -1)
    out["geglu"] = _rel(got, torch.nn.functional.gelu(gate, approximate="tanh") * up)
    return out


def latent_error() -> float:
    """Latent-space flash-decoding (MLA) against float math over the cached latents."""
    gen = torch.Generator().manual_seed(5)
    q_lat, q_pe = torch.randn(2, 20, 32, generator=gen), torch.randn(2, 20, 16, generator=gen)
    cache = torch.randn(2, 100, 48, generator=gen)
    lens = torch.tensor([37, 100], dtype=torch.int32)
    got = mla_kernels.latent_attention(q_lat, q_pe, cache, lens, 0.1)
    want = []
    for i, length in enumerate((37, 100)):
        keys = cache[i, :length]
        probs = (torch.cat([q_lat[i], q_pe[i]], -1) @ keys.T * 0.1).softmax(-1)
        want.append(probs @ keys[:, :32])
    return _rel(got, torch.stack(want))


def _same_rows(rows: torch.Tensor, want: torch.Tensor, blocks: torch.Tensor) -> bool:
    """Each block holds the same pairs (order within an expert's block may differ)."""
    block = moe_kernels.DECODE_BLOCK_M
    return all(
        sorted(rows[i * block : (i + 1) * block].tolist())
        == sorted(want[i * block : (i + 1) * block].tolist())
        for i in range(blocks.numel())
    )


def _attention_want(
    q: torch.Tensor,
    cache: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Decode attention in float math: q [b, nq, d], cache [b, L, 2, nkv, d] -> [b, nq, d]."""
    nq, nkv = q.shape[1], cache.shape[3]
    rows = []
    for i, n in enumerate(lens.tolist()):
        k = cache[i, :n, 0].repeat_interleave(nq // nkv, 1)
        v = cache[i, :n, 1].repeat_interleave(nq // nkv, 1)
        scores = torch.einsum("hd,nhd->hn", q[i], k) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if sinks is None:
            probs = scores.softmax(-1)
        else:
            probs = torch.cat([scores, sinks[:, None]], -1).softmax(-1)[:, :-1]
        rows.append(torch.einsum("hn,nhd->hd", probs, v))
    return torch.stack(rows)


def attention_errors() -> dict[str, float]:
    """Flash-decoding with a custom scale, soft-capped scores and sink logits, against float
    math; and the rotary + cache write at ring slots against indexing."""
    gen = torch.Generator().manual_seed(2)
    b, nq, nkv, d, length = 2, 4, 2, 16, 100
    q = torch.randn(b, nq, d, generator=gen)
    cache = torch.randn(b, length, 2, nkv, d, generator=gen)
    lens = torch.tensor([37, 100], dtype=torch.int32)
    sinks = torch.randn(nq, generator=gen)
    got = kernels.decode_attention(q, cache, lens, None, 0.3, 5.0, sinks)
    want = _attention_want(q, cache, lens, 0.3, 5.0, sinks)
    qkv = torch.randn(b, nq + 2 * nkv, d, generator=gen)
    ring = torch.zeros(b, 8, 2, nkv, d)
    pos, slots = torch.tensor([3, 21]), torch.tensor([3, 5])
    kernels.rope_store(qkv, ring, pos, None, None, nq, slots)
    stored = ring[torch.arange(b), slots]
    expected = qkv[:, nq:].view(b, 2, nkv, d)
    return {
        "sinks_softcap_scale": float((got - want).abs().max() / want.abs().max()),
        "ring_slots": float((stored - expected).abs().max()),
    }


def rope_norm_checks() -> dict[str, bool]:
    """rope_store with the per-head qk-norm inside against the qk_norm kernel and then
    rope_store (the same bits), for full and partial rotary and none, GQA and ring slots."""
    gen = torch.Generator().manual_seed(4)
    out = {}
    for name, (nq, nkv, d, rot, ring) in {
        "full_rotary_gqa": (4, 2, 16, 16, False),
        "partial_rotary": (2, 2, 16, 8, False),
        "no_rotary_ring": (3, 1, 8, 0, True),
    }.items():
        b = 2
        qkv = torch.randn(b, nq + 2 * nkv, d, generator=gen)
        wq, wk = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
        angles = torch.rand(32, max(rot // 2, 1), generator=gen) * 6
        cos, sin = (angles.cos(), angles.sin()) if rot else (None, None)
        pos = torch.tensor([7, 30])
        slots = torch.tensor([3, 1]) if ring else None
        caches = [torch.zeros(b, 32, 2, nkv, d) for _ in range(2)]
        apart = qkv.clone()
        kernels.qk_norm(apart, wq, wk, 1e-6, nq, nkv)
        kernels.rope_store(apart, caches[0], pos, cos, sin, nq, slots)
        kernels.rope_store(qkv, caches[1], pos, cos, sin, nq, slots, (wq, wk, 1e-6))
        changed = not torch.equal(caches[1], torch.zeros_like(caches[1]))
        out[name] = changed and torch.equal(qkv[:, :nq], apart[:, :nq]) and torch.equal(*caches)
    return out


# (b, nq, nkv, d, cache length, lengths, MERGE_TILE, sinks): GQA merged in one pass and a
# split a pass; a batch whose short sequences leave empty splits; heads of their own with d
# not a power of two; groups of 3 heads (a padded head in every merge tile)
MERGES = {
    "gqa_one_pass": (1, 8, 1, 32, 600, [600], 8192, False),
    "gqa_split_a_pass": (1, 8, 1, 32, 600, [431], 64, True),
    "batch_empty_splits": (3, 4, 2, 16, 300, [1, 150, 300], 32, False),
    "heads_apart_d24": (2, 3, 3, 24, 200, [200, 7], 8192, True),
    "group3_padded_sinks": (2, 6, 2, 16, 400, [400, 45], 8192, True),
}


class _NaNMerge:
    """kernels._attn_combine that writes NaN into its output (its third argument): where the
    fused arm fell back to the merge kernel, its error is NaN, not a pass."""

    def __getitem__(self, grid: object):
        return lambda part, lse, out, *args, **kwargs: out.fill_(float("nan"))


def merge_checks() -> dict[str, object]:
    """decode_attention's splits merged by their last program (fused; the merge kernel, if
    launched, writes NaN) and by a kernel of their own, each against float math (relative
    max error) per MERGES case; the splits each case ran; and the arrival counts left after
    all of them (the last program of a group must reset its count to 0)."""
    gen = torch.Generator().manual_seed(3)
    out: dict[str, object] = {}
    tile, merge, combine = kernels.MERGE_TILE, kernels.SPLIT_MERGE, kernels._attn_combine
    try:
        for name, (b, nq, nkv, d, length, lens, merge_tile, sink) in MERGES.items():
            q = torch.randn(b, nq, d, generator=gen)
            cache = torch.randn(b, length, 2, nkv, d, generator=gen)
            sinks = torch.randn(nq, generator=gen) if sink else None
            lengths = torch.tensor(lens, dtype=torch.int32)
            want = _attention_want(q, cache, lengths, d**-0.5, None, sinks)
            kernels.MERGE_TILE = merge_tile
            errors = {}
            for path, on in (("fused", True), ("kernel", False)):
                kernels.SPLIT_MERGE = on
                kernels._attn_combine = _NaNMerge() if on else combine
                got = kernels.decode_attention(q, cache, lengths, sinks=sinks)
                errors[path] = float((got - want).abs().max() / want.abs().max())
            splits = kernels.split_plan(length, b * nkv, q.device)[0]
            errors["splits"] = splits
            errors["pass"] = kernels.merge_pass(nq // nkv, splits, triton.next_power_of_2(d))
            out[name] = errors
    finally:
        kernels.MERGE_TILE, kernels.SPLIT_MERGE, kernels._attn_combine = tile, merge, combine
    out["counts_left"] = int(kernels._merge_counts(torch.device("cpu")).abs().sum())
    return out


def self_check(name: str) -> object:
    """The engine's start-up self-check of its newer kernels on tiny model `name`."""
    engine = Engine(get_spec(name), device="cpu", dtype=torch.float32)
    return _check_newer_kernels(engine.model, kernels)


def _one_thread() -> None:
    torch.set_num_threads(1)  # the workers share the cores: one thread each


def _run(job: tuple[str, tuple]) -> object:
    """One job (a function of this script by name, its arguments), in a worker process."""
    name, args = job
    return globals()[name](*args)


def main() -> None:
    assert kernels.INTERPRETED, "run with TRITON_INTERPRET=1"
    models = (*DENSE, *NEWER)
    jobs: dict[tuple, tuple[str, tuple]] = {
        # one token a step: the kernels module's whole rows, or LOOPED's (few models); these
        # take the longest in the interpreter (15-26 s each on a quiet 2-core VM), so first
        **{
            ("rows", n, path): ("counting_rows", (n, path))
            for n in models
            for path in ("triton", "looped")
            if path == "triton" or n in LOOPED_MODELS
        },
        **{
            ("tokens", n, path, batch): ("decode_tokens", (n, path, batch))
            for n in models
            for path, batch in (("triton", 2), ("sdpa", 2), ("sdpa", 1))
        },
        **{("self", n): ("self_check", (n,)) for n in NEWER},
        **{("step", n): ("step_error", (n,)) for n in NEWER},
        ("gemv", "float32"): ("gemv_errors", (torch.float32,)),
        ("gemv", "float16"): ("gemv_errors", (torch.float16,)),
        **{
            (f,): (f, ())
            for f in (
                "gemv_self_check",
                "moe_errors",
                "moe_residual_errors",
                "batch1_choice",
                "routing_checks",
                "latent_error",
                "attention_errors",
                "merge_checks",
                "rope_norm_checks",
            )
        },
    }
    # Each job builds its own tiny model and patches only its own process's modules, so they
    # run apart, a process a core (the interpreter is Python: one core a process).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(4, cores or 1))
    context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        done = dict(zip(jobs, pool.map(_run, jobs.values()), strict=True))
    result = {
        "gemv_float32": done["gemv", "float32"],
        "gemv_float16": done["gemv", "float16"],
        "tokens": {
            n: {path: done["tokens", n, path, 2] for path in ("sdpa", "triton")} for n in models
        },
        "tokens_batch1": {  # whole-rows GEMVs, norms and GLUs fused
            n: {"sdpa": done["tokens", n, "sdpa", 1], "triton": done["rows", n, "triton"][0]}
            for n in models
        },
        "tokens_batch1_looped": {n: done["rows", n, "looped"][0] for n in LOOPED_MODELS},
        "dense_rows_calls": {
            n: {path: done["rows", n, path][1] for path in ("triton", "looped")}
            for n in LOOPED_MODELS
        },
        "self_checks": {n: done["self", n] for n in NEWER},
        "step_errors": {n: done["step", n] for n in NEWER},
        "gemv_self_check": done["gemv_self_check",],
        "moe": done["moe_errors",],
        "moe_residual": done["moe_residual_errors",],
        "batch1_choice": done["batch1_choice",],
        "routing": done["routing_checks",],
        "latent": done["latent_error",],
        "attention": done["attention_errors",],
        "merge": done["merge_checks",],
        "rope_norm": done["rope_norm_checks",],
        "workers": workers,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
