"""An async client for OpenAI-compatible servers that times every request and survives faults.

One call, `ApiClient.complete(prompt, max_tokens)`, sends a completions or chat-completions
request, streaming or not, and returns a `RequestRecord`: end-to-end time, time to first
token, the arrival time of every streamed chunk, the usage the server reported, and every
attempt with its cause when something failed.

A response counts only on positive evidence: at least one generated token (a chunk of
content, reasoning, tool-call or completion text; a chunk of empty text is a token whose text
is not yet whole, as llama.cpp's server sends half a UTF-8 character) or a usage count, and a
finish reason. A stream needs no `[DONE]` when its body ended cleanly with a finish reason.
Tokens are never counted from chunks: the count is the server's usage (its running usage per
chunk where it sends one) and, where it reports none, the caller counts the text
(`RequestRecord.generated_text`) with a tokenizer. Chunk gaps are inter-token latencies only
where every chunk is known to hold one token (`RequestRecord.itl_s`).

Faults are retried a bounded number of times with full-jitter exponential backoff; a 429 or
503 with Retry-After waits what the server asked. Causes recorded per attempt:

    connect       the connection was refused or could not be made
    disconnected  the server closed the connection before answering
    timeout       no connection, no byte for `stall_timeout_s`, or over `timeout_s` in all
    http_429      rate limited                      http_5xx   the server failed
    http_4xx      the request was refused (401, 404, 400): not retried
    malformed     the body, a stream event or a usage count was not what OpenAI's API sends
                  (a usage count: not retried, the server will send it again)
    stream_cut    the stream ended with no finish reason and no [DONE], or mid-body
    incomplete    the answer ended (or sent [DONE]) without a finish reason
    empty         no token and no usage count: nothing proves a completion happened
    stream_error  the server reported an error in band (a 200 body, a data event holding
                  {"error": ...}, an `event: error` or an `error:` line)
    request_error the same, for an error that will repeat (context exceeded, bad request):
                  not retried
    too_large     the body passed `max_body_bytes`: not retried
A failure that is not retried because the server will answer the same again sets
`RequestRecord.repeats`, so a run's end line can say a rerun will not help.

Timing uses time.perf_counter (CLOCK_MONOTONIC on Linux), stamped by api/http.py the moment
bytes are read, before any parsing: the client neither limits the load it puts on a server nor
blurs its timings (benchmarks/api_load_bench.py measures both).
The API key goes only into the Authorization header: never into a record, a log or a message;
credentials in the URL (user:key@host) are sent as Basic auth and redacted everywhere else.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from infermeter.backends.api.http import (
    MAX_BODY_BYTES,
    HttpFailure,
    HttpPool,
    Origin,
    Response,
)
from infermeter.errors import UserError
from infermeter.units import MIB_BYTES, one_of, plural

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
        "incomplete",
        "empty",
        "stream_error",
    }
)
# Causes a resend meets again as it is: the server refused the request or reported an error
# that will repeat, or its answer was larger than the cap.
REPEATING = frozenset({"http_4xx", "request_error", "too_large"})
# `infermeter serve` on its engine backend says (header x-infermeter-stream) that it streams a
# sequence only once it is generated: such a stream's TTFT and gaps time nothing real.
AFTER_GENERATION = (
    "the server streamed after generating (x-infermeter-stream: after-generation): "
    "TTFT and chunk gaps are not the model's"
)
# Optional request fields a server may refuse; dropped one at a time (api/features.py).
OPTIONAL_FEATURES = ("stream_options", "ignore_eos", "min_tokens")


def split_credentials(url: str) -> tuple[str, str | None]:
    """(url without user:password@, the userinfo or None). Never print the second."""
    parts = urlsplit((url or "").strip())
    if "@" not in parts.netloc:
        return (url or "").strip(), None
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=host)), unquote(userinfo)


def normalize_base_url(url: str) -> str:
    """http(s)://host[:port][/path] without a trailing slash, or a UserError naming the fix.

    A query or fragment is refused: it was dropped from requests, and a key in it
    (`?api_key=...`) would be stored with the run. Messages never show userinfo or a query."""
    text = (url or "").strip()
    parts = urlsplit(text)
    shown = repr(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="",
                                           fragment="")))  # fmt: skip
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--base-url {shown} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1"
        )
    if parts.query or parts.fragment:
        raise UserError(
            f"--base-url {shown} carries a query or fragment ('?...' / '#...'), which requests "
            "would not send: give the URL without it, and a key with --api-key or "
            "$OPENAI_API_KEY"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UserError(f"--base-url {shown} has an invalid port") from None
    return text.rstrip("/")


@dataclass(frozen=True)
class ApiConfig:
    """Where and how to send requests. The key is kept out of repr() and to_dict().

    `features` are the optional request fields sent (OPTIONAL_FEATURES): `stream_options`
    asks a stream for usage, `ignore_eos` and `min_tokens` force the length. Credentials in
    `base_url` move to `basic_auth` (sent as HTTP Basic auth, never stored or printed).
    Times are seconds; `max_body_bytes` caps a response body (bytes: any number may be given,
    e.g. --max-body-mib x 2**20; checked here, the one place, and kept as a whole number).
    """

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
    features: tuple[str, ...] = OPTIONAL_FEATURES
    temperature: float | None = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    max_connections: int = 1024
    max_body_bytes: float = MAX_BODY_BYTES
    basic_auth: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url, userinfo = split_credentials(self.base_url)
        object.__setattr__(self, "base_url", normalize_base_url(url))
        if userinfo is not None and self.basic_auth is None:
            object.__setattr__(self, "basic_auth", userinfo)
        if self.endpoint not in ("completions", "chat"):
            raise UserError(f"endpoint must be completions or chat, got {self.endpoint!r}")
        if self.retries < 0:
            raise UserError(f"--retries must be 0 or more, got {self.retries}")
        flags = {"timeout_s": "--timeout", "connect_timeout_s": "connect_timeout_s",
                 "stall_timeout_s": "--stall-timeout"}  # fmt: skip
        for name, flag in flags.items():
            if getattr(self, name) <= 0:
                raise UserError(f"{flag} must be a positive number of seconds, got "
                                f"{getattr(self, name)}")  # fmt: skip
        if not (math.isfinite(self.max_body_bytes) and self.max_body_bytes >= 1024):  # NaN too
            raise UserError("--max-body-mib must be a finite number of MiB, at least 1/1024 "
                            f"(1 KiB), got {self.max_body_bytes / MIB_BYTES:g}")  # fmt: skip
        object.__setattr__(self, "max_body_bytes", int(self.max_body_bytes))
        unknown = set(self.features) - set(OPTIONAL_FEATURES)
        if unknown:
            raise UserError(
                f"unknown request feature(s) {one_of(sorted(unknown), 'and')}; known: "
                f"{one_of(OPTIONAL_FEATURES, 'and')}"
            )

    @property
    def forced_length(self) -> bool:
        """Whether the request asks the server for exactly max_tokens tokens."""
        return "ignore_eos" in self.features or "min_tokens" in self.features

    @property
    def url(self) -> str:
        """The endpoint's full URL (completions or chat/completions under base_url)."""
        path = "chat/completions" if self.endpoint == "chat" else "completions"
        return f"{self.base_url}/{path}"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the key and URL credentials, for the store."""
        data = asdict(self)
        data.pop("api_key")
        data.pop("basic_auth")
        data["features"] = list(self.features)
        data["forced_length"] = self.forced_length
        data["authenticated"] = self.api_key is not None or self.basic_auth is not None
        return data


@dataclass
class Attempt:
    """One HTTP attempt of a request: its cause (None: it succeeded) and its times in s."""

    cause: str | None
    status: int | None = None
    detail: str | None = None
    duration_s: float = 0.0
    waited_s: float = 0.0  # backoff slept after this attempt


@dataclass
class RequestRecord:
    """One request as the client saw it (the last attempt's timing; every attempt's cause).

    chunk_times_s: arrival of every token-bearing stream chunk, from sent_at (s). A chunk may
    hold several tokens; chunk_tokens[i] is its token count where the server's running usage
    tells (else None). total_s spans every attempt and backoff: what a user waited.
    """

    ok: bool
    cause: str | None = None
    detail: str | None = None
    status: int | None = None
    sent_at: float = 0.0  # perf_counter when the last attempt was sent
    e2e_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int | None] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""  # content (chat) or text (completions)
    reasoning: str = ""  # reasoning_content / reasoning deltas
    tool_calls: str = ""  # tool-call names and arguments, as received
    response_id: str | None = None
    notes: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    repeats: bool = False  # failed in a way the server will repeat (see the module docstring)

    @property
    def retries(self) -> int:
        """Attempts after the first (a count)."""
        return max(0, len(self.attempts) - 1)

    @property
    def generated_text(self) -> str:
        """Everything the model generated: reasoning, content and tool calls."""
        return self.reasoning + self.text + self.tool_calls

    @property
    def one_token_per_chunk(self) -> bool:
        """Whether each chunk is known to hold exactly one token (usage says so)."""
        n = len(self.chunk_times_s)
        if n == 0:
            return False
        if all(t is not None for t in self.chunk_tokens) and self.chunk_tokens:
            return all(t == 1 for t in self.chunk_tokens)
        return self.completion_tokens == n

    @property
    def chunk_gaps_s(self) -> list[float]:
        """Gaps between token-bearing chunks (s): inter-token latencies only when
        one_token_per_chunk."""
        t = self.chunk_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def itl_s(self) -> list[float] | None:
        """Inter-token latencies (s), or None when tokens per chunk are unknown."""
        return self.chunk_gaps_s if self.one_token_per_chunk else None

    def summary(self) -> dict[str, Any]:
        """The raw details kept with a stored measurement (text left out)."""
        gaps = [round(x, 7) for x in self.chunk_gaps_s]
        per_token = self.one_token_per_chunk
        return {
            "ok": self.ok,
            "cause": self.cause,
            "status": self.status,
            "e2e_s": self.e2e_s,
            "ttft_s": self.ttft_s,
            "total_s": self.total_s,
            "itl_s": gaps if per_token else None,
            "chunk_gaps_s": None if per_token else gaps,
            "stream_chunks": len(self.chunk_times_s),
            "chunk_tokens": self.chunk_tokens
            if any(t is not None for t in self.chunk_tokens)
            else None,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "finish_reason": self.finish_reason,
            "generated_chars": len(self.generated_text),
            "reasoning_chars": len(self.reasoning),
            "response_id": self.response_id,
            "notes": list(self.notes),
            "retries": self.retries,
            "attempts": [asdict(a) for a in self.attempts],
            "repeats": self.repeats,
        }


class _Failure(Exception):
    def __init__(
        self,
        cause: str,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
        repeats: bool = False,
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        # The server will answer the same again (not retried; a rerun meets it too).
        self.repeats = repeats or cause in REPEATING


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


def _error_text(error: Any) -> str:
    """The message of an error value: OpenAI's {"message": ...}, TGI's string, FastAPI's
    {"detail": ...}, trimmed to one line."""
    message: Any = error
    if isinstance(error, dict):
        message = error.get("message", error.get("detail", error.get("error", error)))
        if isinstance(message, dict):
            message = message.get("message", message)
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    return " ".join(text.split())[:300]


def _error_message(body: bytes) -> str:
    """The server's own error message from a body, trimmed."""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.decode("utf-8", errors="replace").split())[:300]
    if isinstance(data, dict) and "error" in data:
        return _error_text(data["error"])
    return _error_text(data)


_REPEATING = (
    "context length",
    "context window",
    "maximum context",
    "too long",
    "exceed",
    "validation error",
    "must have less than",
    "too many tokens",
    "invalid",
)


def in_band_failure(error: Any) -> _Failure:
    """An error a server reported inside a 200 answer or a stream, with its own message.

    It is `request_error` (not retried) when it will repeat: a 4xx code or status in it, an
    invalid-request type, or a message about the context length; else `stream_error`.
    """
    message = _error_text(error)
    repeats = any(word in message.lower() for word in _REPEATING)
    if isinstance(error, dict):
        inner = error.get("error") if isinstance(error.get("error"), dict) else error
        for key in ("code", "status", "status_code"):
            code = inner.get(key)
            if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
                repeats = True
            if isinstance(code, str) and "context_length" in code:
                repeats = True
        kind = str(inner.get("type") or inner.get("error_type") or "").lower()
        if "invalid_request" in kind or "badrequest" in kind or "validation" in kind:
            repeats = True
    return _Failure("request_error" if repeats else "stream_error", message or "error")


def _count(value: Any, name: str) -> int | None:
    """A usage count: a whole number >= 0 or absent; anything else is a malformed answer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Failure("malformed", f"usage.{name} is {value!r}, not a token count", repeats=True)
    return value


def _usage(usage: Any) -> tuple[int | None, int | None] | None:
    """(prompt_tokens, completion_tokens) of a usage object; None without one."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise _Failure("malformed", f"usage is {type(usage).__name__}, not an object", repeats=True)
    return (
        _count(usage.get("prompt_tokens"), "prompt_tokens"),
        _count(usage.get("completion_tokens"), "completion_tokens"),
    )


def _pieces(part: dict[str, Any], chat: bool) -> tuple[str, str, str]:
    """(text, reasoning, tool-call text) of a stream delta / choice, or a final message."""
    if not chat:
        text = part.get("text")
        return (text if isinstance(text, str) else "", "", "")
    text = part.get("content")
    reasoning = part.get("reasoning_content") or part.get("reasoning") or ""
    tools = ""
    for call in part.get("tool_calls") or ():
        function = call.get("function") or {} if isinstance(call, dict) else {}
        tools += str(function.get("name") or "") + str(function.get("arguments") or "")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"content is {type(text).__name__}, not text")
    if not isinstance(reasoning, str):
        raise TypeError(f"reasoning is {type(reasoning).__name__}, not text")
    return (text or "", reasoning, tools)


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
        self._secrets = [s for s in (config.api_key, config.basic_auth) if s]
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        elif config.basic_auth:
            token = base64.b64encode(config.basic_auth.encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
            self._secrets.append(token)
        if config.basic_auth and ":" in config.basic_auth:
            self._secrets.append(config.basic_auth.split(":", 1)[1])

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _pool(self) -> HttpPool:
        if self._http is None:
            self._http = HttpPool(
                Origin.of(self.config.base_url),
                self.config.max_connections,
                self.config.connect_timeout_s,
            )
        return self._http

    async def close(self) -> None:
        """Close the HTTP connections; the client can be closed twice."""
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
        on_event: Any = None,
    ) -> tuple[Response, float]:
        c = self.config
        try:
            return await self._pool().request(
                method, f"{self._path}/{endpoint}", self._headers, payload, sse,
                c.stall_timeout_s, c.timeout_s, on_event, c.max_body_bytes,
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
        """The JSON body of a request: `features` add stream_options, ignore_eos, min_tokens."""
        c = self.config
        stream = c.stream if stream is None else stream
        body: dict[str, Any] = {"model": c.model, "max_tokens": max_tokens, "stream": stream}
        if c.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if c.temperature is not None:
            body["temperature"] = c.temperature
        if stream and "stream_options" in c.features:
            body["stream_options"] = {"include_usage": True}
        if "ignore_eos" in c.features:
            body["ignore_eos"] = True
        if "min_tokens" in c.features:
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
        return await self.send_body(body)

    async def send_body(self, body: dict[str, Any]) -> RequestRecord:
        """Send a request body as it is (see `body`), retrying faults; returns its record."""
        payload = json.dumps(body).encode()
        record = RequestRecord(ok=False)
        first = time.perf_counter()
        for attempt_no in range(self.config.retries + 1):
            started = time.perf_counter()
            try:
                await self._attempt(payload, bool(body.get("stream")), record)
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
                record.repeats = failure.repeats
                if (
                    failure.cause not in RETRYABLE
                    or failure.repeats
                    or attempt_no == self.config.retries
                ):
                    break
                wait = self._backoff(attempt_no, failure.retry_after)
                if wait is None:
                    record.detail = (
                        f"{attempt.detail}; Retry-After {failure.retry_after:.0f} s exceeds the "
                        f"{self.config.retry_after_max_s:.0f} s limit"
                    )
                    break
                attempt.waited_s = wait
                await asyncio.sleep(wait)
                continue
            record.attempts.append(
                Attempt(None, record.status, None, time.perf_counter() - started)
            )
            record.ok, record.cause, record.detail = True, None, None
            break
        record.total_s = time.perf_counter() - first
        return record

    def _backoff(self, attempt_no: int, retry_after: float | None) -> float | None:
        """Full jitter, doubling per attempt; a server's Retry-After wins (plus up to 10%)."""
        c = self.config
        if retry_after is not None:
            if retry_after > c.retry_after_max_s:
                return None
            return retry_after * (1.0 + 0.1 * self._rng.random())
        return self._rng.uniform(0.0, min(c.backoff_max_s, c.backoff_s * 2**attempt_no))

    async def _attempt(self, payload: bytes, stream: bool, record: RequestRecord) -> None:
        record.chunk_times_s, record.chunk_tokens, record.notes = [], [], []
        record.text = record.reasoning = record.tool_calls = ""
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
        if stream and response.headers.get("x-infermeter-stream") == "after-generation":
            record.notes.append(AFTER_GENERATION)
        if response.status >= 400:
            self._raise_http(
                response.status, bytes(response.body), response.headers.get("retry-after")
            )
        record.e2e_s = (response.done_at or time.perf_counter()) - sent
        if events is not None and not response.body:  # api/http.py kept a JSON answer whole
            self._read_events(response, sent, record, events)
        else:  # a JSON answer (also a JSON error to a streamed request)
            self._parse_body(bytes(response.body), record)
        self._check_evidence(record)

    def _raise_http(self, status: int, raw: bytes, retry_after: str | None) -> None:
        message = self._redact(_error_message(raw))
        if status == 429:
            raise _Failure("http_429", message or "rate limited", status, _retry_after(retry_after))
        if status >= 500:
            wait = _retry_after(retry_after) if status == 503 else None
            raise _Failure("http_5xx", message or f"server error {status}", status, wait)
        raise _Failure("http_4xx", message or f"refused with {status}", status)

    def _parse_body(self, raw: bytes, record: RequestRecord) -> None:
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise _Failure("malformed", f"the response is not JSON ({error})") from error
        if isinstance(data, dict) and data.get("error"):
            raise in_band_failure(data["error"])
        try:
            choice = data["choices"][0]
            part = (choice.get("message") or {}) if self.config.endpoint == "chat" else choice
            record.text, record.reasoning, record.tool_calls = _pieces(
                part, self.config.endpoint == "chat"
            )
            record.finish_reason = choice.get("finish_reason")
            record.response_id = data.get("id")
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise _Failure("malformed", f"the response is not OpenAI JSON ({error!r})") from error
        counts = _usage(data.get("usage"))
        if counts is not None:
            record.prompt_tokens, record.completion_tokens = counts

    @staticmethod
    def _check_evidence(record: RequestRecord) -> None:
        """Raise unless the answer proves a completion: a token or a usage count, and a
        finish reason."""
        tokens = bool(record.generated_text) or bool(record.chunk_times_s)
        if not tokens and record.completion_tokens is None:
            raise _Failure("empty", "the answer held no token and no usage count")
        if not record.finish_reason:
            raise _Failure("incomplete", "the answer ended without a finish reason")

    def _read_events(
        self, response: Response, sent: float, record: RequestRecord, events: _StreamEvents
    ) -> None:
        for arrived, data, name in response.events:  # any the connection kept (no hook)
            events(arrived, data, name)
        if events.failure is not None:
            raise events.failure
        record.response_id = events.response_id
        record.finish_reason = events.finish_reason
        if events.usage is not None:
            record.prompt_tokens, record.completion_tokens = events.usage
        record.chunk_times_s = [t - sent for t in events.arrivals]
        record.chunk_tokens = events.chunk_tokens
        record.text = "".join(events.text)
        record.reasoning = "".join(events.reasoning)
        record.tool_calls = "".join(events.tools)
        if record.chunk_times_s:
            record.ttft_s = record.chunk_times_s[0]
        if not events.done:
            if not events.finish_reason:
                raise _Failure(
                    "stream_cut",
                    f"the stream ended after {plural(len(record.chunk_times_s), 'chunk')} with no "
                    "finish reason and no [DONE]",
                )
            record.notes.append("no [DONE]: the body ended cleanly after the finish reason")


class _StreamEvents:
    """A stream's events, parsed one by one as they arrive.

    api/http.py calls this after stamping the read that completed the event, so the parsing
    never delays the event's own timestamp; spread over the stream it costs ~1 us an event,
    where parsing them all when the stream ends held the event loop for ~40 us per request
    (32 tokens) just as the next request was due to go out. The first fault is kept and
    raised when the response is read; later events are ignored.

    A chunk bears tokens when it carries generated text of any kind (content, reasoning,
    tool calls, completion text) or empty text with neither a role nor a finish reason (a
    token whose characters are not yet whole). Where a chunk carries running usage, its
    token count is the growth of usage.completion_tokens.
    """

    __slots__ = (
        "arrivals",
        "chat",
        "chunk_tokens",
        "done",
        "failure",
        "finish_reason",
        "reasoning",
        "response_id",
        "text",
        "tools",
        "usage",
    )

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: list[str] = []
        self.arrivals: list[float] = []
        self.chunk_tokens: list[int | None] = []
        self.done = False
        self.failure: _Failure | None = None
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.usage: tuple[int | None, int | None] | None = None

    def __call__(self, arrived: float, data: bytes, name: str = "") -> None:
        if self.failure is not None:
            return
        if name in ("ping", "keepalive", "keep-alive"):
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
            if name == "error":  # an error field or event whose data is plain text
                self.failure = in_band_failure(data.decode("utf-8", "replace"))
            else:
                self.failure = _Failure("malformed", f"a stream event is not JSON: {data[:80]!r}")
            return
        if name == "error" or (isinstance(event, dict) and "error" in event):
            error = event.get("error", event) if isinstance(event, dict) else event
            self.failure = in_band_failure(error if error is not None else event)
            return
        if not isinstance(event, dict):
            self.failure = _Failure("malformed", "a stream event is not a JSON object")
            return
        try:
            self._chunk(arrived, event)
        except _Failure as failure:
            self.failure = failure
        except (AttributeError, TypeError) as error:
            self.failure = _Failure("malformed", f"a stream event is not OpenAI JSON ({error!r})")

    def _chunk(self, arrived: float, event: dict[str, Any]) -> None:
        if self.response_id is None:
            self.response_id = event.get("id")
        before = self.usage[1] if self.usage is not None else None
        usage = _usage(event.get("usage"))
        if usage is not None:
            self.usage = usage
        bears = False
        for choice in event.get("choices") or ():
            part = (choice.get("delta") or {}) if self.chat else choice
            text, reasoning, tools = _pieces(part, self.chat)
            finish = choice.get("finish_reason")
            if text or reasoning or tools:
                bears = True
                self.text.append(text)
                self.reasoning.append(reasoning)
                self.tools.append(tools)
            elif (
                ("content" in part if self.chat else "text" in part)
                and not finish
                and "role" not in part
            ):
                bears = True  # a token whose text is not whole yet (half a UTF-8 character)
            if finish:
                self.finish_reason = finish
        if bears:
            self.arrivals.append(arrived)
            tokens = None  # running usage in this chunk and every one before: its growth
            running = before is not None or not self.chunk_tokens
            if usage is not None and usage[1] is not None and running:
                tokens = usage[1] - (before or 0)
            self.chunk_tokens.append(tokens)
