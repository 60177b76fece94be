"""The `openai` backend: any OpenAI-compatible endpoint as a black box (the paper's §3.5).

A point (p, o, batch b, trial) sends b requests at once, each a prompt the server counts as
exactly p tokens (api/prompts.py) asking for exactly o tokens (max_tokens = min_tokens = o,
ignore_eos), and times them end to end; streaming adds the time to first token and every
inter-token gap. Prompts differ between trials unless `identical_prompts`.

Measurement.runtime_s is the raw end-to-end runtime (for b > 1 the longest of the b);
Measurement.extra keeps the raw details: per-request runtimes, inter-token latencies, the
reported usage, every attempt with its cause, the prompt's seed. A response whose reported
prompt or completion size differs from (p, o) is stored with status "flagged" (left out of
fits); a request that failed after its retries is stored with status "error" and the cause.

The API key is passed to the client only: describe(), the stored options and every message
leave it out.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import replace
from typing import Any, Literal

from infermeter.api.client import ApiClient, ApiConfig, RequestRecord, _Failure, gc_paused
from infermeter.api.prompts import (
    CalibrationCache,
    ExactPrompts,
    PromptFactory,
    prompt_seed,
)
from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.spec import ModelSpec
from infermeter.tokenizer import load_tokenizer

KEY_ENV = ("INFERMETER_API_KEY", "OPENAI_API_KEY")
URL_ENV = ("INFERMETER_BASE_URL", "OPENAI_BASE_URL")
MODEL_ENV = ("INFERMETER_API_MODEL",)
ForcedLength = Literal["auto", "on", "off"]


def _from_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def api_key_from_env() -> str | None:
    return _from_env(KEY_ENV)


def api_spec(model: str, max_context: int = 131072) -> ModelSpec:
    """The catalog spec of `model`, or a placeholder for a black-box model of unknown shape.

    The placeholder carries only the name and a context limit (the server enforces its own);
    its layer sizes are 1 and mean nothing: a black box is fitted, never derived.
    """
    from infermeter.catalog import resolve_spec

    try:
        return resolve_spec(model)
    except UserError:
        if model.endswith(".json") or os.path.sep in model:
            raise  # a config file the user meant: its error says what is wrong
    return ModelSpec(
        name=model,
        hidden_size=1,
        num_layers=1,
        num_heads=1,
        vocab_size=1,
        max_context=max_context,
        family="black-box",
        source="black-box API: architecture unknown",
    )


class OpenAIBackend:
    """Profiles an OpenAI-compatible server through its completions or chat endpoint."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_model: str | None = None,
        api_key: str | None = None,
        endpoint: str = "completions",
        stream: bool = True,
        tokenizer: str | None = None,
        identical_prompts: bool = False,
        seed: int = 0,
        timeout_s: float = 600.0,
        retries: int = 3,
        forced_length: ForcedLength = "auto",
        calibration_cache: str | None = None,
    ) -> None:
        url = base_url or _from_env(URL_ENV)
        if not url:
            raise UserError(
                "the openai backend needs the server's URL: pass --base-url "
                "http://HOST:PORT/v1 or set OPENAI_BASE_URL"
            )
        if forced_length not in ("auto", "on", "off"):
            raise UserError(f"forced_length must be auto, on or off, got {forced_length!r}")
        self.api_model = api_model or _from_env(MODEL_ENV)
        self.config = ApiConfig(
            base_url=url,
            model=self.api_model or "",
            api_key=api_key if api_key is not None else api_key_from_env(),
            endpoint=endpoint,  # type: ignore[arg-type]
            stream=stream,
            timeout_s=timeout_s,
            retries=retries,
            forced_length=forced_length != "off",
        )
        self.forced_length = forced_length
        self.tokenizer_source = tokenizer
        self.identical_prompts = identical_prompts
        self.seed = seed
        self.cache = CalibrationCache(calibration_cache)
        self.spec: ModelSpec | None = None
        self.served_models: list[str] | None = None
        self.prompts: ExactPrompts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: ApiClient | None = None
        self._notes: list[str] = []

    # ---- plumbing --------------------------------------------------------------------------
    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(coroutine)

    def _user_error(self, failure: _Failure | RequestRecord) -> UserError:
        """A one-line message naming the problem and the fix (the key never shows)."""
        error = self._describe_failure(failure)
        key = self.config.api_key
        return UserError(str(error).replace(key, "***")) if key else error

    def _describe_failure(self, failure: _Failure | RequestRecord) -> UserError:
        url = self.config.base_url
        status, detail = failure.status, failure.detail or ""
        if failure.cause == "connect":
            return UserError(
                f"cannot reach {url} ({detail}); is the server running? check --base-url"
            )
        if failure.cause == "timeout":
            return UserError(f"{url} did not answer in time ({detail}); check --base-url")
        if status in (401, 403):
            return UserError(
                f"{url} refused the request ({status}: {detail}); pass --api-key or set "
                "OPENAI_API_KEY"
            )
        if status == 404:
            served = f"; it serves: {', '.join(self.served_models)}" if self.served_models else ""
            return UserError(
                f"{url} has no model {self.config.model!r} or no {self.config.endpoint} endpoint "
                f"({detail}){served}; check --api-model and --endpoint"
            )
        return UserError(f"{url} failed the request ({failure.cause} {status or ''}: {detail})")

    # ---- Backend protocol ------------------------------------------------------------------
    def prepare(self, spec: ModelSpec) -> None:
        self.close()
        self.spec = spec
        self._loop = asyncio.new_event_loop()
        self._client = ApiClient(self.config)
        self._check_models()
        if not self.config.model:
            if self.served_models and len(self.served_models) == 1:
                self._set_config(model=self.served_models[0])
            else:
                self._set_config(model=spec.name)
        self._check_forced_length()
        factory = PromptFactory(
            load_tokenizer(self.tokenizer_source) if self.tokenizer_source else None
        )
        key = "|".join(
            (self.config.base_url, self.config.model, self.config.endpoint, factory.name)
        )
        self.prompts = ExactPrompts(factory, self._probe, key, self.cache, self.seed)

    def _set_config(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)
        assert self._loop is not None
        if self._client is not None:
            self._run(self._client.close())
        self._client = ApiClient(self.config)

    def _check_models(self) -> None:
        assert self._client is not None
        try:
            self.served_models = self._run(self._client.models())
        except _Failure as failure:
            if failure.cause in ("connect", "timeout") or failure.status in (401, 403):
                raise self._user_error(failure) from None
            self.served_models = None  # no /models on this server: the first request decides
            self._notes.append(f"GET /models failed ({failure.cause}): model name not checked")
            return
        model = self.config.model
        if model and self.served_models and model not in self.served_models:
            raise UserError(
                f"model {model!r} is not served at {self.config.base_url}; it serves: "
                f"{', '.join(self.served_models)}; pass --api-model NAME"
            )

    def _check_forced_length(self) -> None:
        """One tiny request; without support for ignore_eos/min_tokens, drop them (auto)."""
        assert self._client is not None
        record = self._run(self._client.complete("hello", 1, stream=False))
        if record.ok:
            return
        if record.status == 400 and self.forced_length == "auto" and self.config.forced_length:
            self._set_config(forced_length=False)
            self._notes.append(f"server refused ignore_eos/min_tokens ({record.detail}): not sent")
            record = self._run(self._client.complete("hello", 1, stream=False))
            if record.ok:
                return
        raise self._user_error(record)

    def _probe(self, text: str) -> int:
        """The server's count of `text` as a prompt (one request with max_tokens=1)."""
        assert self._client is not None
        record = self._run(self._client.complete(text, 1, stream=False))
        if not record.ok:
            raise self._user_error(record)
        if record.prompt_tokens is None:
            raise UserError(
                f"{self.config.base_url} reports no usage.prompt_tokens, so exact prompt sizes "
                "cannot be checked; use a server that reports usage"
            )
        return record.prompt_tokens

    def measure(self, point: Point) -> Measurement:
        return self.measure_many([point])[0] if point.batch_size == 1 else self._batch(point)

    def _batch(self, point: Point) -> Measurement:
        """b requests of (p, o) at once: the batch's runtime is the longest of them."""
        slots = [
            replace(point, batch_size=1, trial=point.trial * point.batch_size + i)
            for i in range(point.batch_size)
        ]
        parts = self.measure_many(slots)
        ok = [m for m in parts if m.status != "error"]
        status = "ok" if all(m.status == "ok" for m in parts) else ("flagged" if ok else "error")
        details = sorted({m.detail for m in parts if m.detail})
        runtimes = [m.runtime_s for m in parts]
        ttfts = [m.ttft_s for m in parts if m.ttft_s is not None]
        return Measurement(
            runtime_s=max((r for r in runtimes if not math.isnan(r)), default=float("nan")),
            ttft_s=max(ttfts) if ttfts else None,
            output_tokens_actual=(
                parts[0].output_tokens_actual
                if len({m.output_tokens_actual for m in parts}) == 1
                else None
            ),
            status=status,
            detail="; ".join(details) or None,
            extra={"requests": [m.extra for m in parts], "runtimes_s": runtimes},
        )

    def measure_many(self, points: list[Point]) -> list[Measurement]:
        """One request per point, all in flight at once (a parallel-load step)."""
        if self._client is None or self.prompts is None:
            raise RuntimeError("OpenAIBackend.measure() called before prepare()")
        for point in points:
            if point.prompt_tokens < 1 or point.output_tokens < 1:
                raise UserError(f"point {point}: prompt and output tokens must be >= 1")
        seeds = [
            prompt_seed(
                self.seed, pt.prompt_tokens, pt.output_tokens, pt.trial, self.identical_prompts
            )
            for pt in points
        ]
        texts = [
            self.prompts.prompt(pt.prompt_tokens, s) for pt, s in zip(points, seeds, strict=True)
        ]
        client = self._client

        async def send() -> list[RequestRecord]:
            return list(
                await asyncio.gather(
                    *(
                        client.complete(t, pt.output_tokens)
                        for t, pt in zip(texts, points, strict=True)
                    )
                )
            )

        with gc_paused():
            records = self._run(send())
        return [
            self._measurement(pt, rec, seed)
            for pt, rec, seed in zip(points, records, seeds, strict=True)
        ]

    def _measurement(self, point: Point, record: RequestRecord, seed: int) -> Measurement:
        assert self.prompts is not None
        extra = {
            **record.summary(),
            "prompt_seed": seed,
            "prompt_units": self.prompts.units(point.prompt_tokens),
        }
        if not record.ok:
            if record.cause == "http_4xx" and record.status in (401, 403, 404):
                raise self._user_error(record)  # nothing later can succeed: stop the run
            tries = len(record.attempts)
            return Measurement(
                runtime_s=float("nan"),
                status="error",
                detail=f"{record.cause}: {record.detail} (after {tries} attempt(s))",
                extra=extra,
            )
        produced = record.completion_tokens
        if produced is None and record.token_times_s:
            produced = len(record.token_times_s)
            extra["completion_tokens_from"] = "stream chunks (no usage reported)"
        notes = []
        prompt_note = self.prompts.check(point.prompt_tokens, record.prompt_tokens)
        if prompt_note:
            notes.append(prompt_note)
        if produced is not None and produced != point.output_tokens:
            notes.append(f"server produced {produced} tokens, asked {point.output_tokens}")
        return Measurement(
            runtime_s=float(record.e2e_s or 0.0),
            ttft_s=record.ttft_s,
            output_tokens_actual=produced,
            status="flagged" if notes else "ok",
            detail="; ".join(notes) or None,
            extra=extra,
        )

    def describe(self) -> dict[str, Any]:
        calibration = self.prompts.calibration if self.prompts is not None else None
        return {
            "backend": self.name,
            **self.config.to_dict(),
            "forced_length_option": self.forced_length,
            "tokenizer": self.prompts.factory.name if self.prompts is not None else None,
            "identical_prompts": self.identical_prompts,
            "seed": self.seed,
            "served_models": self.served_models,
            "prompt_offset": calibration.offset if calibration is not None else None,
            "notes": self._notes,
            "client": "infermeter.api.http (HTTP/1.1 on asyncio)",
        }

    def close(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        try:
            if self._client is not None:
                loop.run_until_complete(self._client.close())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self._client = None
            loop.close()
