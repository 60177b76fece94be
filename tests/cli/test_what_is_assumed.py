"""What a fresh user found resolved silently, and is now told: a profile of one prompt size
prices every prompt at its PE and says so; a prompt below the smallest profiled size, or past
the largest, is priced along a segment the warning names (with its slope and where it starts);
counts agree with their nouns and a refusal prints the value it refuses; a device that is no
device, and flags that contradict each other, are refused in one line; and `tradeoffs` names
the run it prices a model with where a store holds several; an energy profile of another model
or stack than the runtime profile's is said.

Profiles are synthetic points (points files, or stores filled as a profile fills them), so
nothing here depends on how fast this machine runs a model; the two `profile` commands are
refused before anything is measured.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_fresh_user import said
from test_merge_keeps_all import merge_lines, profiled
from test_what_a_user_is_told import profile_run

from cli_runner import assert_one_line, invoke
from infermeter.model.cost_model import CostModel
from infermeter.model.helm import load_profile, save_helm_efficiency
from infermeter.store.db import Store

OUTPUTS = (1, 4, 8)
G_S = 0.002  # s per output token after the first


def points(path: Path, pe: dict[int, float], energy: dict[int, float] | None = None) -> Path:
    """A points file: runtime_s = pe[p] + G_S (o - 1) at the prompt sizes of `pe`, and with
    `energy`, energy_j = energy[p] + 0.2 J (o - 1)."""
    rows = [
        {"prompt_tokens": p, "output_tokens": o, "runtime_s": pe[p] + G_S * (o - 1)}
        | ({"energy_j": energy[p] + 0.2 * (o - 1)} if energy else {})
        for p in pe
        for o in OUTPUTS
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def fitted(path: Path) -> Path:
    """`infermeter fit --points PATH --output PATH.json`: the runtime model's file."""
    model = path.with_suffix(".json")
    result = invoke("fit", "--points", path, "--output", model)
    assert result.exit_code == 0, result.output
    return model


def warned(stderr: str) -> list[str]:
    """The warnings of `stderr` (one line each: piped, the console does not wrap them)."""
    return said(stderr, "warning")


def estimate(model: Path, prompts: str, outputs: str = "2", *more: object):
    result = invoke("estimate", "--profile", model, "--prompt-tokens", prompts,
                    "--output-tokens", outputs, "--output", model.with_suffix(".out.csv"),
                    *more)  # fmt: skip
    assert result.exit_code == 0, result.output
    return result, pd.read_csv(model.with_suffix(".out.csv"))


# ---- 1: one prompt size profiled -------------------------------------------------------------


def test_one_prompt_size_prices_every_prompt_at_its_pe_and_says_so(tmp_path: Path) -> None:
    model = fitted(points(tmp_path / "one.csv", {1: 0.01}))
    result, priced = estimate(model, "1,1000")
    assert priced.runtime_s.nunique() == 1  # what the note says: p = 1000 priced at PE(1)
    (note,) = warned(result.stderr)
    assert note == (
        "1 of 2 queries has a prompt of another size (1000 tokens asked): PE was measured at "
        "one prompt size only (1 token), so every prompt is priced at its PE (0.01 s); "
        "profile two or more prompt sizes (--prompt-sizes) to price longer prompts"
    )
    alone, _ = estimate(model, "1000")
    assert warned(alone.stderr)[0].startswith("the query has a prompt of another size")
    eight = fitted(points(tmp_path / "eight.csv", {8: 0.014}))
    shorter, _ = estimate(eight, "1")
    assert warned(shorter.stderr)[0].startswith(
        "the query has a prompt of another size (1 token asked): PE was measured at one prompt "
        "size only (8 tokens)"
    )
    assert warned(shorter.stderr)[0].endswith("to price shorter prompts")


# ---- 2, 3: below the smallest and past the largest, said how --------------------------------


def test_estimate_says_how_prompts_outside_the_profile_are_priced(tmp_path: Path) -> None:
    model = fitted(points(tmp_path / "two.csv", {8: 0.014, 16: 0.018}))  # 0.5 ms per token
    result, priced = estimate(model, "1,12,100")
    below, past = warned(result.stderr)
    assert below == (
        "1 of 3 queries has a prompt shorter than the profile's smallest (8 tokens, down to 1 "
        "asked): its prefill is extrapolated down the first segment's slope, 0.0005 s per token "
        "from the PE of 8 tokens (0.014 s); profile smaller prompt sizes (--prompt-sizes) to "
        "price them"
    )
    assert past == (
        "1 of 3 queries has a prompt longer than the profile's largest (16 tokens, up to 100 "
        "asked): its prefill is extrapolated along the last segment's slope, 0.0005 s per token "
        "from the PE of 16 tokens (0.018 s); profile larger prompt sizes (--max-context, "
        "--prompt-sizes) to price them"
    )
    runtime = dict(zip(priced.prompt_tokens, priced.runtime_s, strict=True))
    assert runtime[1] == pytest.approx(0.014 - 7 * 0.0005 + G_S)  # as the warnings say
    assert runtime[100] == pytest.approx(0.018 + 84 * 0.0005 + G_S)


def test_a_pe_extrapolated_below_zero_is_said_to_be_clipped(tmp_path: Path) -> None:
    """PE falls to 0 s before 1 token (-2.5 ms there); the decode steps keep the query > 0."""
    model = fitted(points(tmp_path / "steep.csv", {16: 0.01, 64: 0.05}))
    result, priced = estimate(model, "1,2", "8")
    (below,) = warned(result.stderr)
    assert "both queries have prompts shorter than the profile's smallest (16 tokens" in below
    assert "their prefill is extrapolated down the first segment's slope" in below
    assert "; both reach 0 s there and are priced at a PE of 0 (clipped);" in below
    assert priced.runtime_s.tolist() == pytest.approx([7 * G_S, 7 * G_S])
    some, _ = estimate(model, "1,12", "8")  # PE(12) is still 6.7 ms
    assert (
        "; 1 of them reaches 0 s there and is priced at a PE of 0 (clipped);"
        in warned(some.stderr)[0]
    )


def test_compare_and_tradeoffs_say_it_of_prompts_below_the_profile(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    pd.DataFrame({"prompt_tokens": [1, 12], "output_tokens": [2, 2]}).to_csv(short, index=False)
    told = "1 of 2 queries has a prompt shorter than the profile's smallest (8 tokens, down to 1"
    fast = fitted(points(tmp_path / "fast.csv", {8: 0.014, 16: 0.018}))
    slow = fitted(points(tmp_path / "slow.csv", {8: 0.028, 16: 0.036}))
    compared = invoke("compare", "--profile", fast, "--profile", slow, "--queries", short,
                      "--allow-different-models")  # fmt: skip
    assert compared.exit_code == 0, compared.output
    fast_said, slow_said = warned(compared.stderr)  # each its own slope
    assert fast_said.startswith(f"fast: {told}") and slow_said.startswith(f"slow: {told}")
    assert "0.001 s per token from the PE of 8 tokens (0.028 s)" in slow_said
    store, caps = tmp_path / "s.sqlite", tmp_path / "caps.csv"
    with Store(store) as db:
        profile_run(db, "tiny-llama", {8: 0.014, 16: 0.018})
    pd.DataFrame([("tiny-llama", "s1", 0.8)], columns=["model", "scenario", "accuracy"]).to_csv(
        caps, index=False
    )
    traded = invoke("tradeoffs", "--store", store, "--capabilities", caps, "--queries",
                    f"s1={short}")  # fmt: skip
    assert traded.exit_code == 0, traded.output
    assert any(w.startswith(f"scenario s1: {told}") for w in warned(traded.stderr))


# ---- 4: counts and the refusal of a price of 0 ----------------------------------------------


def test_counts_agree_and_a_refusal_prints_the_value_it_refuses(tmp_path: Path) -> None:
    model = fitted(points(tmp_path / "two.csv", {8: 0.014, 16: 0.018}))
    result, _ = estimate(model, "100", "20")
    prompt, output = warned(result.stderr)
    assert prompt.startswith("the query has a prompt longer than the profile's largest (16 ")
    assert "its prefill is extrapolated" in prompt and "their" not in prompt
    assert output == (
        "the query asks for more output tokens than the profile's longest (8 tokens, up to 20 "
        "asked): its decoding is extrapolated"
    )
    steep = fitted(points(tmp_path / "steep.csv", {16: 0.01, 64: 0.05}))
    assert_one_line(
        invoke("estimate", "--profile", steep, "--prompt-tokens", "20,1", "--output-tokens", "1"),
        "query 2 (prompt_tokens 1, output_tokens 1) extrapolates to a runtime_s of -0.0025 s,",
        "the profile covers prompts of 16-64 tokens and outputs up to 8 tokens",
    )
    # Runtime stays above 0 below the profile; the measured energy falls to -0.25 J at 1 token.
    both = fitted(points(tmp_path / "e.csv", {16: 0.01, 64: 0.011}, energy={16: 1.0, 64: 5.0}))
    energy = both.with_name(f"{both.stem}.energy.json")
    assert_one_line(
        estimate_args(both, "--energy-profile", energy),
        "query 1 (prompt_tokens 1, output_tokens 1) extrapolates to an energy_measured_j of "
        "-0.25 J,",
    )
    # A model file (as a fit might write one from noisy points) whose only PE is below 0.
    one = CostModel([1], [-0.01], 0.001, fit={"max_output_tokens": 8}).save(tmp_path / "1.json")
    message = assert_one_line(
        estimate_args(one),
        "extrapolates to a runtime_s of -0.01 s",
        "the profile covers prompts of 1 token and outputs up to 8 tokens",
    )
    assert "1 tokens" not in message


def estimate_args(model: Path, *more: object):
    """`infermeter estimate --profile MODEL` of one query of 1 prompt and 1 output token."""
    return invoke("estimate", "--profile", model, "--prompt-tokens", "1", "--output-tokens", "1",
                  *more)  # fmt: skip


# ---- 5: a device that is none ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["profile", "energy"])
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_a_device_that_is_none_is_refused(tmp_path: Path, verb: str, device: str) -> None:
    store = tmp_path / "s.sqlite"
    tiny = (["--prompt-sizes", "1,2", "--output-sizes", "1,2", "--trials", "1", "--validate", "0"]
            if verb == "profile" else ["--prompts", "1", "--batch-sizes", "1",
                                       "--max-lengths", "2"])  # fmt: skip
    assert_one_line(
        invoke(verb, "tiny-llama", "--device", device, *tiny, "--store", store),
        f"--device '{device}' is not a device infermeter runs on",
        "use auto, cuda, cuda:N (N = 0, 1, ...) or cpu",
    )
    assert not store.exists()


@pytest.mark.parametrize("device", ["gpu9", "cuda:x"])
def test_serve_refuses_a_device_that_is_none_before_taking_the_port(device: str) -> None:
    """`serve --device gpu9` was torch's "Invalid device string" traceback (a fresh-eyes check
    found it); now the line the other verbs give, before the port is bound."""
    assert_one_line(
        invoke("serve", "tiny-llama", "--device", device, "--port", "1"),
        f"--device '{device}' is not a device infermeter runs on",
    )


# ---- 6: flags that contradict each other ----------------------------------------------------


def test_prompt_sizes_past_max_context_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    asked = invoke("profile", "tiny-llama", "--device", "cpu", "--max-context", "64",
                   "--prompt-sizes", "8,128", "--output-sizes", "1,2", "--trials", "1",
                   "--validate", "0", "--store", store)  # fmt: skip
    assert_one_line(
        asked, "--prompt-sizes 128 is past --max-context 64; drop it or raise --max-context"
    )
    assert not store.exists()


def test_estimate_refuses_queries_and_sizes_together(tmp_path: Path) -> None:
    model = fitted(points(tmp_path / "two.csv", {8: 0.014, 16: 0.018}))
    queries = tmp_path / "q.csv"
    pd.DataFrame({"prompt_tokens": [8], "output_tokens": [2]}).to_csv(queries, index=False)
    args = ["estimate", "--profile", model, "--queries", queries]
    assert_one_line(
        invoke(*args, "--prompt-tokens", "12", "--output-tokens", "4"),
        f"give --queries {queries} or --prompt-tokens and --output-tokens, not both",
    )
    assert_one_line(invoke(*args, "--output-tokens", "4"), "or --output-tokens, not both")
    assert invoke(*args).exit_code == 0


def test_fit_refuses_a_store_with_a_points_file(tmp_path: Path) -> None:
    pts = points(tmp_path / "two.csv", {8: 0.014, 16: 0.018})
    store = tmp_path / "s.sqlite"
    assert_one_line(
        invoke("fit", "--points", pts, "--store", store),
        f"give --store {store} or --points {pts}, not both",
        "drop --store (keep the fit with --output FILE) or --points",
    )
    assert not store.exists()


# ---- 7: tradeoffs on a store with two runs of one model -------------------------------------


def test_tradeoffs_names_the_run_it_uses_and_those_left_out(tmp_path: Path) -> None:
    target = tmp_path / "all.sqlite"
    merge_lines(target, profiled(tmp_path / "a.sqlite", 1.0), profiled(tmp_path / "b.sqlite", 1.5))
    caps, queries = tmp_path / "caps.csv", tmp_path / "q.csv"
    pd.DataFrame([("tiny-llama", "s1", 0.8)], columns=["model", "scenario", "accuracy"]).to_csv(
        caps, index=False
    )
    pd.DataFrame({"prompt_tokens": [16], "output_tokens": [8]}).to_csv(queries, index=False)
    args = ["tradeoffs", "--capabilities", caps, "--queries", f"s1={queries}", "--output"]
    traded = invoke(*args, tmp_path / "t.csv", "--store", target)
    assert traded.exit_code == 0, traded.output
    (note,) = [n for n in said(traded.stderr, "note") if "left out" in n]
    assert note.startswith("tiny-llama: priced with run all.sqlite#2 (engine on cpu: test, ")
    assert "left out: all.sqlite#1 (engine on cpu: test, " in note
    assert "`infermeter fit RUN --store STORE --output FILE.json` and pass --profile" in note
    assert pd.read_csv(tmp_path / "t.csv").source.tolist() == ["all.sqlite#2"]
    # What the note says to do prices the run left out, and leaves nothing else out.
    first = tmp_path / "first.json"
    assert invoke("fit", "1", "--store", target, "--output", first).exit_code == 0
    picked = invoke(*args, tmp_path / "p.csv", "--store", target, "--profile", first)
    assert picked.exit_code == 0, picked.output
    assert "left out" not in picked.stderr
    assert "all.sqlite#" not in picked.stderr  # no note on runs the file stood over
    assert pd.read_csv(tmp_path / "p.csv").source.tolist() == ["first.json:tiny-llama"]
    # Two files of one model: the first prices it, and the second is named as left out.
    second = tmp_path / "second.json"
    assert invoke("fit", "2", "--store", target, "--output", second).exit_code == 0
    both = invoke(*args, tmp_path / "b.csv", "--profile", first, "--profile", second)
    assert both.exit_code == 0, both.output
    assert "second.json:tiny-llama left out: first.json:tiny-llama, given first, prices " \
        "tiny-llama" in said(both.stderr, "note")  # fmt: skip
    (priced,) = [n for n in said(both.stderr, "note") if "priced as" in n]
    assert priced.startswith("first.json:tiny-llama: priced as 1 × a100")  # no accelerator named


# ---- 7: an energy profile that is not the runtime profile's pair ---------------------------


def _fitted(path: Path, model: str, quantity: str, dtype: str) -> Path:
    """A fitted model of a stored run of `model` on this CPU in `dtype`, as `fit` writes one."""
    from infermeter.spec.hardware import Stack, get_accelerator

    stack = Stack("engine", get_accelerator("cpu"), dtype=dtype).to_dict()
    scale = 300.0 if quantity == "energy_j" else 1.0  # joules: 300 W for the same seconds
    CostModel([8, 64], [0.01 * scale, 0.02 * scale], G_S * scale, quantity=quantity, model=model,
              stack=stack, provenance={"run_id": 1}).save(path)  # fmt: skip
    return path


def test_an_energy_profile_of_another_model_or_stack_is_said(tmp_path: Path) -> None:
    """`estimate --profile A --energy-profile B` priced B's joules beside A's seconds without a
    word when B was another model's or another stack's (a fresh-eyes check found it)."""
    runtime = _fitted(tmp_path / "r.json", "tiny-llama", "runtime_s", "float32")
    pair = _fitted(tmp_path / "r.energy.json", "tiny-llama", "energy_j", "float32")
    other_model = _fitted(tmp_path / "m.energy.json", "gpt2", "energy_j", "float32")
    other_stack = _fitted(tmp_path / "s.energy.json", "tiny-llama", "energy_j", "bfloat16")

    def warnings_with(energy: Path) -> list[str]:
        result = invoke("estimate", "--profile", runtime, "--energy-profile", energy,
                        "--prompt-tokens", "16", "--output-tokens", "4")  # fmt: skip
        assert result.exit_code == 0, result.output
        return warned(result.stderr)

    assert warnings_with(pair) == []
    (line,) = warnings_with(other_model)
    assert line.startswith("the energy profile is of gpt2, the runtime profile of tiny-llama:")
    assert "pass an energy profile of tiny-llama" in line
    (line,) = warnings_with(other_stack)
    assert "measured on engine, 1 × cpu, bfloat16, the runtime profile on engine, 1 × cpu, " \
        "float32" in line  # fmt: skip


# ---- 8: compare and tradeoffs say what their pricing assumed --------------------------------


def test_compare_and_tradeoffs_say_what_their_pricing_assumed(tmp_path: Path) -> None:
    """A fresh-eyes check compared a points-file fit (no accelerator: priced as the paper's
    A100) with the same CPU measurements priced as a nominal CPU socket, and got a speedup and
    a "faster but dearer" verdict with no word on either assumption; `estimate` says both."""
    bare = fitted(points(tmp_path / "bare.csv", {8: 0.014, 16: 0.018}))  # names no accelerator
    cpu = _fitted(tmp_path / "cpu.json", "tiny-llama", "runtime_s", "float32")
    compared = invoke("compare", "--profile", bare, "--profile", cpu, "--allow-different-models")
    assert compared.exit_code == 0, compared.output
    notes = said(compared.stderr, "note")
    (a100,) = [n for n in notes if n.startswith("bare: priced as 1 × a100")]
    assert "the profile names no accelerator, so the paper's reference is priced" in a100
    (socket,) = [n for n in notes if n.startswith("cpu: priced as 1 × cpu (nominal:")]
    assert "are a nominal part's, not the machine's that ran it" in socket
    assert "`infermeter estimate` prices it with your own figures" in socket

    caps, queries = tmp_path / "caps.csv", tmp_path / "q.csv"
    pd.DataFrame([("tiny-llama", "s1", 0.8)], columns=["model", "scenario", "accuracy"]).to_csv(
        caps, index=False
    )
    pd.DataFrame({"prompt_tokens": [16], "output_tokens": [8]}).to_csv(queries, index=False)
    traded = invoke("tradeoffs", "--capabilities", caps, "--queries", f"s1={queries}",
                    "--profile", cpu)  # fmt: skip
    assert traded.exit_code == 0, traded.output
    (note,) = [n for n in said(traded.stderr, "note") if "priced as" in n]
    assert note.startswith("cpu.json:tiny-llama: priced as 1 × cpu (nominal:")


def test_estimate_refuses_a_model_its_profile_is_not_and_a_store_as_a_profile(
    tmp_path: Path,
) -> None:
    """--model picks an entry of a HELM file; with a fit of another model it was ignored and
    the fit's model priced. A store passed as --profile was called 'not UTF-8 text'."""
    cpu = _fitted(tmp_path / "cpu.json", "tiny-llama", "runtime_s", "float32")
    args = ["estimate", "--profile", cpu, "--prompt-tokens", "16", "--output-tokens", "4"]
    assert invoke(*args, "--model", "tiny_llama").exit_code == 0  # the same model, spelt so
    assert_one_line(
        invoke(*args, "--model", "gpt2"),
        f"--model gpt2: {cpu} is a fit of tiny-llama, not gpt2",
        "pass a fit of gpt2 as --profile",
    )
    store = tmp_path / "s.sqlite"
    Store(store).close()
    assert_one_line(
        invoke("estimate", "--profile", store, "--prompt-tokens", "16", "--output-tokens", "4"),
        f"profile {store} is an infermeter store (SQLite), not a fitted model",
        f"`infermeter fit RUN --store {store} --output model.json`",
    )
    assert_one_line(invoke(*args, "--output", tmp_path / "x.xlsx"), "cannot tell the format of")
    assert_one_line(
        invoke(*args, "--energy-profile", store),
        f"--energy-profile {store} is an infermeter store (SQLite), not a fitted model",
    )
    # A HELM file's entry is found however its name is spelt, as a fit's model is.
    helm = save_helm_efficiency({"tiny-llama": load_profile(cpu)}, tmp_path / "h.json")
    spelt = invoke("estimate", "--profile", helm, "--model", "tiny_llama",
                   "--prompt-tokens", "16", "--output-tokens", "4")  # fmt: skip
    assert spelt.exit_code == 0, spelt.output
