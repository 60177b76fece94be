"""An async client for OpenAI-compatible servers that times every request and survives faults.

One call, `ApiClient.complete(prompt, max_tokens)`, sends a completions or chat-completions
request, streaming or not, and returns a `RequestRecord`: end-to-end time, time to first
token and the arrival time of every streamed token (so inter-token latencies), the usage the
server reported, and every attempt with its cause when something failed.

Faults are retried a bounded number of times with full-jitter exponential backoff; a 429 or
503 with Retry-After waits what the server asked. Causes recorded per attempt:

    connect      the connection was refused or could not be made
    disconnected the server closed the connection before answering
    timeout      no connection, no byte for `stall_timeout_s`, or over `timeout_s` in all
    http_429     rate limited                      http_5xx   the server failed
    http_4xx     the request was refused (401, 404, 400): not retried
    malformed    the body or a stream event was not the JSON expected
    stream_cut   the stream ended before [DONE] or the connection dropped mid-body
    stream_error the server sent an error event inside the stream

Timing uses time.perf_counter (CLOCK_MONOTONIC on Linux), stamped by api/http.py the moment
bytes are read, before any parsing: the client neither limits the load it puts on a server nor
blurs its timings (benchmarks/api_load_bench.py measures both).
The API key goes only into the Authorization header: never into a record, a log or a message.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from infermeter.api.http import HttpFailure, HttpPool, Origin, Response
from infermeter.errors import UserError

Endpoint = Literal["completions", "chat"]
RETRYABLE = frozenset(
    {
        "connect",
        "disconnected",
        "timeout",
        "http_429",
        "http_5xx",
        "malformed",
        "stream_cut",
        "stream_error",
    }
)


def normalize_base_url(url: str) -> str:
    """http(s)://host[:port][/path] without a trailing slash, or a UserError naming the fix."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--base-url {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UserError(f"--base-url {url!r} has an invalid port") from None
    return text.rstrip("/")


@dataclass(frozen=True)
class ApiConfig:
    """Where and how to send requests. The key is kept out of repr() and to_dict()."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    endpoint: Endpoint = "completions"
    stream: bool = True
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    forced_length: bool = True  # send ignore_eos and min_tokens (vLLM, TGI, SGLang, ours)
    temperature: float | None = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    max_connections: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))
        if self.endpoint not in ("completions", "chat"):
            raise UserError(f"endpoint must be completions or chat, got {self.endpoint!r}")
        if self.retries < 0:
            raise UserError(f"retries must be >= 0, got {self.retries}")
        for name in ("timeout_s", "connect_timeout_s", "stall_timeout_s"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def url(self) -> str:
        path = "chat/completions" if self.endpoint == "chat" else "completions"
        return f"{self.base_url}/{path}"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the key, for the store."""
        data = asdict(self)
        data.pop("api_key")
        data["authenticated"] = self.api_key is not None
        return data


@dataclass
class Attempt:
    cause: str | None  # None: this attempt succeeded
    status: int | None = None
    detail: str | None = None
    duration_s: float = 0.0
    waited_s: float = 0.0  # backoff slept after this attempt


@dataclass
class RequestRecord:
    """One request as the client saw it (the last attempt's timing; every attempt's cause)."""

    ok: bool
    cause: str | None = None
    detail: str | None = None
    status: int | None = None
    sent_at: float = 0.0  # perf_counter when the last attempt was sent
    e2e_s: float | None = None
    ttft_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # from sent_at, one per chunk
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    response_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    def summary(self) -> dict[str, Any]:
        """The raw details kept with a stored measurement (text left out)."""
        return {
            "ok": self.ok,
            "cause": self.cause,
            "status": self.status,
            "e2e_s": self.e2e_s,
            "ttft_s": self.ttft_s,
            "itl_s": [round(x, 7) for x in self.itl_s],
            "stream_chunks": len(self.token_times_s),
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "finish_reason": self.finish_reason,
            "response_id": self.response_id,
            "retries": self.retries,
            "attempts": [asdict(a) for a in self.attempts],
        }


class _Failure(Exception):
    def __init__(
        self,
        cause: str,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_message(body: bytes) -> str:
    """The server's own error message (OpenAI: {"error": {"message": ...}}), trimmed."""
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        if message is None and isinstance(data, dict):
            message = data.get("detail")
        text = str(message)
    except (ValueError, AttributeError):
        text = body.decode("utf-8", errors="replace")
    return " ".join(text.split())[:300]


_SCAN = json.JSONDecoder().scan_once  # (text, index) -> (value, end); StopIteration if none


_gc_holds = 0
_gc_was_enabled = True


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect, then keep Python's cyclic GC out of the requests in flight until exit.

    A collection pauses the whole event loop, and the pause lands on whichever requests are
    being timed. The hold removes one source of tail latency, not the scheduler's (what the
    client itself added at 64 streams was per-request work on the loop: see api/http.py).
    Holds nest; the last exit restores the GC's state.
    """
    global _gc_holds, _gc_was_enabled
    if _gc_holds == 0:
        _gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
    _gc_holds += 1
    try:
        yield
    finally:
        _gc_holds -= 1
        if _gc_holds == 0 and _gc_was_enabled:
            gc.enable()


class ApiClient:
    """Requests to one OpenAI-compatible endpoint, from one event loop, over pooled connections.

    Used as `async with`, it holds the cyclic GC off for its lifetime (see gc_paused).
    """

    def __init__(self, config: ApiConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._http: HttpPool | None = None
        self._path = urlsplit(config.base_url).path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "*/*"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def _pool(self) -> HttpPool:
        if self._http is None:
            self._http = HttpPool(
                Origin.of(self.config.base_url),
                self.config.max_connections,
                self.config.connect_timeout_s,
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    async def __aenter__(self) -> ApiClient:
        self._gc = gc_paused()
        self._gc.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.close()
        finally:
            self._gc.__exit__(None, None, None)

    async def _send(
        self,
        method: str,
        endpoint: str,
        payload: bytes = b"",
        sse: bool = False,
        on_event: Callable[[float, bytes], None] | None = None,
    ) -> tuple[Response, float]:
        c = self.config
        try:
            return await self._pool().request(
                method, f"{self._path}/{endpoint}", self._headers, payload, sse,
                c.stall_timeout_s, c.timeout_s, on_event,
            )  # fmt: skip
        except HttpFailure as failure:
            raise _Failure(failure.cause, self._redact(failure.detail)) from None

    # ---- requests ----------------------------------------------------------------------
    def body(
        self,
        prompt: str,
        max_tokens: int,
        min_tokens: int | None = None,
        stream: bool | None = None,
    ) -> dict[str, Any]:
        """The JSON body of a request; forced length adds ignore_eos and min_tokens."""
        c = self.config
        stream = c.stream if stream is None else stream
        body: dict[str, Any] = {"model": c.model, "max_tokens": max_tokens, "stream": stream}
        if c.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if c.temperature is not None:
            body["temperature"] = c.temperature
        if stream:
            body["stream_options"] = {"include_usage": True}
        if c.forced_length:
            body["ignore_eos"] = True
            body["min_tokens"] = max_tokens if min_tokens is None else min_tokens
        body.update(c.extra_body)
        return body

    async def models(self) -> list[str]:
        """The ids of GET {base_url}/models; raises _Failure on faults."""
        response, _ = await self._send("GET", "models")
        if response.status >= 400:
            self._raise_http(response.status, bytes(response.body), None)
        try:
            data = json.loads(response.body)
            return [str(m["id"]) for m in data.get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise _Failure("malformed", "the models list is not OpenAI JSON") from error

    async def complete(
        self,
        prompt: str,
        max_tokens: int,
        min_tokens: int | None = None,
        stream: bool | None = None,
    ) -> RequestRecord:
        """Send one request, retrying faults; always returns a record (ok or with its cause)."""
        body = self.body(prompt, max_tokens, min_tokens, stream)
        payload = json.dumps(body).encode()
        record = RequestRecord(ok=False)
        for attempt_no in range(self.config.retries + 1):
            started = time.perf_counter()
            try:
                await self._attempt(payload, bool(body["stream"]), record)
            except _Failure as failure:
                attempt = Attempt(
                    failure.cause,
                    failure.status,
                    self._redact(failure.detail),
                    time.perf_counter() - started,
                )
                record.attempts.append(attempt)
                record.ok = False
                record.cause, record.detail, record.status = (
                    failure.cause,
                    attempt.detail,
                    failure.status,
                )
                if failure.cause not in RETRYABLE or attempt_no == self.config.retries:
                    return record
                wait = self._backoff(attempt_no, failure.retry_after)
                if wait is None:
                    record.detail = (
                        f"{attempt.detail}; Retry-After {failure.retry_after:.0f} s exceeds the "
                        f"{self.config.retry_after_max_s:.0f} s limit"
                    )
                    return record
                attempt.waited_s = wait
                await asyncio.sleep(wait)
                continue
            record.attempts.append(
                Attempt(None, record.status, None, time.perf_counter() - started)
            )
            record.ok, record.cause, record.detail = True, None, None
            return record
        return record  # pragma: no cover - the loop always returns

    def _backoff(self, attempt_no: int, retry_after: float | None) -> float | None:
        """Full jitter, doubling per attempt; a server's Retry-After wins (plus up to 10%)."""
        c = self.config
        if retry_after is not None:
            if retry_after > c.retry_after_max_s:
                return None
            return retry_after * (1.0 + 0.1 * self._rng.random())
        return self._rng.uniform(0.0, min(c.backoff_max_s, c.backoff_s * 2**attempt_no))

    async def _attempt(self, payload: bytes, stream: bool, record: RequestRecord) -> None:
        record.token_times_s = []
        record.text = ""
        record.ttft_s = record.e2e_s = None
        record.prompt_tokens = record.completion_tokens = None
        record.finish_reason = record.response_id = None
        chat = self.config.endpoint == "chat"
        endpoint = "chat/completions" if chat else "completions"
        events = _StreamEvents(chat) if stream else None
        record.sent_at = time.perf_counter()
        response, sent = await self._send("POST", endpoint, payload, stream, events)
        record.sent_at = sent
        record.status = response.status
        if response.status >= 400:
            self._raise_http(
                response.status, bytes(response.body), response.headers.get("retry-after")
            )
        if events is not None:
            self._read_events(response, sent, record, events)
        else:
            record.e2e_s = (response.done_at or time.perf_counter()) - sent
            self._parse_body(bytes(response.body), record)

    def _raise_http(self, status: int, raw: bytes, retry_after: str | None) -> None:
        message = _error_message(raw)
        if status == 429:
            raise _Failure("http_429", message or "rate limited", status, _retry_after(retry_after))
        if status >= 500:
            wait = _retry_after(retry_after) if status == 503 else None
            raise _Failure("http_5xx", message or f"server error {status}", status, wait)
        raise _Failure("http_4xx", message or f"refused with {status}", status)

    def _parse_body(self, raw: bytes, record: RequestRecord) -> None:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            if self.config.endpoint == "chat":
                record.text = (choice.get("message") or {}).get("content") or ""
            else:
                record.text = choice.get("text") or ""
            record.finish_reason = choice.get("finish_reason")
            record.response_id = data.get("id")
            self._usage(data.get("usage"), record)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise _Failure("malformed", f"the response is not OpenAI JSON ({error!r})") from error

    @staticmethod
    def _usage(usage: Any, record: RequestRecord) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            record.prompt_tokens = int(prompt) if prompt is not None else None
            record.completion_tokens = int(completion) if completion is not None else None

    def _read_events(
        self, response: Response, sent: float, record: RequestRecord, events: _StreamEvents
    ) -> None:
        for arrived, data in response.events:  # any the connection kept (none with a hook)
            events(arrived, data)
        if events.failure is not None:
            raise events.failure
        record.response_id = events.response_id
        record.finish_reason = events.finish_reason
        if events.usage is not None:
            self._usage(events.usage, record)
        record.token_times_s = [t - sent for t in events.arrivals]
        record.e2e_s = (response.done_at or time.perf_counter()) - sent
        record.text = "".join(events.pieces)
        if record.token_times_s:
            record.ttft_s = record.token_times_s[0]
        if not events.done:
            raise _Failure(
                "stream_cut",
                f"the stream ended after {len(record.token_times_s)} tokens without [DONE]",
            )


class _StreamEvents:
    """A stream's events, parsed one by one as they arrive.

    api/http.py calls this after stamping the read that completed the event, so the parsing
    never delays the event's own timestamp; spread over the stream it costs ~1 us an event,
    where parsing them all when the stream ends held the event loop for ~40 us per request
    (32 tokens) just as the next request was due to go out. The first fault is kept and
    raised when the response is read; later events are ignored.
    """

    __slots__ = (
        "arrivals",
        "chat",
        "done",
        "failure",
        "finish_reason",
        "pieces",
        "response_id",
        "usage",
    )

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.pieces: list[str] = []
        self.arrivals: list[float] = []
        self.done = False
        self.failure: _Failure | None = None
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.usage: Any = None

    def __call__(self, arrived: float, data: bytes) -> None:
        if self.failure is not None:
            return
        if data == b"[DONE]":
            self.done = True
            return
        try:
            text = data.decode()
            event, end = _SCAN(text, 0)  # json.loads' C scanner, minus its per-call overhead
            if end != len(text):
                raise ValueError("extra data after the JSON value")
        except (ValueError, StopIteration):
            self.failure = _Failure("malformed", f"a stream event is not JSON: {data[:80]!r}")
            return
        if not isinstance(event, dict):
            self.failure = _Failure("malformed", "a stream event is not a JSON object")
            return
        if "error" in event:
            self.failure = _Failure("stream_error", _error_message(data))
            return
        try:
            if self.response_id is None:
                self.response_id = event.get("id")
            if event.get("usage"):
                self.usage = event["usage"]
            for choice in event.get("choices") or ():
                piece = (
                    (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
                )
                if piece:
                    if not isinstance(piece, str):
                        raise TypeError(f"a token is {type(piece).__name__}, not text")
                    self.pieces.append(piece)
                    self.arrivals.append(arrived)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        except (AttributeError, TypeError) as error:
            self.failure = _Failure("malformed", f"a stream event is not OpenAI JSON ({error!r})")
