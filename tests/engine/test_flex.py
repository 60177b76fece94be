"""FlexAttention prefill (engine/flex.py): the same attention as the explicit path for every
mask kind, size, block and head grouping; block masks built from the blocks' corners list the
blocks create_block_mask lists; a self-check that fails where the math is wrong; the engine's
choice, its switch, and the masks a prefill graph holds. On a CPU flex runs unfused (compiled
flex serves CUDA only): the math is what is checked here; its speed and its compiled kernels
need a GPU (benchmarks/flex_prefill.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_attention import reference

from infermeter.engine import flex as flex_module
from infermeter.engine.attention import chunk_mask, window_mask
from infermeter.engine.flex import (
    FlexPrefill,
    _block_mask,
    choose_prefill,
    first_line,
    flex_problem,
    prefill_mode,
)
from infermeter.engine.generate import Engine
from infermeter.errors import UserError
from infermeter.spec.catalog import get_spec

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
CPU = torch.device("cpu")


@settings(max_examples=40, deadline=None)
@given(
    s=st.integers(1, 70),
    window=st.one_of(st.none(), st.integers(1, 40)),
    chunked=st.booleans(),
    kind=st.sampled_from(["softcap", "sinks", "both"]),
    group=st.sampled_from([1, 2, 4]),
    scale=st.one_of(st.none(), st.floats(0.05, 0.5)),
    block=st.sampled_from([8, 16, 128]),
)
@example(s=37, window=None, chunked=False, kind="sinks", group=4, scale=None, block=128)
@example(s=33, window=8, chunked=True, kind="softcap", group=2, scale=0.1, block=16)
@example(s=70, window=20, chunked=False, kind="both", group=1, scale=None, block=8)
def test_flex_prefill_is_attention_under_the_layers_mask(
    s: int,
    window: int | None,
    chunked: bool,
    kind: str,
    group: int,
    scale: float | None,
    block: int,
) -> None:
    """In blocks of 8 or 16 (many a prompt: full, partial and skipped ones) or one of 128,
    FlexAttention's default; batch 2 under masks made for any batch."""
    gen = torch.Generator().manual_seed(s * 7 + (window or 0))
    b, nkv, d = 2, 2, 8
    q = torch.randn(b, nkv * group, s, d, generator=gen)
    k, v = (torch.randn(b, nkv, s, d, generator=gen) for _ in range(2))
    softcap = 20.0 if kind in ("softcap", "both") else None
    sinks = torch.randn(nkv * group, generator=gen) if kind in ("sinks", "both") else None
    pos = torch.arange(s)
    chunk = chunked and window is not None
    mask = chunk_mask(pos, pos, window) if chunk else window_mask(pos, pos, window)
    flex = FlexPrefill(compiled=False, block=block)
    got = flex(q, k, v, window, chunked, scale, softcap, sinks)
    want = reference(q, k, v, mask, softcap, sinks, scale)
    assert got.shape == (b, nkv * group, s, d)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(1, 12),
    window=st.one_of(st.none(), st.integers(1, 100)),
    block=st.sampled_from([8, 16]),
)
def test_block_masks_from_corners_list_the_blocks_create_block_mask_lists(
    blocks: int, window: int | None, block: int
) -> None:
    """At whole blocks (create_block_mask evaluates the mask past s in a last, partial
    block, where only the kernel's bounds matter), the same partial and the same full blocks
    for each block of queries."""
    from torch.nn.attention.flex_attention import create_block_mask

    s = blocks * block
    got = _block_mask(s, window, False, block, CPU)
    mod = flex_module._mask_mod(window, False)
    want = create_block_mask(mod, None, None, s, s, device="cpu", BLOCK_SIZE=block)

    def listed(counts: torch.Tensor, order: torch.Tensor) -> list[set[int]]:
        return [set(order[0, 0, i, : int(counts[0, 0, i])].tolist()) for i in range(blocks)]

    assert listed(got.kv_num_blocks, got.kv_indices) == listed(want.kv_num_blocks, want.kv_indices)
    assert listed(got.full_kv_num_blocks, got.full_kv_indices) == listed(
        want.full_kv_num_blocks, want.full_kv_indices
    )


def test_block_masks_are_kept_for_the_latest_length_only() -> None:
    flex = FlexPrefill(compiled=False)
    first = flex.block_mask(40, None, False, CPU)
    assert flex.block_mask(40, None, False, CPU) is first  # made once a length
    local = flex.block_mask(40, 8, False, CPU)
    assert local is not first and flex.masks() == (first, local)
    flex.block_mask(41, None, False, CPU)  # another length: a graph of 40 holds its own
    assert len(flex.masks()) == 1 and flex.masks()[0] is not first


def test_a_short_prompt_asks_for_the_attention_kernel_not_the_decoding_one() -> None:
    """Compiled flex lowers fewer than 128 queries to its decoding kernel, which prefilled whole
    short prompts up to 3.4 times slower than the explicit path (flex.PREFILL_KERNEL): every
    prefill call asks for the attention kernel, and still computes attention. Which kernel
    torch then takes needs a GPU to see."""
    from torch.nn.attention.flex_attention import flex_attention

    calls: list[dict[str, Any]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return flex_attention(*args, **kwargs)

    flex = FlexPrefill(compiled=False, block=16)
    flex._flex = recording
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, n, 33, 8, generator=gen) for n in (4, 2, 2))
    got = flex(q, k, v, None, softcap=5.0)
    assert [c["kernel_options"] for c in calls] == [{"FORCE_USE_FLEX_ATTENTION": True}]
    pos = torch.arange(33)
    want = reference(q, k, v, window_mask(pos, pos, None), 5.0, None)
    assert torch.allclose(got.double(), want, atol=1e-5)


class NoSinks(FlexPrefill):
    """Forgets the sinks (their softmax column)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        return super().__call__(q, k, v, window, chunked, scale, softcap, None)


class NoCap(FlexPrefill):
    """Forgets the soft-capping."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        return super().__call__(q, k, v, window, chunked, scale, None, sinks)


class CapOff(FlexPrefill):
    """Caps at 5 % more than asked (close, not the same)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        cap = None if softcap is None else softcap * 1.05
        return super().__call__(q, k, v, window, chunked, scale, cap, sinks)


class NoWindow(FlexPrefill):
    """Attends every earlier key (a window read as global)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        return super().__call__(q, k, v, None, chunked, scale, softcap, sinks)


class Broken(FlexPrefill):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("triton: out of resources\n  (a second line of compiler output)")


def _model(name: str) -> Any:
    spec = replace(get_spec(name), max_context=128)
    return Engine(spec, device="cpu", cuda_graphs=False).model


def test_the_self_check_passes_flex_and_names_what_is_wrong() -> None:
    """At the tiny models' own layers, and at the cap of 2 the check adds (in bfloat16 a cap
    of 50 barely bends the scores: a lost cap would pass there)."""
    gemma, oss = _model("tiny-gemma2"), _model("tiny-gpt-oss")
    for model in (gemma, oss):
        assert flex_problem(FlexPrefill(compiled=False), model, CPU, torch.float32) is None
    for wrong, model, says in [
        (NoSinks, oss, "sinks True"),
        (NoCap, gemma, "cap 50.0"),
        (CapOff, oss, "cap 2.0"),  # gpt-oss has no cap of its own: the added case finds it
        (NoWindow, gemma, "window 16"),  # the tiny layers' window
    ]:
        problem = flex_problem(wrong(compiled=False), model, CPU, torch.float32) or ""
        assert problem.startswith("flex prefill differs from the explicit path by"), wrong
        assert says in problem, (wrong, problem)
    problem = flex_problem(Broken(compiled=False), oss, CPU, torch.float32)
    first = flex_module.SELF_CHECK_SIZES[0]  # its first line, at the first length it tried
    assert problem == f"RuntimeError: triton: out of resources (s = {first})"
    problem = flex_problem(FailsUnderABlock(compiled=False), gemma, CPU, torch.float32) or ""
    assert problem.startswith("RuntimeError: no kernel for "), problem
    assert problem.endswith(f"(s = {min(flex_module.SELF_CHECK_SIZES)})"), problem
    problem = flex_problem(WrongUnderABlock(compiled=False), oss, CPU, torch.float32) or ""
    assert problem.startswith("flex prefill differs from the explicit path by"), problem
    assert problem.endswith(f", s = {min(flex_module.SELF_CHECK_SIZES)})"), problem


class WrongUnderABlock(FlexPrefill):
    """Right from one block of 128 up; under it, forgets the sinks."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        sinks = None if q.shape[2] < 128 else sinks
        return super().__call__(q, k, v, window, chunked, scale, softcap, sinks)


class FailsUnderABlock(FlexPrefill):
    """Fails to compile for a prompt under one block of 128 (as a kernel flex was made to take
    there might): the self-check tries such a length before any prompt does."""

    def __call__(self, q: Any, *args: Any, **kwargs: Any) -> Any:
        if q.shape[2] < 128:
            raise RuntimeError(f"no kernel for {q.shape[2]} queries")
        return super().__call__(q, *args, **kwargs)


class WrongAtSmallScale(FlexPrefill):
    """Right except at a scale of 0.01 (where it uses the default scale)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        scale = None if scale == 0.01 else scale
        return super().__call__(q, k, v, window, chunked, scale, softcap, sinks)


def test_every_kind_is_checked_even_where_kinds_differ_in_scale_alone() -> None:
    """Two kinds of layer that differ only in their scale (or KV heads, or chunking) are two
    cases, each reported and each held to the tolerance: one name for both let a flex wrong
    at one scale pass (a fresh review found it)."""
    model = _model("tiny-gpt-oss")
    model.layers[0].scale = 0.01
    differences = flex_module.flex_differences(
        FlexPrefill(compiled=False), model, CPU, torch.float32
    )
    kinds = {(b.window, b.scale) for b in model.layers}
    assert len(differences) == len(kinds) + 1  # and the cap-2 check case
    assert sum(name.startswith("check: ") for name in differences) == 1
    assert max(differences.values()) < 1e-5
    problem = flex_problem(WrongAtSmallScale(compiled=False), model, CPU, torch.float32) or ""
    assert "scale 0.01" in problem, problem
    assert (
        flex_module.flex_differences(FlexPrefill(), _model("tiny-llama"), CPU, torch.float32) == {}
    )


def test_the_engine_takes_flex_only_for_capped_or_sink_layers_on_cuda() -> None:
    assert choose_prefill(_model("tiny-llama"), CPU, torch.float32, "auto") == (None, None)
    assert choose_prefill(_model("tiny-llama4"), CPU, torch.float32, "auto") == (None, None)
    model = _model("tiny-gpt-oss")
    choice, why = choose_prefill(model, CPU, torch.float32, "auto")
    assert choice == "explicit" and "not CUDA" in (why or "") and model.flex_prefill is None
    choice, why = choose_prefill(model, CPU, torch.float32, "explicit")
    assert (choice, why) == ("explicit", "INFERMETER_PREFILL_ATTENTION=explicit")
    assert model.flex_prefill is None
    with pytest.raises(UserError, match="INFERMETER_PREFILL_ATTENTION=flex cannot run: not CUDA"):
        choose_prefill(model, CPU, torch.float32, "flex")


@pytest.mark.parametrize("problem", [None, "flex prefill differs from the explicit path by 1"])
def test_on_cuda_the_self_check_decides_in_inference_mode(monkeypatch: Any, problem: Any) -> None:
    """The CUDA branch with the compiler and the check stood in for (no GPU here)."""
    modes: list[bool] = []

    def check(flex: Any, model: Any, device: Any, dtype: Any) -> Any:
        modes.append(torch.is_inference_mode_enabled())  # as the engine's forward runs
        return problem

    monkeypatch.setattr(flex_module, "FlexPrefill", lambda: FlexPrefill(compiled=False))
    monkeypatch.setattr(flex_module, "flex_problem", check)
    model, cuda = _model("tiny-gemma2"), torch.device("cuda")
    choice, why = choose_prefill(model, cuda, torch.bfloat16, "auto")
    assert modes == [True]
    if problem is None:
        assert (choice, why) == ("flex", None) and isinstance(model.flex_prefill, FlexPrefill)
    else:
        assert (choice, why) == ("explicit", problem) and model.flex_prefill is None
        with pytest.raises(UserError, match="flex cannot run: flex prefill differs"):
            choose_prefill(model, cuda, torch.bfloat16, "flex")


def _no_flex_attention() -> Any:
    """FlexPrefill as a torch before 2.5 (which pyproject allows) builds it."""
    raise ModuleNotFoundError("No module named 'torch.nn.attention.flex_attention'")


NO_FLEX_ATTENTION = (
    f"this torch ({torch.__version__}) has no FlexAttention, which flex needs (torch >= 2.5): "
    "ModuleNotFoundError: No module named 'torch.nn.attention.flex_attention'"
)


def test_a_torch_without_flex_keeps_the_explicit_path(monkeypatch: Any) -> None:
    """Auto keeps the explicit path and says why; flex is refused in one line that does not
    send the user to auto (which would not get flex either)."""
    monkeypatch.setattr(flex_module, "FlexPrefill", _no_flex_attention)
    model, cuda = _model("tiny-gemma2"), torch.device("cuda")
    choice, why = choose_prefill(model, cuda, torch.bfloat16, "auto")
    assert (choice, why) == ("explicit", NO_FLEX_ATTENTION)
    assert model.flex_prefill is None
    with pytest.raises(UserError) as refused:
        choose_prefill(model, cuda, torch.bfloat16, "flex")
    assert str(refused.value) == (
        f"INFERMETER_PREFILL_ATTENTION=flex cannot run: {NO_FLEX_ATTENTION}; set it to "
        "explicit, or upgrade torch to 2.5 or later"
    )


def test_a_python_torch_compile_does_not_support_keeps_the_explicit_path(
    monkeypatch: Any,
) -> None:
    """torch.compile refuses some Pythons when FlexPrefill is built (torch 2.5 on 3.13): auto
    keeps the explicit path, flex is refused without sending the user to auto. Other errors
    are bugs, not a reason to run explicit: they propagate."""

    def fails(error: Exception) -> Any:
        def build() -> Any:
            raise error

        return build

    model, cuda = _model("tiny-gemma2"), torch.device("cuda")
    error = RuntimeError("Dynamo is not supported on Python 3.13+")
    monkeypatch.setattr(flex_module, "FlexPrefill", fails(error))
    choice, why = choose_prefill(model, cuda, torch.bfloat16, "auto")
    assert (choice, why) == ("explicit", "RuntimeError: Dynamo is not supported on Python 3.13+")
    with pytest.raises(UserError) as refused:
        choose_prefill(model, cuda, torch.bfloat16, "flex")
    assert str(refused.value) == (
        f"INFERMETER_PREFILL_ATTENTION=flex cannot run: {why}; set it to explicit, or use a "
        "Python that this torch's torch.compile takes"
    )
    monkeypatch.setattr(flex_module, "FlexPrefill", fails(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        choose_prefill(model, cuda, torch.bfloat16, "auto")
    # with ranks, after sending its flag: the other ranks do not wait for it in the collective
    comm = _OtherRank(False)
    with pytest.raises(TypeError, match="a bug"):
        choose_prefill(model, cuda, torch.bfloat16, "auto", comm)
    assert comm.seen == [1.0]
    # an import that fails in a torch that has FlexAttention: not "upgrade torch"
    broken = ModuleNotFoundError("No module named 'sympy'", name="sympy")
    monkeypatch.setattr(flex_module, "FlexPrefill", fails(broken))
    choice, why = choose_prefill(model, cuda, torch.bfloat16, "auto")
    assert why == "importing FlexAttention failed: ModuleNotFoundError: No module named 'sympy'"
    with pytest.raises(UserError, match="set it to explicit, or repair this torch's install"):
        choose_prefill(model, cuda, torch.bfloat16, "flex")


class _OtherRank:
    """parallel.Comm's interface for two ranks (no process group here): the other rank's
    self-check failed (flag 1) or passed (0), and the maximum over both is taken."""

    size, nccl = 2, False

    def __init__(self, other_failed: bool) -> None:
        self.other = float(other_failed)
        self.seen: list[float] = []

    def maximum(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(float(x.item()))
        return x.clamp_(min=self.other)


@pytest.mark.parametrize("other_failed", [False, True])
def test_every_rank_takes_flex_only_where_every_self_check_passed(
    monkeypatch: Any, other_failed: bool
) -> None:
    monkeypatch.setattr(flex_module, "FlexPrefill", lambda: FlexPrefill(compiled=False))
    monkeypatch.setattr(flex_module, "flex_problem", lambda *args: None)  # this rank passed
    model, cuda, comm = _model("tiny-gemma2"), torch.device("cuda"), _OtherRank(other_failed)
    choice, why = choose_prefill(model, cuda, torch.bfloat16, "auto", comm)
    assert comm.seen == [0.0]  # this rank's flag, sent once
    if other_failed:
        assert choice == "explicit" and (why or "").startswith("another rank could not run flex")
        assert model.flex_prefill is None
        with pytest.raises(UserError, match="flex cannot run: another rank could not run flex"):
            choose_prefill(model, cuda, torch.bfloat16, "flex", _OtherRank(True))
    else:
        assert choice == "flex" and isinstance(model.flex_prefill, FlexPrefill)


@pytest.mark.parametrize("other_failed", [False, True])
def test_a_rank_whose_torch_has_no_flex_attention_still_joins_the_choice(
    monkeypatch: Any, other_failed: bool
) -> None:
    """Building FlexPrefill fails on this rank: it still sends its flag (the other ranks wait
    for it in the collective) and keeps its own reason, whatever the others found."""
    monkeypatch.setattr(flex_module, "FlexPrefill", _no_flex_attention)
    model, cuda, comm = _model("tiny-gemma2"), torch.device("cuda"), _OtherRank(other_failed)
    assert choose_prefill(model, cuda, torch.bfloat16, "auto", comm) == (
        "explicit",
        NO_FLEX_ATTENTION,
    )
    assert comm.seen == [1.0] and model.flex_prefill is None


@pytest.mark.parametrize("value", ["", "auto", "explicit", "flex", "Flex", "fused"])
def test_the_switch_takes_its_three_values_and_refuses_others(monkeypatch: Any, value: str) -> None:
    monkeypatch.setenv("INFERMETER_PREFILL_ATTENTION", value)
    if value in ("", "auto", "explicit", "flex"):
        assert prefill_mode() == (value or "auto")  # flex where its self-check passes
    else:
        with pytest.raises(UserError, match="must be auto, explicit or flex"):
            prefill_mode()
        with pytest.raises(UserError, match="INFERMETER_PREFILL_ATTENTION"):
            Engine(get_spec("tiny-gpt-oss"), device="cpu")  # refused before the weights


@pytest.mark.parametrize("name", ["tiny-gpt-oss", "tiny-gemma2"])
def test_the_engine_generates_the_same_tokens_through_flex(name: str) -> None:
    spec = replace(get_spec(name), max_context=128)
    engine = Engine(spec, device="cpu", cuda_graphs=False)
    assert engine.describe()["prefill_attention"] == "explicit"
    prompts = [[(7 * i + 3) % spec.vocab_size for i in range(40)]]
    want = engine.generate(prompts, 6)
    logits = engine.score(torch.tensor(prompts))
    engine.model.flex_prefill = FlexPrefill(compiled=False, block=16)  # as on CUDA
    assert engine.generate(prompts, 6).tokens == want.tokens
    assert torch.allclose(engine.score(torch.tensor(prompts)), logits, atol=1e-4)


def test_plain_windows_and_chunks_never_go_to_flex() -> None:
    """Llama-4's chunked layers neither cap nor have sinks: blocked_attend (flash) serves."""

    class Refuses(FlexPrefill):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a plain layer went to flex")

    spec = replace(get_spec("tiny-llama4"), max_context=128)
    engine = Engine(spec, device="cpu", cuda_graphs=False)
    engine.model.flex_prefill = Refuses(compiled=False)
    assert len(engine.generate([list(range(1, 40))], 3).tokens[0]) == 3


def test_compiled_flex_lowers_when_a_cap_or_scale_changes() -> None:
    """The self-check calls compiled flex with the model's cap and then a cap of 2: dynamo made
    the changed float symbolic (.item() in the score function) and inductor failed to lower it
    ("unbacked_bindings", on an H200 and here). compiled_flex specialises floats: every call
    lowers, matches flex unfused, and the process's own compiler settings are left as they
    were (but for the recompile limit compiled_flex raises, restored here for the other
    tests). Compiled on this CPU (inductor's C++ backend) without the log-sum-exp, which CPU
    flex cannot return; the engine's compiled calls run on CUDA."""
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    specialise_before = config.specialize_float
    with config.patch(recompile_limit=config.recompile_limit, fail_on_recompile_limit_hit=False):
        _lowers_when_floats_change(flex_module.compiled_flex(), flex_attention)
        assert config.recompile_limit >= flex_module.RECOMPILE_LIMIT
    assert config.specialize_float == specialise_before
    torch._dynamo.reset()


def _lowers_when_floats_change(flex: Any, flex_attention: Any) -> None:
    s, nq, nkv, d = 130, 4, 2, 16
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, s, d, generator=gen) for n in (nq, nkv, nkv))
    with torch.inference_mode():
        for window, cap, scale in [(None, 50.0, 0.25), (None, 2.0, 0.25), (64, 2.0, 0.1)]:
            mask = _block_mask(s, window, False, 128, CPU)
            score = flex_module._score_mod(cap)
            args = {"score_mod": score, "block_mask": mask, "scale": scale, "enable_gqa": True,
                    "kernel_options": flex_module.PREFILL_KERNEL}  # fmt: skip
            got, want = flex(q, k, v, **args), flex_attention(q, k, v, **args)
            assert float((got - want).abs().max()) < 1e-5, (window, cap, scale)


def test_an_error_is_kept_as_its_type_and_first_line() -> None:
    assert first_line(RuntimeError("unbacked_bindings\n  page of compiler log")) == (
        "RuntimeError: unbacked_bindings"
    )
    assert first_line(ValueError()) == "ValueError: "
    assert first_line(RuntimeError("x" * 1000)) == ("RuntimeError: " + "x" * 1000)[:300]
