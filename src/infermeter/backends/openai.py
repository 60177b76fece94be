"""The `openai` backend: any OpenAI-compatible endpoint as a black box (the paper's §3.5).

A point (p, o, batch b, trial) sends b requests at once, each a prompt the server counts as
exactly p tokens (api/prompts.py) asking for exactly o tokens (max_tokens = min_tokens = o,
ignore_eos), and times them end to end; streaming adds the time to first token and every
chunk's arrival. Prompts differ between trials unless `identical_prompts`.

`prepare` sends the measurement request itself first (streamed or not, stream_options,
max_tokens = min_tokens = 4, ignore_eos): a field the server refuses is dropped, one at a
time, with a note in the run (`notes`); whether the answer reports usage and honours the
length is noted too. Prompt counts are calibrated with the same request shape where its
answer reports usage, else with the same request unstreamed.

Measurement.runtime_s is the raw end-to-end runtime (for b > 1 the longest of the b);
Measurement.extra keeps the raw details: per-request runtimes, chunk gaps (inter-token
latencies where each chunk is known to be one token), the reported usage, every attempt
with its cause, the prompt's seed, and how the prompt and output sizes were checked
(`prompt_check`, `output_tokens_from`). The output size is the server's usage, else
max_tokens when the finish reason is "length", else the tokenizer's count of the text. A
response whose prompt or output size differs from (p, o) is stored "flagged" (left out of
fits); a request that failed after its retries is stored "error" with its cause.

The API key is passed to the client only: describe(), the stored options and every message
leave it out.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from infermeter.backends.api.client import (
    AFTER_GENERATION,
    OPTIONAL_FEATURES,
    ApiClient,
    ApiConfig,
    RequestRecord,
    _Failure,
    gc_paused,
    split_credentials,
)
from infermeter.backends.api.http import new_event_loop
from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec
from infermeter.units import MIB_BYTES, plural
from infermeter.workloads.prompts import (
    CalibrationCache,
    ExactPrompts,
    PromptFactory,
    prompt_seed,
)
from infermeter.workloads.tokenizer import Tokenizer, load_tokenizer

KEY_ENV = ("INFERMETER_API_KEY", "OPENAI_API_KEY")
URL_ENV = ("INFERMETER_BASE_URL", "OPENAI_BASE_URL")
MODEL_ENV = ("INFERMETER_API_MODEL",)
ForcedLength = Literal["auto", "on", "off"]
# A refusal naming no field drops these first (OpenAI's own API refuses the length fields).
DROP_ORDER = ("ignore_eos", "min_tokens", "stream_options")
PREFLIGHT_TOKENS = 4  # o > 1, so a server that ignores min_tokens or max_tokens shows it


def _from_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def api_key_from_env() -> str | None:
    """The API key from OPENAI_API_KEY or INFERMETER_API_KEY, or None."""
    return _from_env(KEY_ENV)


def api_spec(model: str, max_context: int = 131072) -> ModelSpec:
    """The catalog spec of `model`, or a placeholder for a black-box model of unknown shape.

    The placeholder carries only the name and a context limit (the server enforces its own);
    its layer sizes are 1 and mean nothing: a black box is fitted, never derived.
    """
    from infermeter.spec.catalog import resolve_spec

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


LENGTH_BY_FINISH = "finish_reason length at max_tokens"
UNVERIFIED_OUTPUT_NOTE = (
    "output lengths unverified where an answer reported no usage: its finish reason 'length' "
    "at max_tokens was taken as o tokens (a stream's chunks may hold several tokens each, so "
    "their count is no check; extra.output_chunks keeps it)"
)


class ProbeFailed(UserError):
    """A calibration probe's request failed (UserError where nothing was measured yet;
    measure_many turns it into failed points, with the probe's cause, once a run is under way)."""

    def __init__(self, message: str, record: RequestRecord) -> None:
        super().__init__(message)
        self.record = record


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
        stall_timeout_s: float = 120.0,
        max_body_mib: float = 8.0,
        size_option: str = "--prompt-sizes",
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
        features = OPTIONAL_FEATURES
        if forced_length == "off":
            features = tuple(f for f in features if f not in ("ignore_eos", "min_tokens"))
        self.config = ApiConfig(
            base_url=url,
            model=self.api_model or "",
            api_key=api_key if api_key is not None else api_key_from_env(),
            endpoint=endpoint,  # type: ignore[arg-type]
            stream=stream,
            timeout_s=timeout_s,
            stall_timeout_s=stall_timeout_s,
            retries=retries,
            features=features,
            max_body_bytes=max_body_mib * MIB_BYTES,  # ApiConfig checks it
        )
        self.size_option = size_option
        self.url_had_credentials = split_credentials(url)[1] is not None
        self.stream_usage: bool | None = None  # does a streamed answer report usage?
        self._tokenizer: Tokenizer | None = None
        self.forced_length = forced_length
        self.tokenizer_source = tokenizer
        self.identical_prompts = identical_prompts
        self.seed = seed
        self.cache = CalibrationCache(calibration_cache)
        self.spec: ModelSpec | None = None
        self.served_models: list[str] | None = None
        self.prompts: ExactPrompts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_name = "asyncio"
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
            return UserError(
                f"{url} did not answer in time ({detail}); check --base-url, or give a slow "
                "server longer with --stall-timeout S (no byte for S seconds) and --timeout S"
            )
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
        cause = f"{failure.cause} {status}" if status else failure.cause
        return UserError(f"{url} failed the request ({cause}: {detail})")

    # ---- Backend protocol ------------------------------------------------------------------
    def prepare(self, spec: ModelSpec) -> None:
        """Connect, check the model, probe with the measurement request and set up prompts.

        Idempotent for one spec: a caller may prepare early (to fail before a run is
        stored) and run_profile prepares again at no cost. Raises UserError on faults that
        no retry can fix (refused connection, 401, unknown model, every feature refused).
        """
        if self._loop is not None and self.spec == spec and self.prompts is not None:
            return
        self.close()
        self.spec = spec
        self._notes = []
        if self.url_had_credentials:
            self._notes.append("credentials in the base URL: sent as Basic auth, never stored")
        self._loop, self._loop_name = new_event_loop()
        self._client = ApiClient(self.config)
        self._check_models()
        if not self.config.model:
            if self.served_models and len(self.served_models) == 1:
                served = self.served_models[0]
                self._set_config(model=served)
                if not _names_spec(served, spec):  # a typo in MODEL labels the run alone
                    self._notes.append(
                        f"requests name {served!r}, the one model the server serves, and the "
                        f"run is labelled {spec.name!r} (MODEL): if that is not the model "
                        "served, correct MODEL"
                    )
            else:
                self._set_config(model=spec.name)
        self._preflight()
        self._tokenizer = load_tokenizer(self.tokenizer_source) if self.tokenizer_source else None
        factory = PromptFactory(self._tokenizer)
        key = "|".join(
            (self.config.base_url, self.config.model, self.config.endpoint, factory.name)
        )
        self.prompts = ExactPrompts(
            factory, self._probe, key, self.cache, self.seed, self.size_option
        )
        self.prompts.calibrate(())  # the server's offset (and units) now: errors come early

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

    def _preflight(self) -> None:
        """Send the measurement request itself; drop refused optional fields one at a time.

        The body is the one measurements send (stream, stream_options, max_tokens =
        min_tokens = PREFLIGHT_TOKENS, ignore_eos). A 400 naming a field drops that field, a
        400 naming none drops the next one sent (DROP_ORDER); each drop is a note
        in the run. The answer then shows whether streams report usage and whether the
        length is honoured (noted, not fatal: such points are checked one by one).
        """
        assert self._client is not None
        while True:
            record = self._run(self._client.complete("hello world", PREFLIGHT_TOKENS))
            if record.ok:
                break
            sent = [f for f in DROP_ORDER if f in self.config.features and self._sends(f)]
            refused = record.cause == "request_error" or (
                record.cause == "http_4xx" and record.status not in (401, 403, 404)
            )
            if not refused or not sent:
                raise self._user_error(record)
            named = [f for f in sent if f in (record.detail or "")]
            drop = named[0] if named else sent[0]
            if self.forced_length == "on" and drop in ("ignore_eos", "min_tokens"):
                raise self._user_error(record)
            self._set_config(features=tuple(f for f in self.config.features if f != drop))
            self._notes.append(f"server refused {drop} ({record.detail}): not sent")
        if self.config.stream:
            self.stream_usage = record.prompt_tokens is not None
            if not self.stream_usage:
                self._notes.append(
                    "streamed answers report no usage: prompt sizes counted from unstreamed "
                    "probes of the same request, each streamed prompt marked unverified"
                )
        produced, _ = self._produced(record, PREFLIGHT_TOKENS)
        if produced is not None and produced != PREFLIGHT_TOKENS:
            self._notes.append(
                f"asked for exactly {PREFLIGHT_TOKENS} tokens, the server produced {produced}: "
                "forced lengths may not be honoured (such points are flagged)"
            )

    def _sends(self, feature: str) -> bool:
        return feature != "stream_options" or self.config.stream

    def _probe(self, text: str) -> int:
        """The server's count of `text` as a prompt: the measurement request with
        max_tokens = 1 (unstreamed when streamed answers report no usage)."""
        assert self._client is not None
        stream = self.config.stream and bool(self.stream_usage)
        record = self._run(self._client.complete(text, 1, stream=stream))
        if not record.ok:
            raise ProbeFailed(str(self._user_error(record)), record)
        if record.prompt_tokens is None:
            raise UserError(
                f"{self.config.base_url} reports no usage.prompt_tokens, so exact prompt sizes "
                "cannot be checked; use a server that reports usage"
            )
        return record.prompt_tokens

    def _produced(self, record: RequestRecord, asked: int) -> tuple[int | None, str | None]:
        """(output tokens, how they were counted): usage, else the finish reason "length"
        at max_tokens, else the tokenizer over the generated text; never stream chunks."""
        if record.completion_tokens is not None:
            return record.completion_tokens, "usage"
        if record.finish_reason == "length":
            return asked, LENGTH_BY_FINISH
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(record.generated_text)), "tokenizer over the text"
        return None, None

    def measure(self, point: Point) -> Measurement:
        """One request of (p, o), or b at once for batch size b (runtime: the longest, s)."""
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
        seeds = [self._seed(pt) for pt in points]
        try:
            texts = [
                self.prompts.prompt(pt.prompt_tokens, s)
                for pt, s in zip(points, seeds, strict=True)
            ]
        except ProbeFailed as failed:  # a new prompt size's calibration request failed
            if failed.record.status in (401, 403, 404):
                raise
            record, tries = failed.record, len(failed.record.attempts)
            detail = (
                f"{record.cause}: {record.detail} (after {tries} attempt(s) to calibrate "
                f"prompt size {points[0].prompt_tokens})"
            )
            return [
                Measurement(
                    runtime_s=float("nan"),
                    status="error",
                    detail=detail,
                    extra={**record.summary(), "prompt_seed": seed},
                )
                for seed in seeds
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

    def _seed(self, point: Point) -> int:
        return prompt_seed(
            self.seed,
            point.prompt_tokens,
            point.output_tokens,
            point.trial,
            self.identical_prompts,
            point.batch_size,
        )

    def measure_timed(
        self,
        point_at: Callable[[int], Point],
        concurrency: int | None,
        arrivals: list[float] | None,
        span_s: float,
    ) -> list[tuple[Point, Measurement, float]]:
        """Requests for `span_s` seconds: `concurrency` kept in flight, or one sent at each of
        `arrivals` (s from the start). Request i is `point_at(i)`. Returns (point,
        measurement, send time from the start in s) for every request, in send order;
        requests in flight at the end are awaited (bounded by the client's timeouts)."""
        if self._client is None or self.prompts is None:
            raise RuntimeError("OpenAIBackend.measure_timed() called before prepare()")
        first = point_at(0)
        self.prompts.calibrate([first.prompt_tokens])  # no probe may run inside the timed loop
        client, prompts = self._client, self.prompts
        results: list[tuple[int, Point, RequestRecord, float]] = []

        async def one(i: int, t0: float) -> None:
            point = point_at(i)
            text = prompts.prompt(point.prompt_tokens, self._seed(point))
            start = time.perf_counter() - t0
            record = await client.complete(text, point.output_tokens)
            results.append((i, point, record, start))

        async def closed_loop() -> None:
            t0 = time.perf_counter()
            counter = itertools.count()

            async def worker() -> None:
                while time.perf_counter() - t0 < span_s:
                    await one(next(counter), t0)

            await asyncio.gather(*(worker() for _ in range(concurrency or 1)))

        async def open_loop() -> None:
            t0 = time.perf_counter()
            tasks = []
            for i, at in enumerate(arrivals or ()):
                wait = t0 + at - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(i, t0)))
            await asyncio.gather(*tasks)

        with gc_paused():
            self._run(closed_loop() if arrivals is None else open_loop())
        results.sort(key=lambda r: r[0])
        return [
            (point, self._measurement(point, record, self._seed(point)), start)
            for _, point, record, start in results
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
        if AFTER_GENERATION in record.notes and AFTER_GENERATION not in self._notes:
            self._notes.append(AFTER_GENERATION)  # said once per run; each point keeps it too
        produced, source = self._produced(record, point.output_tokens)
        extra["output_tokens_from"] = source
        if source == LENGTH_BY_FINISH:  # the server's word alone: say so, once per run
            extra["output_check"] = "unverified: no usage"
            extra["output_chunks"] = len(record.chunk_times_s)
            if UNVERIFIED_OUTPUT_NOTE not in self._notes:
                self._notes.append(UNVERIFIED_OUTPUT_NOTE)
        notes = []
        if record.prompt_tokens is None:
            extra["prompt_check"] = "unverified: the answer reported no usage"
        else:
            prompt_note = self.prompts.check(point.prompt_tokens, record.prompt_tokens)
            extra["prompt_check"] = "mismatch" if prompt_note else "exact (usage)"
            if prompt_note:
                notes.append(prompt_note)
        if produced is None:
            notes.append(
                f"server stopped ({record.finish_reason}) before max_tokens, output size unknown "
                "(no usage, no --tokenizer)"
            )
        elif produced != point.output_tokens:
            notes.append(
                f"server produced {plural(produced, 'token')}, asked {point.output_tokens}"
            )
        return Measurement(
            runtime_s=float(record.e2e_s or 0.0),
            ttft_s=record.ttft_s,
            output_tokens_actual=produced,
            status="flagged" if notes else "ok",
            detail="; ".join(notes) or None,
            extra=extra,
        )

    def describe(self) -> dict[str, Any]:
        """The API settings (never the key), the served models and the token calibration."""
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
            "prompt_units": calibration.family if calibration is not None else None,
            "stream_usage": self.stream_usage,
            "notes": self._notes
            + ([self.prompts.note] if self.prompts is not None and self.prompts.note else []),
            "client": f"infermeter.backends.api.http (HTTP/1.1 on {self._loop_name})",
        }

    def close(self) -> None:
        """Close the client and its event loop; safe to call twice."""
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
            self.prompts = None
            loop.close()


def _names_spec(served: str, spec: ModelSpec) -> bool:
    """Whether a server's model name is `spec` as the catalog reads names (a Hugging Face id
    such as openai-community/gpt2 is the catalog's gpt2): a vLLM server names its model by
    that id, so no note is due when MODEL is the same model by another name."""
    from infermeter.spec.catalog import resolve_spec

    if served == spec.name:
        return True
    try:
        return resolve_spec(served).name == spec.name
    except (UserError, ValueError, OSError):  # not a catalog name, nor a config file
        return False
