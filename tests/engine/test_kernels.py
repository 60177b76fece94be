"""The engine's Triton decode kernels, run in Triton's CPU interpreter.

On a GPU the engine self-checks them at start; this checks their arithmetic in CI, where
there is no GPU: the GEMV (plain, and with bias and residual folded in) against float math,
and whole greedy generations of tiny models through the Triton decode path (rotary + cache
write, split-K flash-decoding with GQA and ALiBi, RMSNorm, SiLU·mul; ring-buffer slots,
sinks and soft-capping; the MoE grouped GEMM) against the plain SDPA path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paths import SCRIPTS

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

SCRIPT = SCRIPTS / "interpret_kernels.py"
# The interpreter's script runs its jobs in a process per core (up to 4): about 2 minutes on a
# quiet 2-core VM (3.6 minutes in one process); its time is counted in the first test that
# asks for it.
pytestmark = pytest.mark.timeout(1500)
# one tiny model of each layout the interpreter script decodes (its DENSE and NEWER)
LAYOUTS = [
    "tiny-llama",
    "tiny-gptj",
    "tiny-bloom",
    "tiny-qwen3-moe",
    "tiny-deepseek-v2",
    "tiny-gpt-oss",
    "tiny-gemma2",
    "tiny-llama4",
]


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode", ["plain", "bias_residual", "one_tile", "one_token", "one_token_looped"]
)
def test_gemv_modes_match_float_math(interpreted: dict, mode: str) -> None:
    assert interpreted["gemv_float32"][mode] < 1e-5
    assert interpreted["gemv_float16"][mode] < 5e-3


@pytest.mark.slow
def test_the_gemv_self_check_runs_one_tile_untuned(interpreted: dict) -> None:
    # each autotuner is entered by a tuned call (so the count sees it), never by the check:
    # two tokens take the looped kernel, one token the whole-rows one
    check = interpreted["gemv_self_check"]
    assert check == {
        "problem": None,
        "problem_rows": None,  # with INFERMETER_ONE_TOKEN_GEMV=rows, whole rows checked too
        "tuner_in_check": 0,
        "tuner_after": 1,
        "rows_tuner_after": 1,
    }


@pytest.mark.slow
@pytest.mark.parametrize("model", LAYOUTS)
def test_triton_decode_gives_the_tokens_of_the_plain_path(interpreted: dict, model: str) -> None:
    tokens = interpreted["tokens"][model]
    assert len(tokens["sdpa"]) == 2 and all(len(row) == 6 for row in tokens["sdpa"])
    assert tokens["triton"] == tokens["sdpa"]


@pytest.mark.slow
@pytest.mark.parametrize("model", LAYOUTS)
def test_batch1_triton_decode_gives_the_tokens_of_the_plain_path(
    interpreted: dict, model: str
) -> None:
    """One sequence: every GEMV a whole-rows one, with the pre-norms applied as x is loaded
    and gated activations in the epilogue (MoE: expert GEMVs, residual folded in)."""
    tokens = interpreted["tokens_batch1"][model]
    assert len(tokens["sdpa"]) == 1 and len(tokens["sdpa"][0]) == 6
    assert tokens["triton"] == tokens["sdpa"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt-oss"])
def test_batch1_looped_gemvs_give_the_tokens_of_the_plain_path(
    interpreted: dict, model: str
) -> None:
    """One sequence through kernels.LOOPED: the dense layers' GEMVs looped over K, the
    pre-norm and gated activation in kernels of their own (MoE experts still by GEMV)."""
    assert interpreted["tokens_batch1_looped"][model] == interpreted["tokens_batch1"][model]["sdpa"]
    calls = interpreted["dense_rows_calls"][model]  # whole rows outside the experts: none
    assert calls["looped"] == 0 < calls["triton"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-gpt-oss", "tiny-qwen3-moe"])
@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_moe_triton_path_matches_the_expert_loop(
    interpreted: dict, model: str, tokens: int
) -> None:
    """Fused routing + alignment (1, 3 tokens) or torch routing (40), grouped GEMMs with the
    gated activation in the epilogue, expert biases (gpt-oss)."""
    assert interpreted["moe"][f"{model}_tokens_{tokens}"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-gpt-oss", "tiny-qwen3-moe"])
@pytest.mark.parametrize("mode", ["sum", "pairs"])
def test_one_token_expert_gemvs_match_the_expert_loop(
    interpreted: dict, model: str, mode: str
) -> None:
    """Batch-1 decode: the k chosen experts by GEMV, summed over k in the down GEMV ("sum")
    or after it ("pairs"); gpt-oss's biases and clamped SiLU ride in the epilogues."""
    assert interpreted["moe"][f"{model}_gemv_{mode}"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-gpt-oss", "tiny-qwen3-moe", "tiny-deepseek-v2"])
@pytest.mark.parametrize("mode", ["sum", "pairs", "grouped"])
def test_one_token_moe_block_folds_the_residual_in(
    interpreted: dict, model: str, mode: str
) -> None:
    """Batch-1 decode: the residual rides in the down GEMV's epilogue ("sum"), and with
    shared experts (DeepSeek-V2) the routed output rides in the shared down GEMV's; the
    block's output matches the plain path that adds them after."""
    assert interpreted["moe_residual"][f"{model}_{mode}"] < 1e-5


@pytest.mark.slow
def test_batch1_paths_time_every_mode_and_price_out_a_failing_one(interpreted: dict) -> None:
    """The start-up choice: every mode timed (clock injected) after its own self-check; a
    GEMV variant that gives wrong numbers gets no time and a one-line reason."""
    choice = interpreted["batch1_choice"]
    assert choice["timings"] == {"grouped": 30.0, "sum": 10.0, "pairs": 20.0}
    assert choice["problems"] == {}
    assert choice["broken_timings"] == {"grouped": 30.0, "sum": None, "pairs": 20.0}
    assert choice["broken_problems"] == {"sum": "Triton expert GEMV (sum) self-check mismatch"}
    assert choice["dense_timings"] == {"grouped": None, "sum": None, "pairs": None}
    assert choice["forced_sum"] == [{"sum": 0.0}, {}]  # a forced mode: checked, not timed


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sigmoid_bias", "softmax_plain", "sigmoid_saturated"])
def test_fused_routing_matches_torch(interpreted: dict, variant: str) -> None:
    routing = interpreted["routing"]
    assert routing[f"{variant}_ids"] and routing[f"{variant}_layout"]
    assert routing[f"{variant}_weights"] < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-gpt-oss", "tiny-gemma2", "tiny-llama4"]
)
def test_engine_self_checks_pass_for_the_newer_kernels(interpreted: dict, model: str) -> None:
    """The start-up checks of qk-norm, gated activations, norm + residual, ring writes and
    sinks/soft-cap attention, as a GPU runs them, pass on the interpreted kernels."""
    assert interpreted["self_checks"][model] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-gpt-oss", "tiny-gemma2", "tiny-llama4"]
)
def test_one_triton_decode_step_gives_the_plain_paths_logits(interpreted: dict, model: str) -> None:
    """Past the windows and chunks, one step's logits through the kernels (a layer without
    rotary, the weightless qk-norm, chunked ring lengths and input-scaled experts for
    Llama-4) match the plain path's; rotating Llama-4's NoPE layer in the kernels left the
    greedy tokens unchanged, so the tokens alone do not show it."""
    assert interpreted["step_errors"][model] < 1e-5


@pytest.mark.slow
def test_latent_attention_matches_float_math(interpreted: dict) -> None:
    """MLA decode in the latent space: 20 heads (two head groups), two lengths."""
    assert interpreted["latent"] < 1e-5


@pytest.mark.slow
def test_grouped_gemm_geglu_epilogue(interpreted: dict) -> None:
    assert interpreted["routing"]["geglu"] < 1e-5


@pytest.mark.slow
def test_decode_attention_sinks_softcap_and_ring_slots(interpreted: dict) -> None:
    assert interpreted["attention"]["sinks_softcap_scale"] < 1e-5
    assert interpreted["attention"]["ring_slots"] == 0.0


@pytest.mark.slow
def test_decode_attention_merges_its_splits_in_the_last_program(interpreted: dict) -> None:
    merge = interpreted["merge"]
    cases = [name for name in merge if name != "counts_left"]
    assert len(cases) == 5
    for name in cases:  # fused and in a kernel of its own, against float math
        assert merge[name]["fused"] < 1e-5 and merge[name]["kernel"] < 1e-5, (name, merge[name])
    several = merge["gqa_split_a_pass"]
    assert several["pass"] == 1 < several["splits"]  # the merge walked the splits in passes
    assert merge["batch_empty_splits"]["splits"] > 1
    assert merge["counts_left"] == 0  # each group's last program reset its count


@pytest.mark.slow
def test_qk_norm_inside_rope_store_gives_the_two_kernels_bits(interpreted: dict) -> None:
    assert interpreted["rope_norm"] == {
        "full_rotary_gqa": True,
        "partial_rotary": True,
        "no_rotary_ring": True,
    }
