"""Token-by-token generation over a prepared backend, for `infermeter serve`.

A `TokenGenerator` turns prompt token ids into a stream of new token ids, greedy, honouring the
three length controls of OpenAI-compatible servers:

- max_new_tokens: never more;
- min_new_tokens: stop tokens are masked until this many tokens exist (vLLM's min_tokens);
- ignore_eos: stop tokens never end the stream (the length is forced to max_new_tokens).

`HFGenerator` runs the transformers model of a prepared HFBackend one step at a time with its
KV cache, so tokens stream as they are made. `EngineGenerator` wraps the reference engine's
whole-sequence `generate()`: its tokens are known only at the end and stream out then.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from infermeter.errors import UserError


class TokenGenerator(Protocol):
    """What generates tokens for served text (infermeter serve): a name, vocabulary size,
    context length and stream()."""

    name: str
    vocab_size: int
    max_context: int

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        min_new_tokens: int = 0,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """New token ids, one at a time; ends at max_new_tokens or at an honoured stop id."""


class HFGenerator:
    """Greedy, incremental decoding with the model of a prepared HFBackend."""

    def __init__(self, backend: Any) -> None:
        if getattr(backend, "model", None) is None or getattr(backend, "spec", None) is None:
            raise UserError("HFGenerator needs a prepared hf backend (call prepare(spec) first)")
        self.backend = backend
        self.model = backend.model
        self.name = f"hf:{backend.spec.name}"
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.max_context = int(backend.spec.max_context)
        self.device = next(self.model.parameters()).device
        # transformers 5 names the KV cache `cache` (argument and output) and warns on
        # `past_key_values`; 4.x knows only `past_key_values`
        forward = inspect.signature(self.model.forward).parameters
        self._cache = "cache" if "cache" in forward else "past_key_values"

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        min_new_tokens: int = 0,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """Yield up to `max_new_tokens` ids after `prompt_ids` (wrapped into the vocabulary),
        greedy with the KV cache; stops at `stop_ids` once `min_new_tokens` are out
        (never with `ignore_eos`), or when `cancelled()`."""
        import torch

        stops = [s for s in stop_ids if 0 <= s < self.vocab_size]
        ids = torch.tensor([[i % self.vocab_size for i in prompt_ids]], device=self.device)
        past: Any = None
        with torch.inference_mode():
            for made in range(max_new_tokens):
                if cancelled():
                    return
                out = self.model(
                    input_ids=ids, use_cache=True, return_dict=True, **{self._cache: past}
                )
                past = getattr(out, self._cache)
                logits = out.logits[0, -1]
                if stops and not ignore_eos and made < min_new_tokens:
                    logits = logits.clone()
                    logits[stops] = float("-inf")
                token = int(torch.argmax(logits))
                if token in stops and not ignore_eos:
                    return
                yield token
                ids = torch.tensor([[token]], device=self.device)


class EngineGenerator:
    """The reference engine: the whole sequence is generated, then streamed out."""

    def __init__(self, backend: Any) -> None:
        spec = getattr(backend, "spec", None)
        if spec is None:
            raise UserError("EngineGenerator needs a prepared engine backend")
        self.backend = backend
        self.name = f"engine:{spec.name}"
        self.vocab_size = int(spec.vocab_size)
        self.max_context = int(spec.max_context)

    def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        min_new_tokens: int = 0,
        stop_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """Yield up to `max_new_tokens` ids from one engine generation of `prompt_ids` (wrapped
        into the vocabulary), honouring `stop_ids` unless `ignore_eos` or
        `min_new_tokens`; stops early when `cancelled()`."""
        prompt = [int(i) % self.vocab_size for i in prompt_ids]
        honour = () if ignore_eos or min_new_tokens > 0 else tuple(stop_ids)
        result = self.backend.generate([prompt], max_new_tokens, honour)
        tokens = list(result.tokens[0])[:max_new_tokens]
        for made, token in enumerate(tokens):
            if cancelled():
                return
            # Greedy: the forced run equals the stop-aware one up to the first honoured stop.
            if token in stop_ids and not ignore_eos and made >= min_new_tokens:
                return
            yield int(token)


def generator_for(backend: Any) -> TokenGenerator:
    """The token generator of a prepared backend (hf or engine)."""
    name = getattr(backend, "name", "")
    if name == "hf":
        return HFGenerator(backend)
    if name == "engine":
        return EngineGenerator(backend)
    raise UserError(f"infermeter serve runs the hf or engine backend, not {name!r}")
