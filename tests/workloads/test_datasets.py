"""Dataset workloads and tokenizers on the real files in ../shared/data (and the bundled copies)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.errors import UserError
from infermeter.spec.catalog import get_spec
from infermeter.workloads.datasets import (
    ALPACA_NO_INPUT_TEMPLATE,
    Dataset,
    load_dataset,
    load_workload,
    read_dataset,
    render,
    sample_workload,
)
from infermeter.workloads.tokenizer import (
    ByteTokenizer,
    count_words,
    load_tokenizer,
    prompt_ids,
    tokenizer_for,
)
from paths import SHARED_DATA

SHARED = SHARED_DATA
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not beside the repo")


@needs_shared
def test_gsm8k_and_alpaca_seed_tasks_from_shared_data() -> None:
    gsm = load_dataset(SHARED / "gsm8k_test.jsonl")
    assert (gsm.kind, len(gsm)) == ("gsm8k", 1319)
    assert gsm.records[0]["question"].startswith("Janet")
    seeds = load_dataset(SHARED / "alpaca_seed_tasks.jsonl")
    assert (seeds.kind, len(seeds)) == ("alpaca", 175)  # one prompt per instance
    assert set(seeds.records[0]) == {"instruction", "input", "output"}


@needs_shared
def test_bundled_copies_match_shared_data() -> None:
    combined = load_dataset("gsm8k")
    train = read_dataset([SHARED / "gsm8k_train.jsonl"])
    test = read_dataset([SHARED / "gsm8k_test.jsonl"])
    assert combined.records == train.records + test.records
    assert len(combined) == 8792
    assert (
        load_dataset("alpaca-seed").records
        == load_dataset(SHARED / "alpaca_seed_tasks.jsonl").records
    )


def test_alpaca_json_list_and_gzipped_jsonl(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    ]
    listed = tmp_path / "alpaca_data.json"
    listed.write_text(json.dumps(rows))
    lines = tmp_path / "more.jsonl.gz"
    lines.write_bytes(gzip.compress("\n".join(map(json.dumps, rows)).encode()))
    for path in (listed, lines):
        data = load_dataset(path)
        assert data.kind == "alpaca" and [r["output"] for r in data.records] == ["5", "Blue"]
    # The two Alpaca templates: with an input section and without.
    with_input, without = (render(r, "alpaca", None) for r in load_dataset(listed).records)
    assert "### Input:\n2 and 3\n\n### Response:" in with_input
    assert without == ALPACA_NO_INPUT_TEMPLATE.format(instruction="Name a colour.")


def test_named_alpaca_prefers_the_52k_file_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = load_dataset("alpaca")
    assert len(fallback) == 175 and "seed tasks" in (fallback.note or "")
    (tmp_path / "alpaca_data.json").write_text(
        json.dumps([{"instruction": f"Task {i}", "input": "", "output": ""} for i in range(9)])
    )
    monkeypatch.setenv("INFERMETER_DATA", str(tmp_path))
    full = load_dataset("alpaca")
    assert len(full) == 9 and full.note is None


def test_bad_files_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_dataset(tmp_path / "missing.jsonl")
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "hi"}\n')
    with pytest.raises(UserError, match=r"instruction.*question.*prompt"):
        load_dataset(odd)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1+1?"}\n{"question": \n')
    with pytest.raises(UserError, match=r"broken.jsonl:2"):
        load_dataset(broken)
    partial = tmp_path / "partial.jsonl"
    partial.write_text('{"question": "1+1?"}\n{"answer": "2"}\n')
    with pytest.raises(UserError, match="record 2 has no `question`"):
        load_dataset(partial)


def test_sampling_is_seeded_and_replaces_only_when_short() -> None:
    gsm = load_dataset("gsm8k-test")
    a, b = (sample_workload(gsm, 100, seed=3) for _ in range(2))
    assert a.prompts == b.prompts and a.digest == b.digest
    assert len(set(a.indices)) == 100 and not a.with_replacement and not a.notes
    assert sample_workload(gsm, 100, seed=4).indices != a.indices
    many = sample_workload(gsm, 2000, seed=3)
    assert many.with_replacement and "with replacement" in many.notes[-1]
    assert many.prompts[0] == f"Question: {gsm.records[many.indices[0]]['question']}\nAnswer:"


def test_templates(tmp_path: Path) -> None:
    gsm = load_dataset("gsm8k-test")
    custom = sample_workload(gsm, 3, seed=0, template="Q: {question}\\nA:")
    assert custom.prompts[0].startswith("Q: ") and custom.prompts[0].endswith("\nA:")
    file = tmp_path / "t.txt"
    file.write_text("Solve: {question}")
    assert sample_workload(gsm, 1, template=f"@{file}").prompts[0].startswith("Solve: ")
    with pytest.raises(UserError, match=r"\{instruction\}.*fields: \{question\}"):
        sample_workload(gsm, 1, template="{instruction}")
    with pytest.raises(UserError, match="at least 1"):
        sample_workload(gsm, 0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1), size=st.integers(1, 30))
def test_sampling_properties(n: int, seed: int, size: int) -> None:
    data = Dataset("toy", "gsm8k", (), tuple({"question": f"q{i}"} for i in range(size)))
    workload = sample_workload(data, n, seed)
    assert len(workload) == n and all(0 <= i < size for i in workload.indices)
    assert workload.with_replacement == (n > size)
    if n <= size:
        assert len(set(workload.indices)) == n
    assert workload.prompts == sample_workload(data, n, seed).prompts


# ---- tokenizers -------------------------------------------------------------------------------


def test_llama_tokenizer_counts_real_text() -> None:
    tok = load_tokenizer("llama")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.encode("Hello world") == [15043, 3186]
    assert prompt_ids(tok, "Hello world") == [1, 15043, 3186]
    text = "Janet’s ducks lay 16 eggs per day."
    assert len(tok.encode(text)) == 14 and tok.decode(tok.encode(text)) == text
    prompts = load_workload("gsm8k", 200, seed=0).prompts
    ids = [prompt_ids(tok, p) for p in prompts]
    assert all(0 <= i < 32000 for row in ids for i in row)
    assert 40 < sum(map(len, ids)) / len(ids) < 120  # GSM8K questions: ~70 LLaMA tokens


@needs_shared
def test_named_llama_tokenizer_is_the_shared_one() -> None:
    shared = load_tokenizer(SHARED / "llama_tokenizer.model")
    text = load_dataset("gsm8k-test").records[5]["question"]
    assert shared.encode(text) == load_tokenizer("llama").encode(text)


def test_tokenizer_for_picks_llama_or_bytes_with_a_note() -> None:
    tok, note = tokenizer_for(get_spec("llama-7b"))
    assert tok.name.startswith("sentencepiece") and note is None
    tiny, note = tokenizer_for(get_spec("tiny-llama"))  # a 256-token vocabulary
    assert isinstance(tiny, ByteTokenizer) and note and "bytes" in note
    assert max(tiny.encode("héllo wörld")) < 256 and tiny.eos_id is None
    gpt2, _ = tokenizer_for(get_spec("gpt2"))
    assert (gpt2.bos_id, gpt2.eos_id) == (1, 2)
    with pytest.raises(UserError, match="more than tiny-llama's vocabulary"):
        tokenizer_for(get_spec("tiny-llama"), "llama")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40), vocab=st.integers(2, 70000))
def test_byte_tokenizer_ids_fit_the_vocabulary(text: str, vocab: int) -> None:
    tok = ByteTokenizer(vocab)
    ids = tok.encode(text)
    assert all(0 <= i < vocab for i in ids)
    if vocab >= 256:
        assert tok.decode(ids) == text


@given(words=st.lists(st.text(st.characters(blacklist_characters=" "), min_size=1), max_size=12))
def test_words_are_the_output_split_on_spaces(words: list[str]) -> None:
    assert count_words(" ".join(words)) == len(words)
    assert count_words("  two   words ") == 2
