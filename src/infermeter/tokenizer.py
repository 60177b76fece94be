"""Tokenizers for dataset prompts and output counts: LLaMA's SentencePiece model, or bytes.

LLaMA specs (32,000-token LLaMA vocabulary) use the LLaMA tokenizer, found beside the datasets
(see infermeter.datasets.data_dirs; a copy ships with infermeter). Any SentencePiece .model can
be named instead. Other vocabularies fall back to UTF-8 bytes, with a note: prompt lengths are
then bytes, not the model's own tokens. Every id a tokenizer gives is below the spec's
vocabulary size, so the engine can embed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from infermeter.datasets import find_data_file, read_bytes
from infermeter.errors import UserError
from infermeter.spec import ModelSpec

LLAMA_TOKENIZER = "llama_tokenizer.model"
LLAMA_VOCAB = 32000


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without special tokens."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens dropped)."""


class SentencePieceTokenizer:
    """A SentencePiece model file (.model, or .model.gz), e.g. the LLaMA tokenizer."""

    def __init__(self, path: str | Path) -> None:
        try:
            import sentencepiece as spm
        except ImportError as error:
            raise UserError(
                "the LLaMA tokenizer needs the sentencepiece package: pip install sentencepiece"
            ) from error
        self.path = Path(path)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=read_bytes(self.path))
        except RuntimeError as error:
            raise UserError(f"{path} is not a SentencePiece model file: {error}") from error
        self.name = f"sentencepiece:{self.path.name.removesuffix('.gz')}"
        self.vocab_size = int(self._sp.vocab_size())
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.decode([int(i) for i in ids]))


class ByteTokenizer:
    """UTF-8 bytes as ids: 3 + byte with bos 1 and eos 2 where the vocabulary has room (>= 259
    ids), else the byte itself (modulo the vocabulary) and no special tokens."""

    def __init__(self, vocab_size: int = 259) -> None:
        if vocab_size < 2:
            raise UserError(f"a byte tokenizer needs a vocabulary of at least 2, got {vocab_size}")
        self.model_vocab = vocab_size
        self.offset = 3 if vocab_size >= 259 else 0
        self.vocab_size = min(vocab_size, 256 + self.offset)
        self.bos_id: int | None = 1 if self.offset else None
        self.eos_id: int | None = 2 if self.offset else None
        self.name = "bytes" if vocab_size >= 256 else f"bytes mod {vocab_size}"

    def encode(self, text: str) -> list[int]:
        return [(b + self.offset) % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes((int(i) - self.offset) % 256 for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")


def is_llama_vocab(spec: ModelSpec) -> bool:
    return spec.family == "llama" and spec.vocab_size == LLAMA_VOCAB


def load_tokenizer(source: str | Path) -> Tokenizer:
    """'bytes', 'llama' (the LLaMA tokenizer), or a SentencePiece .model file."""
    if str(source) == "bytes":
        return ByteTokenizer()
    if str(source) == "llama":
        path = find_data_file(LLAMA_TOKENIZER)
        if path is None:
            raise UserError(
                f"{LLAMA_TOKENIZER} not found beside the datasets; pass --tokenizer FILE"
            )
        return SentencePieceTokenizer(path)
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"tokenizer {source!r} not found; pass a SentencePiece .model or 'bytes'")
    return SentencePieceTokenizer(path)


def tokenizer_for(
    spec: ModelSpec, source: str | Path | None = None
) -> tuple[Tokenizer, str | None]:
    """The tokenizer for `spec`'s prompts and outputs, and a note when it is a stand-in."""
    if source is not None:
        tok = load_tokenizer(source)
        if tok.vocab_size > spec.vocab_size:
            raise UserError(
                f"tokenizer {tok.name} has {tok.vocab_size} ids, more than {spec.name}'s "
                f"vocabulary of {spec.vocab_size}; pass the model's own tokenizer"
            )
        return (tok, None) if not isinstance(tok, ByteTokenizer) else _bytes(spec)
    if is_llama_vocab(spec) and find_data_file(LLAMA_TOKENIZER) is not None:
        return load_tokenizer("llama"), None
    return _bytes(spec)


def _bytes(spec: ModelSpec) -> tuple[Tokenizer, str]:
    tok = ByteTokenizer(spec.vocab_size)
    return tok, (
        f"{spec.name}: no tokenizer for its {spec.vocab_size}-token vocabulary here, so prompts "
        "are UTF-8 bytes and token counts are the model's generated ids (pass --tokenizer "
        "FILE.model for its own)"
    )


def prompt_ids(tok: Tokenizer, text: str) -> list[int]:
    """What the model is fed: BOS (where the tokenizer has one) and the text's ids."""
    ids = tok.encode(text)
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    return ids or [0]


def count_words(text: str) -> int:
    """Words as the paper counts them: the output split on spaces (empty pieces dropped)."""
    return sum(1 for word in text.split(" ") if word)
