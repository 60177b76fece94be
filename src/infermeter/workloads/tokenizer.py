"""Tokenizers: counting prompt and output tokens offline, exact-size prompts, detokenizing.

One small interface (`Tokenizer`), three kinds: a SentencePiece `.model` file (the LLaMA
tokenizer; a copy ships with infermeter, see infermeter.workloads.datasets.data_dirs), a Hugging
Face
`tokenizer.json`, and UTF-8 bytes, which need no file. `encode` never adds special tokens;
`prompt_ids` adds the BOS a model is fed, and servers add their own (api/prompts.py learns
that constant from the server's usage counts).

LLaMA specs (the 32,000-token LLaMA vocabulary) use the LLaMA tokenizer; other vocabularies
fall back to bytes, with a note: prompt lengths are then bytes, not the model's own tokens.

`word_ids()` lists the ids that are one whole lowercase word (with its leading space) and
encode back to exactly that one id: concatenating such words gives a text whose token count is
known before any server sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec
from infermeter.workloads.datasets import find_data_file, read_bytes

LLAMA_TOKENIZER = "llama_tokenizer.model"
LLAMA_VOCAB = 32000
_WORD = re.compile(r"[a-z]{2,12}")


class Tokenizer(Protocol):
    """What counts tokens offline: encode, decode and single-token words, with the vocabulary
    size and bos/eos ids (None: none)."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without special tokens."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; ids outside the vocabulary wrap around (random-weight models)."""

    def word_ids(self) -> list[int]:
        """Ids of single-token lowercase words that re-encode to themselves."""


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
        """Ids of `text` by the SentencePiece model, without bos/eos."""
        return [int(i) for i in self._sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, wrapped into the vocabulary."""
        return str(self._sp.decode([int(i) % self.vocab_size for i in ids]))

    @cached_property
    def _words(self) -> list[int]:
        words = []
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            word = piece[1:]
            if piece.startswith("▁") and _WORD.fullmatch(word) and self._sp.encode(word) == [i]:
                words.append(i)
        return words

    def word_ids(self) -> list[int]:
        """Ids of single-token lowercase words that re-encode to themselves."""
        return self._words


class HFTokenizer:
    """A Hugging Face fast tokenizer from a local tokenizer.json (or the folder holding one)."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError as error:
            raise UserError(
                "reading tokenizer.json needs the tokenizers package: pip install tokenizers"
            ) from error
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self._tok = _Tokenizer.from_file(str(file))
        except Exception as error:  # tokenizers raises a bare Exception on bad files
            raise UserError(f"{file} is not a Hugging Face tokenizer.json: {error}") from error
        self.path = file
        self.name = f"hf:{file.parent.name or file.name}"
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        config = _read_json(file.parent / "tokenizer_config.json")
        self.bos_id = self._special_id(config.get("bos_token"))
        self.eos_id = self._special_id(config.get("eos_token"))

    def _special_id(self, token: object) -> int | None:
        if isinstance(token, dict):  # older configs store AddedToken dicts
            token = token.get("content")
        if not isinstance(token, str):
            return None
        found = self._tok.token_to_id(token)
        return int(found) if found is not None else None

    def encode(self, text: str) -> list[int]:
        """Ids of `text` by tokenizer.json, without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, wrapped into the vocabulary."""
        return str(self._tok.decode([int(i) % self.vocab_size for i in ids]))

    @cached_property
    def _words(self) -> list[int]:
        words = []
        for i in range(self.vocab_size):
            word = self._tok.decode([i])
            if word.startswith(" "):
                word = word[1:]
            if _WORD.fullmatch(word) and [i] in (self.encode(" " + word), self.encode(word)):
                words.append(i)
        return words

    def word_ids(self) -> list[int]:
        """Ids of single-token lowercase words that re-encode to themselves."""
        return self._words


class ByteTokenizer:
    """UTF-8 bytes as ids: 3 + byte with bos 1 and eos 2 where the vocabulary has room (>= 259
    ids), else the byte itself (modulo the vocabulary) and no special tokens."""

    def __init__(self, vocab_size: int = 259) -> None:
        if vocab_size < 2:
            raise UserError(f"a byte tokenizer needs a vocabulary of at least 2, got {vocab_size}")
        self.offset = 3 if vocab_size >= 259 else 0
        self.vocab_size = min(vocab_size, 256 + self.offset)
        self.bos_id: int | None = 1 if self.offset else None
        self.eos_id: int | None = 2 if self.offset else None
        self.name = "bytes" if vocab_size >= 256 else f"bytes mod {vocab_size}"

    def encode(self, text: str) -> list[int]:
        """One id per UTF-8 byte: byte + offset, modulo the vocabulary."""
        return [(b + self.offset) % self.vocab_size for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        """The UTF-8 text of `ids` (special ids dropped, bad bytes replaced)."""
        data = bytes((int(i) - self.offset) % 256 for i in ids if int(i) >= self.offset)
        return data.decode("utf-8", errors="replace")

    def word_ids(self) -> list[int]:
        """The ids of the letters a-z."""
        return sorted({self.encode(c)[0] for c in "abcdefghijklmnopqrstuvwxyz"})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_llama_vocab(spec: ModelSpec) -> bool:
    """Whether the spec is a LLaMA with its 32,000-token SentencePiece vocabulary (the bundled
    tokenizer fits)."""
    return spec.family == "llama" and spec.vocab_size == LLAMA_VOCAB


def load_tokenizer(source: str | Path) -> Tokenizer:
    """'bytes', 'llama' (the LLaMA tokenizer), a SentencePiece .model (or .model.gz), a
    tokenizer.json, or a folder holding either."""
    if str(source) == "bytes":
        return ByteTokenizer()
    if str(source) == "llama":
        found = find_data_file(LLAMA_TOKENIZER)
        if found is None:
            raise UserError(
                f"{LLAMA_TOKENIZER} not found beside the datasets; pass --tokenizer FILE"
            )
        return SentencePieceTokenizer(found)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path)
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer(path / "tokenizer.model")
        raise UserError(
            f"{path} holds neither tokenizer.json nor tokenizer.model; pass one of those files"
        )
    if not path.is_file():
        raise UserError(
            f"tokenizer {source!r} not found; pass a tokenizer.json, a SentencePiece .model "
            "file, a folder holding one, 'llama' or 'bytes'"
        )
    if path.suffix == ".json":
        return HFTokenizer(path)
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
