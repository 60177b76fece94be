"""A lean HTTP/1.1 client on asyncio protocols, built for timing.

Every read is stamped with time.perf_counter() the moment the event loop hands the bytes over,
before any parsing, and each server-sent event keeps the stamp of the read that completed it.
So a token's recorded arrival does not wait for the parsing of other streams' tokens, and
with 64 streams in flight the timestamps stay within a fraction of a millisecond of the wire
(benchmarks/api_load_bench.py). General-purpose clients (aiohttp, httpx) stamp only when the
awaiting coroutine is resumed; httpx's async client also sustains only ~400 requests/s here.

The loop is shared by every stream, so whatever runs on it between one response's last byte
and the next request's write delays every other stream's reads, and requests end in bunches
(all the more when they started together). Hence: the send stamp is taken after the request
is set up, right before the write (on loopback the write hands the bytes to the server); the
response future is awaited directly, one timer guarding the stall and overall limits
(asyncio.wait cost a task hop and a timer per request); server-sent events go to the caller's
`on_event` as each completes, so no parsing piles up at the end of a stream.

Scope: what OpenAI-compatible endpoints need. Keep-alive connection pools per host, bodies by
Content-Length, chunked or until close, TLS for https, request and idle timeouts, a cap on a
body's size (cause `too_large`). No proxies, redirects, compression (Accept-Encoding:
identity) or HTTP/2.

Server-sent events: each `data:` line is handed over with the name of its event (`event:`
line before it, "" when none); an `error:` line (llama.cpp's server reports stream errors so)
is handed over as event "error". Comments (`: keep-alive`) and other fields are skipped.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from infermeter.units import MIB_BYTES

EventHook = Callable[[float, bytes, str], None]  # (arrival, data, event name)
MAX_BODY_BYTES = 8 * MIB_BYTES  # a completion this large is no measurement: refuse it, bounded


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A loop to time requests on, and its name: uvloop's where it is installed (a dependency
    on Linux and macOS), else asyncio's own.

    uvloop hands reads over with less work on the loop: at 64 streams on 2 cores its p99
    timing overhead was 0.53-0.68 ms against asyncio's 0.56-0.83 ms in four runs each
    (benchmarks/api_load_bench.py). Timestamps are time.perf_counter() on either.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), f"uvloop {uvloop.__version__}"


class HttpFailure(Exception):
    """A transport-level failure, with the client's cause name (see client.py)."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


@dataclass
class Response:
    """An HTTP response: status, reason, lower-cased headers and the body read so far."""

    status: int = 0
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytearray = field(default_factory=bytearray)
    events: list[tuple[float, bytes, str]] = field(default_factory=list)  # (arrival, data, name)
    # Where given, each event goes to on_event(arrival, data, name) as it completes instead of
    # into `events`: the caller parses as the stream goes, not all at once when it ends.
    on_event: EventHook | None = None
    head_at: float | None = None  # when the status line and headers were complete
    done_at: float | None = None  # when the last byte of the body arrived
    keep_alive: bool = True


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time as the bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_read = time.perf_counter()
        self._future: asyncio.Future[Response] | None = None
        self._response = Response()
        self._sse = False
        self._buffer = bytearray()
        self._line = bytearray()
        self._state = "idle"  # idle | head | length | chunk-size | chunk-data | chunk-end | close
        self._left = 0
        self._event_name = ""
        self._received = 0  # body bytes of the response in flight
        self._max_body = MAX_BODY_BYTES

    # ---- asyncio protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = self.last_read = time.perf_counter()
        if self._future is None or self._future.done():
            self.closed = True  # bytes nobody asked for: this connection cannot be trusted
            if self.transport is not None:
                self.transport.close()
            return
        self._buffer += data
        try:
            self._parse(now)
        except (ValueError, IndexError) as error:
            self._fail("malformed", f"bad HTTP response: {error}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is None or self._future.done():
            return
        if self._state == "close":  # a body that ends with the connection
            self._finish(time.perf_counter(), keep_alive=False)
        elif self._state == "head" and not self._buffer and self._response.status == 0:
            self._fail("disconnected", f"the server closed the connection ({exc or 'EOF'})")
        else:
            self._fail("stream_cut", f"the connection closed mid-response ({exc or 'EOF'})")

    # ---- requests ----------------------------------------------------------------------
    def send(
        self,
        request: bytes,
        sse: bool,
        on_event: EventHook | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> tuple[asyncio.Future[Response], float]:
        """Write one request; returns its response's future and the time it was written.

        Everything is set up before the clock is read, so the stamp is taken right before the
        bytes go to the socket (on loopback the write itself hands them to the server).
        """
        assert self.transport is not None
        self._future = future = asyncio.get_running_loop().create_future()
        self._response = Response(on_event=on_event)
        self._sse = sse
        self._buffer.clear()
        self._line.clear()
        self._state = "head"
        self._event_name = ""
        self._received = 0
        self._max_body = max_body_bytes
        sent = self.last_read = time.perf_counter()  # the idle timer starts with the request
        self.transport.write(request)
        return future, sent

    def expire(self, detail: str) -> None:
        """Fail the request in flight with a timeout and drop the connection."""
        if self._future is not None and not self._future.done():
            self._future.set_exception(HttpFailure("timeout", detail))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, cause: str, detail: str) -> None:
        self.closed = True
        if self._future is not None and not self._future.done():
            self._future.set_exception(HttpFailure(cause, detail))
        if self.transport is not None:
            self.transport.close()

    def _finish(self, now: float, keep_alive: bool) -> None:
        response = self._response
        response.done_at = now
        response.keep_alive = keep_alive and response.keep_alive
        self._state = "idle"
        if self._line and self._sse:
            self._event(self._line, now)
            self._line.clear()
        if self._future is not None and not self._future.done():
            self._future.set_result(response)

    # ---- parsing -----------------------------------------------------------------------
    def _parse(self, now: float) -> None:
        buf = self._buffer
        while True:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise ValueError("headers longer than 64 KiB")
                    return
                self._head(bytes(buf[:end]), now)
                del buf[: end + 4]
            elif state == "length":
                if not buf:
                    return
                piece = bytes(buf[: self._left])
                del buf[: len(piece)]
                self._left -= len(piece)
                self._body(piece, now)
                if self._left == 0:
                    self._finish(now, keep_alive=True)
                    return
            elif state == "chunk-size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0].strip() or b"x", 16)
                del buf[: end + 2]
                self._left = size
                self._state = "chunk-data" if size else "chunk-end"
            elif state == "chunk-data":
                if len(buf) < self._left + 2:
                    if len(buf) > self._left:  # keep the CRLF for the next read
                        return
                    piece = bytes(buf)
                    buf.clear()
                    self._left -= len(piece)
                    self._body(piece, now)
                    return
                piece = bytes(buf[: self._left])
                if buf[self._left : self._left + 2] != b"\r\n":
                    raise ValueError("chunk without CRLF")
                del buf[: self._left + 2]
                self._body(piece, now)
                self._state = "chunk-size"
            elif state == "chunk-end":  # trailers, then an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._finish(now, keep_alive=True)
                    return
            elif state == "close":
                if buf:
                    piece = bytes(buf)
                    buf.clear()
                    self._body(piece, now)
                return
            else:  # idle: bytes after a complete response
                if buf:
                    raise ValueError("unexpected bytes after the response")
                return

    def _head(self, head: bytes, now: float) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        code, _, reason = rest.partition(" ")
        response = self._response
        response.status, response.reason, response.head_at = int(code), reason, now
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response.headers[name.strip().lower()] = value.strip()
        connection = response.headers.get("connection", "").lower()
        response.keep_alive = version == "HTTP/1.1" and connection != "close"
        # An error, or a JSON answer to a streamed request, is a body to read whole.
        kind = response.headers.get("content-type", "").lower()
        self._sse = self._sse and response.status < 400 and "json" not in kind
        if response.status in (204, 304) or 100 <= response.status < 200:
            self._finish(now, keep_alive=True)
        elif "chunked" in response.headers.get("transfer-encoding", "").lower():
            self._state = "chunk-size"
        elif "content-length" in response.headers:
            self._left = int(response.headers["content-length"])
            self._state = "length"
            if self._left == 0:
                self._finish(now, keep_alive=True)
        else:
            self._state = "close"

    def _body(self, piece: bytes, now: float) -> None:
        self._received += len(piece)
        if self._received > self._max_body:
            self._fail(
                "too_large",
                f"body over {self._max_body:,} bytes, not read further (--max-body-mib)",
            )
            self._buffer.clear()
            self._state = "idle"
            return
        if not self._sse:
            self._response.body += piece
            return
        line = self._line
        line += piece
        while True:
            end = line.find(b"\n")
            if end < 0:
                return
            self._event(line[:end], now)
            del line[: end + 1]

    def _event(self, line: bytes | bytearray, now: float) -> None:
        if line.startswith(b"data:"):
            data, name = bytes(line[5:]).strip(), self._event_name
        elif line.startswith(b"error:"):
            data, name = bytes(line[6:]).strip(), "error"
        elif line.startswith(b"event:"):
            self._event_name = bytes(line[6:]).strip().decode("utf-8", "replace")
            return
        else:
            if not line.strip():  # a blank line ends the event (and its name)
                self._event_name = ""
            return
        hook = self._response.on_event
        if hook is None:
            self._response.events.append((now, data, name))
        else:
            hook(now, data, name)


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port: what a pooled connection is for."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of `url` (port 443 for https, 80 for http when none is given)."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname or "", port)


class HttpPool:
    """Keep-alive connections to one origin, at most `limit` at a time."""

    def __init__(self, origin: Origin, limit: int = 1024, connect_timeout_s: float = 10.0) -> None:
        self.origin = origin
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        default = 443 if origin.scheme == "https" else 80
        self.host_header = origin.host if origin.port == default else f"{origin.host}:{origin.port}"

    async def _connect(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Connection,
                    self.origin.host,
                    self.origin.port,
                    ssl=self._ssl,
                    server_hostname=self.origin.host if self._ssl else None,
                ),
                self.connect_timeout_s,
            )
        except asyncio.TimeoutError:
            raise HttpFailure("timeout", "no connection within the connect timeout") from None
        except OSError as error:
            raise HttpFailure("connect", f"cannot connect to {self.host_header}: {error}") from None
        return conn

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        sse: bool = False,
        stall_timeout_s: float = 120.0,
        timeout_s: float = 600.0,
        on_event: EventHook | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> tuple[Response, float]:
        """Send one request; returns the response and the perf_counter time it was written.

        With `on_event`, server-sent events are handed to it as they arrive (see Response).
        Raises HttpFailure (connect, disconnected, timeout, stream_cut, malformed, too_large).
        """
        async with self._slots:
            conn = await self._connect()
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            lines += [f"Content-Length: {len(body)}", "Accept-Encoding: identity", "", ""]
            future, sent = conn.send(
                "\r\n".join(lines).encode("latin-1") + body, sse, on_event, max_body_bytes
            )
            # One timer guards the stall and overall limits; the response is awaited directly
            # (asyncio.wait would add a task hop and a timer per wake-up to every request).
            loop = asyncio.get_running_loop()
            deadline = sent + timeout_s

            def check() -> None:
                nonlocal timer
                if future.done():
                    return
                now = time.perf_counter()
                wait = min(stall_timeout_s - (now - conn.last_read), deadline - now)
                if wait > 0:
                    timer = loop.call_later(wait, check)
                    return
                what = "over the request timeout" if now >= deadline else "no byte for"
                limit = timeout_s if now >= deadline else stall_timeout_s
                conn.expire(f"{what} {limit:g} s")

            timer = loop.call_later(min(stall_timeout_s, timeout_s), check)
            reuse = False
            try:
                response = await future
                reuse = response.keep_alive
                return response, sent
            except BaseException:
                if not future.done():
                    future.cancel()
                    conn.abort()
                raise
            finally:
                timer.cancel()
                if reuse and not conn.closed:
                    self._idle.append(conn)
                elif not conn.closed:
                    conn.abort()

    def close(self) -> None:
        """Abort every idle connection."""
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
