"""Real local servers for the API tests: a scriptable faulty server and paths to shared data.

`FaultServer` is a raw asyncio HTTP/1.1 server on 127.0.0.1 (a free port, its own thread). By
default it is a healthy OpenAI-compatible server that counts one prompt token per word plus
`offset` and returns exactly max_tokens tokens (optionally after `delay_s`). Faults are queued
with `script(...)`: each generation request takes the next one.

    "429"        429 with Retry-After: `retry_after` (seconds)
    "500"        500 with an OpenAI error body
    "401"        401 (bad key), "404": no such model; "echo401": 401 quoting the request's
                 Authorization header back (as careless servers do)
    "malformed"  200 with a body that is not JSON
    "cut"        a stream (or body) that stops half-way and closes the connection
    "stall"      accept the request and never answer
    "close"      close the connection without a byte
    "short"      a normal answer with one token fewer than asked
    Raw(...)     these exact bytes (a recorded or hand-written answer), then close or not

`refuse={"stream_options"}` answers 400 to any request carrying one of those fields, naming
it as pydantic-based servers do ("stream_options: Extra inputs are not permitted").
`transcript(path)` reads a recorded answer (tests/data/api_transcripts) as a Raw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA_TOKENIZER = SHARED_DATA / "llama_tokenizer.model"
TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "api_transcripts"


@dataclass
class Raw:
    """An answer as bytes on the wire: each write after its delay (s), then close or not."""

    writes: list[tuple[float, bytes]] = field(default_factory=list)
    close: bool = True
    request: dict[str, Any] | None = None  # the request that was recorded with it

    @property
    def body(self) -> bytes:
        return b"".join(w for _, w in self.writes)


def transcript(name: str | Path) -> Raw:
    """A recorded answer from tests/data/api_transcripts/NAME.json, byte for byte."""
    path = Path(name) if Path(name).is_file() else TRANSCRIPTS / f"{name}.json"
    data = json.loads(path.read_text())
    writes = []
    for write in data["response"]["writes"]:
        raw = base64.b64decode(write["b64"]) if "b64" in write else write["text"].encode()
        writes.append((float(write.get("delay_s", 0.0)), raw))
    return Raw(writes, bool(data["response"].get("close", False)), data.get("request"))


def chunked(pieces: Iterable[bytes]) -> bytes:
    """HTTP/1.1 chunked encoding of `pieces`, with the closing zero chunk."""
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces if p) + b"0\r\n\r\n"


def sse(
    events: Iterable[dict | str],
    done: bool = True,
    content_type: str = "text/event-stream",
    status: str = "200 OK",
    delays: Iterable[float] | None = None,
) -> Raw:
    """A chunked SSE answer: one chunk per event (`data: ...`, or a raw line block given as
    a str starting with a field name such as "error:" or "event:"), [DONE] when `done`."""
    blocks = []
    for event in events:
        if isinstance(event, str) and event.split(":", 1)[0] in ("error", "event", "", "data"):
            blocks.append(event.encode() + b"\n\n")
        else:
            text = event if isinstance(event, str) else json.dumps(event)
            blocks.append(f"data: {text}\n\n".encode())
    if done:
        blocks.append(b"data: [DONE]\n\n")
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    ).encode()
    waits = list(delays) if delays is not None else [0.0] * len(blocks)
    waits += [0.0] * (len(blocks) - len(waits))
    writes = [(0.0, head)]
    writes += [
        (w, f"{len(b):x}\r\n".encode() + b + b"\r\n") for w, b in zip(waits, blocks, strict=False)
    ]
    writes.append((0.0, b"0\r\n\r\n"))
    return Raw(writes, close=False)


def json_answer(payload: Any, status: str = "200 OK") -> Raw:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return Raw([(0.0, head.encode() + body)], close=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultServer:
    def __init__(
        self,
        offset: int = 1,
        model: str = "faulty",
        delay_s: float = 0.0,
        strict: bool = False,
        refuse: Iterable[str] = (),
        token_delay_s: float = 0.0,
    ) -> None:
        self.offset = offset
        # Seconds per generated token, so that a profile of this server has a time to fit.
        self.token_delay_s = token_delay_s
        self.refuse = set(refuse)
        self.strict = strict  # refuse ignore_eos/min_tokens with a 400, as OpenAI's API does
        self.model = model
        self.delay_s = delay_s
        self.retry_after = "0.2"
        self.faults: deque[str | Raw] = deque()
        # Only requests for which this holds take a fault (e.g. measurements, not probes).
        self.faults_for: Callable[[dict], bool] | None = None
        self.requests: list[dict] = []  # every generation request body, in order
        self.headers: list[str] = []  # every request's raw header block
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def script(self, *faults: str | Raw) -> None:
        self.faults.extend(faults)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ---- HTTP ----------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                text = head.decode("latin-1")
                self.headers.append(text)
                length = 0
                for line in text.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                path = text.split(" ", 2)[1]
                self._auth = next(
                    (
                        line.partition(":")[2].strip()
                        for line in text.split("\r\n")
                        if line.lower().startswith("authorization:")
                    ),
                    "",
                )
                if not await self._answer(path, body, writer):
                    writer.close()
                    return
        writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: str, body: bytes, extra: str = "") -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )

    async def _answer(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        if path.endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            self._send(writer, "200 OK", json.dumps(models).encode())
            return True
        request = json.loads(body)
        self.requests.append(request)
        refused = sorted(self.refuse & set(request))
        if refused:
            error = {
                "detail": [{"loc": ["body", refused[0]], "msg": "Extra inputs are not permitted"}]
            }
            error = {"error": {"message": f"{refused[0]}: Extra inputs are not permitted"}}
            self._send(writer, "400 Bad Request", json.dumps(error).encode())
            return True
        takes = self.faults_for is None or self.faults_for(request)
        fault = (self.faults.popleft() if self.faults and takes else None) or None  # "": none
        if isinstance(fault, Raw):
            for delay, raw in fault.writes:
                if delay:
                    await asyncio.sleep(delay)
                writer.write(raw)
                await writer.drain()
            return not fault.close
        if fault == "close":
            return False
        if fault == "stall":
            await asyncio.sleep(3600)
        if fault in ("429", "500", "401", "404"):
            status = {"429": "429 Too Many Requests", "500": "500 Internal Server Error"}.get(
                fault, "401 Unauthorized" if fault == "401" else "404 Not Found"
            )
            error = {"error": {"message": f"injected {fault}", "type": "test"}}
            extra = f"retry-after: {self.retry_after}\r\n" if fault == "429" else ""
            self._send(writer, status, json.dumps(error).encode(), extra)
            return True
        if self.strict and {"ignore_eos", "min_tokens"} & set(request):
            field = "ignore_eos" if "ignore_eos" in request else "min_tokens"
            error = {"error": {"message": f"Unrecognized request argument supplied: {field}"}}
            self._send(writer, "400 Bad Request", json.dumps(error).encode())
            return True
        if fault == "echo401":
            error = {"error": {"message": f"bad key in {self._auth!r}", "type": "auth"}}
            self._send(writer, "401 Unauthorized", json.dumps(error).encode())
            return True
        if fault == "malformed":
            self._send(writer, "200 OK", b"{not json")
            return True
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        chat = path.endswith("/chat/completions")
        prompt = request["messages"][-1]["content"] if chat else request.get("prompt", "")
        tokens = int(request.get("max_tokens") or 16) - (1 if fault == "short" else 0)
        usage = {
            "prompt_tokens": len(str(prompt).split()) + self.offset,
            "completion_tokens": tokens,
            "total_tokens": len(str(prompt).split()) + self.offset + tokens,
        }
        if request.get("stream"):
            wants = (request.get("stream_options") or {}).get("include_usage")
            return await self._stream(writer, chat, tokens, usage if wants else None, fault)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": " x" * tokens}}
            if chat
            else {"index": 0, "text": " x" * tokens}
        )
        choice["finish_reason"] = "length"
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s * tokens)
        payload = json.dumps({"id": "cmpl-1", "choices": [choice], "usage": usage}).encode()
        if fault == "cut":
            head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            return False
        self._send(writer, "200 OK", payload)
        return True

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        chat: bool,
        tokens: int,
        usage: dict | None,
        fault: str | None,
    ) -> bool:
        """Stream faults: cut (closes mid-stream), badevent (a non-JSON event), badchoice (a
        choice that is not an object), errevent (an error event), slow (0.1 s per token)."""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def chunk(data: dict | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            raw = f"data: {text}\n\n".encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")

        for i in range(tokens):
            if fault == "cut" and i == tokens // 2:
                await writer.drain()
                return False  # the connection closes mid-stream
            if fault == "slow":
                await asyncio.sleep(0.1)
            elif self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            if i == tokens // 2 and fault in ("badevent", "badchoice", "errevent"):
                bad = {
                    "badevent": "{not json",
                    "badchoice": {"id": "cmpl-1", "choices": ["x"]},
                    "errevent": {"error": {"message": "injected stream error"}},
                }[fault]
                chunk(bad)  # the stream goes on to [DONE]: the client must still refuse it
            choice = (
                {"index": 0, "delta": {"content": " x"}} if chat else {"index": 0, "text": " x"}
            )
            choice["finish_reason"] = "length" if i == tokens - 1 else None
            chunk({"id": "cmpl-1", "choices": [choice]})
            await writer.drain()
        if usage is not None:  # only when asked for, as OpenAI's API does
            chunk({"id": "cmpl-1", "choices": [], "usage": usage})
        if fault != "nodone":  # "nodone": a complete stream without [DONE] (TGI before 2.x)
            chunk("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@contextlib.contextmanager
def fault_server(**options: object) -> Iterator[FaultServer]:
    with FaultServer(**options) as server:  # type: ignore[arg-type]
        yield server
