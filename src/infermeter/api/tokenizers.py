"""Tokenizers for counting prompt tokens offline and for detokenizing served output.

Three kinds, one small interface (`Tokenizer`): a SentencePiece `.model` file (the LLaMA
tokenizer), a Hugging Face `tokenizer.json` (any fast tokenizer saved locally), and a byte-level
fallback that needs no file. `encode` never adds special tokens; servers add their own (a BOS,
a chat template), and prompts.py learns that constant from the server's usage counts.

`word_ids()` lists the ids that are one whole lowercase word (with its leading space) and encode
back to exactly that one id: concatenating such words gives a text whose token count is known
before any server sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

from infermeter.errors import UserError

_WORD = re.compile(r"[a-z]{2,12}")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; ids outside the vocabulary wrap around (random-weight models)."""

    def word_ids(self) -> list[int]:
        """Ids of single-token lowercase words that re-encode to themselves."""


class SentencePieceTokenizer:
    """A SentencePiece model file, e.g. the LLaMA tokenizer (32,000 pieces)."""

    def __init__(self, path: str | Path) -> None:
        try:
            import sentencepiece as spm
        except ImportError as error:
            raise UserError(
                "reading a SentencePiece tokenizer needs the sentencepiece package: "
                "pip install sentencepiece"
            ) from error
        self.path = Path(path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as error:
            raise UserError(f"{path} is not a SentencePiece model file: {error}") from error
        self.name = f"sentencepiece:{self.path.name}"
        self.vocab_size = int(self._sp.vocab_size())
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
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
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
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
        return self._words


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 3..258; 0 pad, 1 bos, 2 eos): works without any file."""

    OFFSET = 3

    def __init__(self) -> None:
        self.name = "bytes"
        self.vocab_size = 256 + self.OFFSET
        self.bos_id = 1
        self.eos_id = 2

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes((int(i) - self.OFFSET) % 256 for i in ids if int(i) >= self.OFFSET)
        return data.decode("utf-8", errors="replace")

    def word_ids(self) -> list[int]:
        return [ord(c) + self.OFFSET for c in "abcdefghijklmnopqrstuvwxyz"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_tokenizer(source: str | Path) -> Tokenizer:
    """`bytes`, a SentencePiece `.model` file, a tokenizer.json, or a folder holding either."""
    if str(source) == "bytes":
        return ByteTokenizer()
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
            "file, a folder holding one, or 'bytes'"
        )
    if path.suffix == ".json":
        return HFTokenizer(path)
    return SentencePieceTokenizer(path)
