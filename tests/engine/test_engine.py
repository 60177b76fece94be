"""The reference engine on tiny specs, CPU only: exact against a naive forward pass, cached
decode against recomputation, sampling, stop tokens, tensor parallelism (gloo) and the backend.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from infermeter.backends.base import Point  # noqa: E402
from infermeter.backends.engine import EngineBackend  # noqa: E402
from infermeter.engine import (  # noqa: E402
    Decoder,
    Engine,
    init_random,
    load_state,
    logical_tensors,
    partition,
    sample_top_p,
)
from infermeter.engine.parallel import Comm  # noqa: E402
from infermeter.errors import UserError  # noqa: E402
from infermeter.spec.catalog import CATALOG, get_spec  # noqa: E402
from infermeter.spec.model import ModelSpec  # noqa: E402
from specs import LLAMA_LAYOUT, TINY_DIMS  # noqa: E402

TINY: dict[str, Any] = {**TINY_DIMS}
TINY.update(max_context=128, dtype="float32")


def _spec(name: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name=name, **{**TINY, **fields})


LLAMA = _spec(
    "llama",
    num_kv_heads=2,
    ffn_size=96,
    norm_eps=1e-6,
    rope_theta=500.0,
    **LLAMA_LAYOUT,
)
SPECS: dict[str, ModelSpec] = {
    "llama": LLAMA,
    "mqa-headdim": replace(LLAMA, name="mqa", num_kv_heads=1, head_dim=32, tie_embeddings=True),
    "gpt2": _spec("gpt2", tie_embeddings=True),
    "gptj": _spec(
        "gptj",
        position="rotary",
        rotary_fraction=0.25,
        parallel_attn_ffn=True,
        out_bias=False,
        lm_head_bias=True,
    ),
    "neox": _spec(
        "neox", position="rotary", rotary_fraction=0.5, parallel_attn_ffn=True, parallel_norms=2
    ),
    "bloom": _spec(
        "bloom", num_heads=8, position="alibi", embedding_norm=True, tie_embeddings=True
    ),
    "opt": _spec("opt", ffn_kind="relu", position_offset=2, ffn_size=128),
    "qwen2": replace(LLAMA, name="qwen2", qkv_bias=True),
}


# ---- a plain reference: fp32, one sequence, no cache, explicit causal mask ------------------


def random_weights(spec: ModelSpec, seed: int = 0) -> dict[str, Any]:
    """Logical weights with large enough values that every part of the model matters."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, _ in logical_tensors(spec):
        noise = torch.randn(shape, generator=gen)
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.2 * noise
        elif len(shape) == 1:  # biases
            out[name] = 0.2 * noise
        elif name in ("embed", "pos_embed"):
            out[name] = noise
        else:
            out[name] = noise / math.sqrt(shape[1])
    return out


def ref_slopes(n: int) -> Any:
    def power_of_two(m: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return torch.tensor(power_of_two(n))
    closest = 2 ** math.floor(math.log2(n))
    extra = power_of_two(2 * closest)[0::2][: n - closest]
    return torch.tensor(power_of_two(closest) + extra)


def reference_logits(spec: ModelSpec, w: dict[str, Any], tokens: list[int]) -> Any:
    s, h, d = len(tokens), spec.hidden_size, spec.dim_head
    nq, nkv = spec.num_heads, spec.kv_heads
    pos = torch.arange(s)

    def norm(x: Any, prefix: str) -> Any:
        if spec.norm == "layernorm":
            return F.layer_norm(x, (h,), w[f"{prefix}.weight"], w[f"{prefix}.bias"], spec.norm_eps)
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.norm_eps)
        return x * scale * w[f"{prefix}.weight"]

    def linear(x: Any, layer: str, name: str) -> Any:
        y = x @ w[f"{layer}.w{name}"].T
        bias = w.get(f"{layer}.b{name}")
        return y if bias is None else y + bias

    def rotate(x: Any) -> Any:  # [s, heads, d]; interleaved pairs of the first rot dims
        rot = int(d * spec.rotary_fraction) // 2 * 2
        inv = spec.rope_theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
        ang = (pos[:, None].double() * inv[None]).float()[:, None, :]
        cos, sin = ang.cos(), ang.sin()
        x0, x1 = x[..., 0:rot:2], x[..., 1:rot:2]
        rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
        return torch.cat([rotated, x[..., rot:]], dim=-1)

    def ffn(x: Any, layer: str) -> Any:
        up = linear(x, layer, "_up")
        if spec.ffn_kind == "swiglu":
            hidden = F.silu(linear(x, layer, "_gate")) * up
        elif spec.ffn_kind == "relu":
            hidden = torch.relu(up)
        else:
            hidden = F.gelu(up, approximate="tanh")
        return linear(hidden, layer, "_down")

    x = w["embed"][torch.tensor(tokens)]
    if "embed_norm.weight" in w:
        x = norm(x, "embed_norm")
    if spec.position == "learned":
        x = x + w["pos_embed"][pos + getattr(spec, "position_offset", 0)]
    causal = pos[None, :] > pos[:, None]
    for i in range(spec.num_layers):
        layer = f"layers.{i}"
        a_in = norm(x, f"{layer}.attn_norm")
        q = linear(a_in, layer, "q").view(s, nq, d)
        k = linear(a_in, layer, "k").view(s, nkv, d)
        v = linear(a_in, layer, "v").view(s, nkv, d)
        if spec.position == "rotary":
            q, k = rotate(q), rotate(k)
        k = k.repeat_interleave(nq // nkv, dim=1)
        v = v.repeat_interleave(nq // nkv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        if spec.position == "alibi":
            scores = scores + ref_slopes(nq)[:, None, None] * (pos[None, :] - pos[:, None])
        scores = scores.masked_fill(causal, -math.inf)
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(s, nq * d)
        attn_out = linear(att, layer, "o")
        if spec.parallel_attn_ffn:
            f_in = norm(x, f"{layer}.ffn_norm") if f"{layer}.ffn_norm.weight" in w else a_in
            x = x + attn_out + ffn(f_in, layer)
        else:
            x = x + attn_out
            x = x + ffn(norm(x, f"{layer}.ffn_norm"), layer)
    head = w["embed"] if spec.tie_embeddings else w["lm_head"]
    logits = norm(x, "norm") @ head.T
    return logits + w["lm_head_bias"] if "lm_head_bias" in w else logits


def engine_with(spec: ModelSpec, seed: int = 0, **options: Any) -> tuple[Engine, dict[str, Any]]:
    engine = Engine(spec, **options)
    weights = random_weights(spec, seed)
    with torch.inference_mode():
        load_state(engine.model, weights)
    return engine, weights


def rel_error(a: Any, b: Any) -> float:
    return float((a - b).norm() / b.norm())


PROMPTS = [[3, 17, 99, 5, 250, 42, 7, 7, 128], [200, 1, 64, 33, 90, 12, 8, 255, 0]]


@pytest.mark.parametrize("family", sorted(SPECS))
def test_logits_match_reference(family: str) -> None:
    spec = SPECS[family]
    engine, weights = engine_with(spec)
    logits = engine.score(torch.tensor(PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        ref = reference_logits(spec, weights, prompt)
        assert rel_error(logits[row], ref) < 1e-4


def greedy_by_recompute(
    spec: ModelSpec, weights: dict[str, Any], prompt: list[int], n: int
) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(reference_logits(spec, weights, seq)[-1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("family", sorted(SPECS))
def test_cached_greedy_decode_matches_recompute(family: str) -> None:
    spec = SPECS[family]
    engine, weights = engine_with(spec)
    # Different lengths in one batch: right padding must not leak into either sequence.
    prompts = [PROMPTS[0], PROMPTS[1][:4]]
    run = engine.generate(prompts, 7)
    assert run.decode_steps == 6
    for prompt, tokens in zip(prompts, run.tokens, strict=True):
        assert tokens == greedy_by_recompute(spec, weights, prompt, 7)


def test_top_p_sampler_stays_in_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01])
    logits = probs.log().repeat(4000, 1)
    gen = torch.Generator().manual_seed(1)
    drawn = sample_top_p(logits, temperature=1.0, top_p=0.9, generator=gen)
    counts = torch.bincount(drawn, minlength=5).tolist()
    assert counts[3] == counts[4] == 0  # outside the nucleus {0, 1, 2}
    shares = [c / 4000 for c in counts[:3]]
    for share, p in zip(shares, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95], strict=True):
        assert abs(share - p) < 0.04
    again = sample_top_p(logits, 1.0, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again)


def test_top_p_generation_is_reproducible_and_in_nucleus() -> None:
    spec = SPECS["llama"]
    engine, weights = engine_with(spec, sampling="top_p", temperature=0.8, top_p=0.5)
    first = engine.generate(PROMPTS, 8, seed=11).tokens
    assert engine.generate(PROMPTS, 8, seed=11).tokens == first
    assert engine.generate(PROMPTS, 8, seed=12).tokens != first
    for prompt, tokens in zip(PROMPTS, first, strict=True):
        logits = reference_logits(spec, weights, prompt + tokens)[len(prompt) - 1 : -1]
        probs = torch.softmax(logits / 0.8, -1)
        for p, token in zip(probs, tokens, strict=True):
            before = p[p > p[token]].sum()  # probability of every token ranked above it
            assert before < 0.5 + 1e-5


def test_forced_length_and_stop_tokens() -> None:
    spec = SPECS["llama"]
    engine, _ = engine_with(spec)
    free = engine.generate(PROMPTS, 12).tokens
    assert [len(t) for t in free] == [12, 12]
    # Stop on a token row 0 produces at step k (its first occurrence there).
    k = next(i for i in range(3, 12) if free[0][i] not in free[0][:i])
    stop = free[0][k]
    run = engine.generate(PROMPTS, 12, stop_tokens=[stop, 9999])
    assert run.tokens[0] == free[0][: k + 1]
    expected = free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert run.tokens[1] == expected
    if stop in free[1]:  # both stopped: the host noticed and ended the loop early
        assert run.decode_steps < 11
    forced = engine.run_point(Point(prompt_tokens=6, output_tokens=9, batch_size=3))
    assert [len(t) for t in forced.tokens] == [9, 9, 9]


class FakeGraph:
    """Stands in for a CUDA graph on CPU: replay re-runs the captured body and, like a real
    replay, leaves its result in the tensor the capture returned."""

    def __init__(self, body: Any, out: Any) -> None:
        self.body, self.out = body, out

    def replay(self) -> None:
        new = self.body()
        if self.out is not None:
            self.out.copy_(new)


@pytest.mark.parametrize("name", ["bloom", "tiny-gpt-oss", "tiny-deepseek-v2"])
def test_graph_orchestration_on_cpu(monkeypatch: Any, name: str) -> None:
    """Static buffers, graph keys and replay order of the CUDA-graph path give the same tokens
    as the eager path (on CPU, with the masked path's several span buckets; ring buffers,
    experts and latent attention for the newer layouts)."""
    import infermeter.engine.generate as gen

    pools: list[tuple[str, bool]] = []

    def capture(self: Any, body: Any, shared: bool = True) -> Any:
        pools.append(("decode" if "_step" in body.__code__.co_names else "prefill", shared))
        body()  # the eager warm-up
        out = body()
        return FakeGraph(body, out), out

    monkeypatch.setattr(gen.Engine, "_capture", capture)
    monkeypatch.setattr(gen, "SPAN_BUCKET", 4)
    spec = SPECS["bloom"] if name == "bloom" else replace(get_spec(name), max_context=128)
    eager, _ = engine_with(spec)
    graphs, _ = engine_with(spec)
    graphs.graphs, graphs.prefill_graph_problem = True, None
    if name == "tiny-gpt-oss":  # sinks: the prefill through FlexAttention, as on CUDA
        from infermeter.engine.flex import FlexPrefill

        graphs.model.flex_prefill = FlexPrefill(compiled=False, block=4)
    prompts = [PROMPTS[0], PROMPTS[1][:3]]
    for stops in ((), (eager.generate(prompts, 12).tokens[0][5],)):
        want = eager.generate(prompts, 12, stop_tokens=stops)
        got = graphs.generate(prompts, 12, stop_tokens=stops)
        assert got.tokens == want.tokens
    assert len(graphs._graph_cache) > 2  # one per span bucket and stop mode
    assert graphs.generate(torch.tensor(PROMPTS), 5).tokens == eager.generate(PROMPTS, 5).tokens
    assert graphs._prefill is not None and graphs._prefill.key == (2, 9, False, False)
    # decode graphs share one pool; a prompt shape's graphs have pools of their own
    assert {kind for kind, _ in pools} == {"decode", "prefill"}
    assert all(shared == (kind == "decode") for kind, shared in pools)
    if name == "tiny-gpt-oss":  # the block masks its forward graph reads, held by it
        masks = graphs._prefill.masks
        assert len(masks) == 2 and all(m.seq_lengths == (9, 9) for m in masks)


def test_prompts_past_the_graph_limit_prefill_eagerly(monkeypatch: Any) -> None:
    """Past PREFILL_GRAPH_MAX_TOKENS (batch x width) no prefill graph is captured (a capture
    keeps its activations: gpt-oss-20b's ran out of memory at p = 16,097 on an H200); the
    tokens are the same either way, and a shorter prompt still gets its graphs."""
    import infermeter.engine.generate as gen

    def capture(self: Any, body: Any, shared: bool = True) -> Any:
        body()
        out = body()
        return FakeGraph(body, out), out

    monkeypatch.setattr(gen.Engine, "_capture", capture)
    monkeypatch.setattr(gen, "PREFILL_GRAPH_MAX_TOKENS", 12)
    spec = replace(get_spec("tiny-gpt-oss"), max_context=128)
    eager, _ = engine_with(spec)
    graphs, _ = engine_with(spec)
    graphs.graphs, graphs.prefill_graph_problem = True, None
    long, short = [PROMPTS[0]], [PROMPTS[1][:6]]  # 2 x 9 tokens and 2 x 6: over 12, not
    assert graphs.generate(short * 2, 5).tokens == eager.generate(short * 2, 5).tokens
    assert graphs._prefill is not None and graphs._prefill.key[:2] == (2, 6)
    # after a short shape's graphs: the long prompt neither replays nor keeps them
    assert graphs.generate(long * 2, 5).tokens == eager.generate(long * 2, 5).tokens
    assert graphs._prefill is None and graphs.describe()["prefill_graph_max_tokens"] == 12
    assert graphs.generate(short * 2, 5).tokens == eager.generate(short * 2, 5).tokens
    assert graphs._prefill is not None and graphs.prefill_graph_problem is None  # a choice
    assert eager.describe()["prefill_graph_max_tokens"] is None  # no graphs, no limit


def test_random_weights_do_not_depend_on_tp() -> None:
    spec = replace(SPECS["llama"], vocab_size=255)  # uneven vocabulary chunks
    full = Decoder(spec, partition(spec), Comm(), torch.device("cpu"), torch.float32)
    init_random(full, seed=5)
    d, ffn = spec.dim_head, spec.ffn_dim // 2
    for rank in range(2):
        lay = partition(spec, 2, rank)
        part = Decoder(spec, lay, Comm(), torch.device("cpu"), torch.float32)
        init_random(part, seed=5)
        blk, ref = part.layers[1], full.layers[1]
        q_rows = slice(lay.q_start * d, (lay.q_start + lay.q_heads) * d)
        assert torch.equal(blk.wqkv[: lay.q_heads * d], ref.wqkv[q_rows])
        assert torch.equal(blk.wo, ref.wo[:, q_rows])
        assert torch.equal(blk.w_in[:ffn], ref.w_in[rank * ffn : (rank + 1) * ffn])
        assert torch.equal(part.lm_head, full.lm_head[lay.vocab_start : lay.vocab_end])
        assert torch.equal(part.embed, full.embed)


def test_alibi_slopes_match_bloom() -> None:
    from infermeter.engine.model import alibi_slopes

    for n in (4, 6, 8, 12, 112):
        assert torch.allclose(alibi_slopes(n), ref_slopes(n))


def test_partition_replicates_kv_heads_and_rejects_bad_tp() -> None:
    spec = replace(SPECS["llama"], num_heads=8, num_kv_heads=2, hidden_size=64)
    lays = [partition(spec, 4, r) for r in range(4)]
    assert [(lay.q_start, lay.kv_start, lay.kv_heads) for lay in lays] == [
        (0, 0, 1),
        (2, 0, 1),
        (4, 1, 1),
        (6, 1, 1),
    ]
    with pytest.raises(UserError):
        partition(spec, 3)
    with pytest.raises(UserError):
        partition(replace(spec, num_kv_heads=4, num_heads=12, hidden_size=96), 8)


def test_tensor_parallel_matches_single_rank() -> None:
    prompts = [PROMPTS[0], PROMPTS[1][:5]]
    single = EngineBackend(device="cpu", seed=3)
    double = EngineBackend(device="cpu", tp=2, seed=3, timeout_s=120)
    try:
        for family in ("llama", "mqa-headdim", "gptj"):
            spec = replace(SPECS[family], vocab_size=255)  # a short last vocabulary chunk
            single.prepare(spec)
            double.prepare(spec)  # the second prepare reuses the running ranks
            want = single.generate(prompts, 6).tokens
            assert double.generate(prompts, 6).tokens == want, family
        point = Point(prompt_tokens=5, output_tokens=4, batch_size=2)
        measured = double.measure(point)
        assert measured.status == "ok" and measured.output_tokens_actual == 4
        assert double.describe()["tp"] == 2
        # A rank that dies (segfault, OOM killer) is an error in the parent, not a hang.
        double._ranks.procs[1].kill()
        with pytest.raises(RuntimeError, match="died"):
            double.measure(point)
    finally:
        single.close()
        double.close()


def test_tensor_parallel_newer_layouts_match_single_rank() -> None:
    """Experts sharded along their FFN (with a shared expert and expert biases), latent
    attention with a replicated latent, sinks split by head, ring-buffer windows, qk-norm
    over the whole projection (its mean square all-reduced), and Llama-4's chunks, layer
    without rotary and input-scaled routing: 2 gloo ranks give the tokens of one."""
    olmo_like = replace(
        get_spec("tiny-llama"), name="olmo-like", qk_norm="full", norm_placement="post"
    )
    specs = [get_spec(n) for n in ("tiny-mixtral", "tiny-deepseek-v2", "tiny-gpt-oss")]
    prompts = [list(range(3, 23)), [9, 8, 7, 6, 5]]  # the first passes the 16-token windows
    single = EngineBackend(device="cpu", seed=4)
    double = EngineBackend(device="cpu", tp=2, seed=4, timeout_s=120)
    try:
        for spec in [*specs, get_spec("tiny-gemma2"), get_spec("tiny-llama4"), olmo_like]:
            single.prepare(spec)
            double.prepare(spec)
            want = single.generate(prompts, 8).tokens
            assert double.generate(prompts, 8).tokens == want, spec.name
    finally:
        single.close()
        double.close()


def test_random_routing_is_balanced_and_expert_paths_agree() -> None:
    """Random weights spread a batch's tokens over the experts as balanced routing predicts
    (one token: exactly its k experts); the graph-safe dense expert path (the CUDA fallback)
    computes what the per-expert loop does."""
    spec = get_spec("tiny-qwen3-moe")  # 16 experts, top-4, 2 MoE layers
    engine = Engine(spec, seed=7)
    assert engine.expert_counts(1) == [4, 4]
    for batch in (4, 16):
        counts = engine.expert_counts(batch)
        predicted = spec.expected_distinct_experts(batch)
        assert all(abs(c - predicted) <= 0.25 * predicted for c in counts), (batch, counts)
    prompts = engine.random_prompts(2, 12)
    loop = engine.score(prompts)
    for block in engine.model.layers:
        block.moe.path = "dense"
    assert rel_error(engine.score(prompts), loop) < 1e-6


def test_rotary_tables_grow_with_the_cache_not_the_context() -> None:
    """A review: tables for all of Llama-4 Scout's 10,485,760 positions took about 10 GiB a
    rank. They are built for 32,768 positions, grown with the cache, and a position's
    rotation is the one a whole table gives (YaRN without a factor scales by max_context)."""
    from infermeter.engine.model import ROTARY_POSITIONS
    from infermeter.engine.rope import rotations

    yarn = {"rope_type": "yarn", "original_max_position_embeddings": 4096}
    spec = replace(get_spec("tiny-llama"), max_context=1_000_000, rope_scaling=yarn)
    model = Decoder(spec, partition(spec), Comm(), torch.device("cpu"), torch.float32)
    assert model.freqs.shape[0] == ROTARY_POSITIONS == model.cos.shape[0]
    model.allocate_cache(1, 40_000)
    assert model.freqs.shape[0] >= 40_000 and model.sin.shape[0] == model.freqs.shape[0]
    whole = rotations(model.rot, spec.rope_theta, yarn, 40_000, 1_000_000)
    picked = [0, 12_345, 39_999]
    assert torch.equal(model.freqs[picked], whole[picked])
    assert torch.equal(model.cos[picked], whole[picked].real)


def test_sigmoid_routing_ranks_the_logits() -> None:
    """Llama-4's router ranks its logits (transformers' Llama4Router); float32's sigmoid
    rounds 18 and 20 both to 1, and ranking those scores picked the lower index (a review)."""
    engine = Engine(get_spec("tiny-llama4"), seed=0)
    moe = next(block.moe for block in engine.model.layers if block.moe is not None)
    x = torch.zeros(1, engine.spec.hidden_size)
    x[0, 0] = 1.0
    with torch.inference_mode():  # the engine's weights are inference tensors
        moe.router.zero_()
        moe.router[1, 0], moe.router[2, 0] = 18.0, 20.0
        ids, weights = moe.route(x)
    assert ids.tolist() == [[2]] and weights.tolist() == [[1.0]]


def test_backend_measure_and_errors() -> None:
    backend = EngineBackend(device="cpu")
    backend.prepare(replace(SPECS["opt"], dtype="bfloat16"))  # CPU runs float32 anyway
    try:
        m = backend.measure(Point(prompt_tokens=16, output_tokens=5, batch_size=2))
        assert m.status == "ok" and m.output_tokens_actual == 5
        assert 0 < m.ttft_s <= m.runtime_s
        assert m.extra["prefill_s"] <= m.ttft_s
        assert m.extra["tpot_s"] == pytest.approx(m.extra["decode_s"] / 4)
        info = backend.describe()
        for key in ("torch", "device", "dtype", "tp", "cuda_graphs", "sampling"):
            assert key in info
        assert info["dtype"] == "float32" and info["cuda_graphs"] is False
        with pytest.raises(UserError):
            backend.measure(Point(prompt_tokens=100, output_tokens=29))
        with pytest.raises(UserError):
            backend.generate([[1, 2, 300]], 3)  # token id outside the vocabulary

        def oom(*args: Any, **kwargs: Any) -> Any:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

        backend._engine.generate = oom
        failed = backend.measure(Point(prompt_tokens=4, output_tokens=4))
        assert failed.status == "error" and "out of memory" in (failed.detail or "")
    finally:
        backend.close()
    with pytest.raises(UserError):
        EngineBackend(sampling="beam")


def test_llama_checkpoint_matches_transformers(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2 if p.ndim > 1 else 1.0)
    hf.save_pretrained(tmp_path)
    engine = Engine(SPECS["llama"], checkpoint=str(tmp_path))
    tokens = torch.tensor(PROMPTS)
    with torch.no_grad():
        want = hf(tokens).logits
    assert rel_error(engine.score(tokens), want) < 1e-4
    with pytest.raises(UserError):
        Engine(replace(SPECS["llama"], ffn_size=64), checkpoint=str(tmp_path))


def test_the_wait_for_other_ranks_is_not_the_calls_runtime() -> None:
    """How a command reaches the other ranks (the launcher's store under torchrun: 0.3 ms on
    two H200s) is infermeter's plumbing: the wait at the ranks' barrier is recorded and left
    out of the wall clock. Here one rank's barrier is held for 50 ms."""
    import time

    spec = replace(get_spec("tiny-llama"), max_context=64)
    engine = Engine(spec)
    engine.generate([[1, 2, 3]], 2)  # the shape's first visit
    real = engine.comm.barrier
    engine.comm.barrier = lambda: (time.sleep(0.05), real())[1]  # type: ignore[method-assign]
    started = time.perf_counter()
    run = engine.generate([[1, 2, 3]], 2)
    elapsed = time.perf_counter() - started
    assert run.extra["rank_wait_s"] >= 0.05
    assert run.wall_s <= elapsed - run.extra["rank_wait_s"] + 1e-9


@pytest.mark.parametrize("name", sorted(n for n in CATALOG if n.startswith("tiny-")))
def test_every_tensor_a_decode_step_reads_lives_on_the_models_device(name: str) -> None:
    # A CUDA graph cannot copy a CPU tensor to the GPU while it captures: a tensor attribute
    # left on the CPU (Gemma's embedding scale was) fails the first decode step on a GPU.
    # Built on the meta device, every tensor the model holds must be on meta.
    spec = get_spec(name)
    model = Decoder(spec, partition(spec), Comm(), torch.device("meta"), torch.bfloat16)
    elsewhere = [
        f"{module_name}.{key}"
        for module_name, module in model.named_modules()
        for key, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.device.type != "meta"
    ]
    assert elsewhere == []


def test_warming_a_shape_does_the_first_visits_setup_alone() -> None:
    # measure_point warms a shape before its energy window opens; the call that follows must
    # find the setup done (no warm-up of its own) and generate the same tokens.
    backend = EngineBackend(device="cpu", seed=5)
    cold = EngineBackend(device="cpu", seed=5)
    spec = get_spec("tiny-mixtral")
    backend.prepare(spec)
    cold.prepare(spec)
    try:
        point = Point(24, 6, 1, 0)
        backend.warm(point)
        engine = backend._engine
        assert (1, 24) in engine._warm
        runs = engine._run
        calls: list[int] = []
        engine._run = lambda *a, **k: calls.append(a[2]) or runs(*a, **k)  # type: ignore[method-assign]
        warmed = backend.measure(point)
        assert calls == [6]  # the timed run alone, no 8-token warm-up before it
        assert warmed.extra["tokens_sha"] == cold.measure(point).extra["tokens_sha"]
    finally:
        backend.close()
        cold.close()


def test_warming_a_shape_visited_before_sets_its_prefill_graph_up_again() -> None:
    # The engine keeps one prefill graph; a shape visited earlier (the thermal warm-up's) has
    # lost it to the shapes since, and without this its recapture ran inside the energy window
    # (the H200's p = 1505 knot read 9-17% high). CUDA graphs cannot exist on this CPU: the
    # graph builders are replaced by recorders behind the same signatures.
    backend = EngineBackend(device="cpu", seed=5)
    backend.prepare(get_spec("tiny-llama"))
    try:
        engine = backend._engine
        backend.warm(Point(24, 1, 1, 0))  # first visit, eager on the CPU
        backend.warm(Point(16, 1, 1, 0))
        asked: list[object] = []
        engine.graphs = True
        engine._graph = lambda span, stops: None  # type: ignore[method-assign]
        engine._try_prefill_graphs = (  # type: ignore[method-assign]
            lambda batch, width, padded, stops: asked.append((batch, width, padded, stops))
        )
        # the recapture's replays run on after the call: warm waits for the device, or they
        # land in the window opened next (the H200's 13B knot at p = 1505 read +7%, d85d767)
        engine._wait_for_device = lambda: asked.append("waited")  # type: ignore[method-assign]
        backend.warm(Point(24, 3, 1, 0))  # visited before: no first visit this time
        assert asked == [(1, 24, False, False), "waited"]
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("value", "modes"),
    [(None, (None, "sum", "pairs")), ("auto", (None, "sum", "pairs")), ("0", (None,)),
     ("sum", ("sum",)), ("pairs", ("pairs",))],
)  # fmt: skip
def test_batch1_expert_paths_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, modes: tuple[str | None, ...]
) -> None:
    """Unset or auto: the grouped GEMM and both GEMV modes, timed at start; else as named."""
    from infermeter.engine.select import moe_gemv_modes

    if value is None:
        monkeypatch.delenv("INFERMETER_MOE_GEMV", raising=False)
    else:
        monkeypatch.setenv("INFERMETER_MOE_GEMV", value)
    assert moe_gemv_modes() == modes


def test_a_misspelt_batch1_expert_path_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from infermeter.engine.select import moe_gemv_modes

    monkeypatch.setenv("INFERMETER_MOE_GEMV", "gemv")
    with pytest.raises(UserError, match="INFERMETER_MOE_GEMV must be auto, sum, pairs or 0"):
        moe_gemv_modes()


@pytest.mark.parametrize(
    ("value", "rows"), [(None, False), ("", False), ("looped", False), ("rows", True)]
)
def test_one_token_gemvs_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, rows: bool
) -> None:
    """Unset or empty: looped (less energy a token, decode_power.md); "rows" on request."""
    from infermeter.engine.select import one_token_rows

    if value is None:
        monkeypatch.delenv("INFERMETER_ONE_TOKEN_GEMV", raising=False)
    else:
        monkeypatch.setenv("INFERMETER_ONE_TOKEN_GEMV", value)
    assert one_token_rows() is rows


def test_a_misspelt_one_token_gemv_is_one_line_on_any_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERMETER_ONE_TOKEN_GEMV", "whole")
    with pytest.raises(UserError, match="ONE_TOKEN_GEMV must be looped or rows, not 'whole'"):
        Engine(get_spec("tiny-llama"), device="cpu", dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 300),
    first=st.integers(0, 299),
    count=st.integers(0, 300),
    attention=st.sampled_from(["sdpa", "triton"]),
)
def test_a_runs_spans_are_those_of_its_steps(
    length: int, first: int, count: int, attention: str
) -> None:
    """_spans, computed from its ends, is the set of the spans of every step it covers."""
    engine = Engine.__new__(Engine)  # only the span arithmetic: no model
    engine.attention = attention
    engine._state = type("S", (), {"length": length})()  # type: ignore[assignment]
    want = sorted({engine._span(first + i) for i in range(count)})
    assert engine._spans(first, count) == want


def test_bad_prompts_are_one_line_errors() -> None:
    spec = replace(get_spec("tiny-llama"), max_context=64)
    engine = Engine(spec)
    for prompts, says in (
        ([[1, spec.vocab_size]], "must be in [0,"),
        ([[1, -1]], "must be in [0,"),
        ([[1, 2**70]], "must be in [0,"),
        ([np.array([1, 2**63 + 5], dtype=np.uint64)], "must be in [0,"),
        ([["1", "2"]], "must be integers"),
        ([[1.5, 2.0]], "must be integers"),
        ([[1, None]], "must be integers"),
        (["123"], "list of token-id lists"),
        ([1, 2, 3], "list of token-id lists"),
        ([[[1, 2]]], "list of token-id lists"),
        ([[1], []], "at least one token"),
        ([], "at least one token"),
    ):
        with pytest.raises(UserError, match=re.escape(says)):
            engine.generate(prompts, 2)
    ragged = engine.generate([[1, 2, 3], [4]], 2)  # padded, with lengths: still fine
    assert [len(t) for t in ragged.tokens] == [2, 2]
    same = engine.generate([[1, 2, 3]], 2).tokens
    for ids in (np.array([[1, 2, 3]]), [np.array([1, 2, 3], dtype=np.int32)], [(1, 2, 3)]):
        assert engine.generate(ids, 2).tokens == same  # numpy ids and tuples read alike


def test_the_host_parts_of_a_call_are_inside_its_wall_clock() -> None:
    spec = replace(get_spec("tiny-llama"), max_context=64)
    engine = Engine(spec)
    engine.generate([[1, 2, 3]], 3)  # the shape's first visit
    run = engine.generate([[1, 2, 3]], 3)
    before, after = run.extra["host_before_s"], run.extra["host_after_s"]
    assert before > 0 and after > 0
    assert before + after + run.ttft_s + run.decode_s <= run.wall_s + 1e-9
    assert "launch_at" not in run.extra and "synced_at" not in run.extra


@pytest.mark.parametrize(("value", "warps"), [(None, None), ("", None), ("4", 4), ("1", 1)])
def test_routing_warps_follow_the_environment_into_every_layer(
    monkeypatch: pytest.MonkeyPatch, value: str | None, warps: int | None
) -> None:
    """Unset or empty: route_align's rule (by the tokens); a count: that count in every MoE
    layer. A run records it where route_align routes (the Triton path), None elsewhere."""
    from infermeter.engine.select import route_warps_note

    if value is None:
        monkeypatch.delenv("INFERMETER_ROUTE_WARPS", raising=False)
    else:
        monkeypatch.setenv("INFERMETER_ROUTE_WARPS", value)
    engine = Engine(get_spec("tiny-qwen3-moe"), device="cpu", dtype=torch.float32)
    layers = [block.moe for block in engine.model.layers if block.moe]
    assert {moe.route_warps for moe in layers} == {warps}
    assert engine.describe()["moe_route_warps"] is None  # CPU: the loop path, torch routing
    layers[0].path = "triton"  # as on a GPU that passed the self-check
    said = route_warps_note(layers[0])
    assert said == (
        "by tokens (1, 2, 4, 8)" if warps is None else f"{warps} (INFERMETER_ROUTE_WARPS)"
    )


@pytest.mark.parametrize("value", ["3", "four", "0", "16"])
def test_misspelt_routing_warps_are_refused_before_any_weight(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from infermeter.engine import generate

    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the setting was read")

    monkeypatch.setenv("INFERMETER_ROUTE_WARPS", value)
    monkeypatch.setattr(generate, "Decoder", no_build)
    with pytest.raises(UserError, match=r"INFERMETER_ROUTE_WARPS must be 1, 2, 4 or 8 \(unset"):
        Engine(get_spec("tiny-qwen3-moe"), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("INFERMETER_SPLIT_MERGE", "yes", "INFERMETER_SPLIT_MERGE must be 0 or 1 (unset: 0)"),
        ("INFERMETER_PDL_TRIGGER", "First", "INFERMETER_PDL_TRIGGER must be after or first"),
    ],
)
def test_misspelt_kernel_switches_are_refused_before_any_weight(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    from infermeter.engine import generate

    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the setting was read")

    monkeypatch.setenv(name, value)
    monkeypatch.setattr(generate, "Decoder", no_build)
    with pytest.raises(UserError, match=re.escape(says)):
        Engine(get_spec("tiny-llama"), device="cpu", dtype=torch.float32)


def test_kernel_switches_take_their_values_with_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from infermeter.engine.select import kernel_switches

    monkeypatch.setenv("INFERMETER_PDL_TRIGGER", " first ")
    monkeypatch.setenv("INFERMETER_SPLIT_MERGE", "")
    assert kernel_switches() == {"INFERMETER_PDL_TRIGGER": "first"}
    engine = Engine(get_spec("tiny-llama"), device="cpu", dtype=torch.float32)
    info = engine.describe()  # no Triton decode here: nothing to say about its kernels
    assert info["decode_pdl_trigger"] is None and info["decode_split_merge"] is None


def test_route_align_refuses_an_unchecked_warp_count() -> None:
    pytest.importorskip("triton")
    from infermeter.engine.moe_kernels import route_align

    with pytest.raises(ValueError, match="warps must be 1, 2, 4 or 8, not 16"):
        route_align(torch.zeros(1, 8), 2, warps=16)
