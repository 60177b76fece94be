"""An OpenAI-compatible server that answers at once, for benchmarking load generators.

Raw asyncio protocol (HTTP/1.1 keep-alive, no framework) so that it is never the bottleneck:
one core serves tens of thousands of small requests a second. Every response carries the
server's own timing on the system-wide monotonic clock (time.monotonic_ns, the same clock in
every process of this machine):

- the completion text starts with ` @RECEIVED:SENT` (request parsed : response written), in
  nanoseconds; streamed, every token's text is ` @RECEIVED:SENT` with SENT the time that chunk
  was written. Any load tester that keeps the output text (ours, guidellm) therefore carries
  the server's own view of each request, and its timing overhead is measurable per request;
- non-streaming answers also carry the header `x-server-ns: RECEIVED,SENT`;
- every body is an OpenAI answer in full: `id`, `object` (text_completion, chat.completion,
  chat.completion.chunk), `created`, `model`, `choices` and, where asked for, `usage` (strict
  clients such as AIPerf reject chunks without `object`);
- with `"stream_interval_ms": D` in the body (or --interval-ms), chunks are spaced D ms apart,
  like a model decoding at 1000/D tokens per second. `--schedule lockstep` puts every stream's
  tokens on one global clock tick (continuous batching: a decode step makes a token for every
  sequence at once, so chunks leave in bursts); `--schedule staggered` gives each stream its own
  clock, its first token after a random fraction of D (independent requests).

Run: python benchmarks/instant_server.py --port 8011 [--interval-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time

_MODELS = b'{"object":"list","data":[{"id":"instant","object":"model","owned_by":"bench"}]}'


def _response(status: str, body: bytes, headers: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}\r\n"
    )
    return head.encode() + body


class InstantProtocol(asyncio.Protocol):
    interval_s = 0.0
    schedule = "lockstep"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head.split(" ", 2)[1], body)

    def handle(self, path: str, body: bytes) -> None:
        received = time.monotonic_ns()
        if path.endswith("/models"):
            self.transport.write(_response("200 OK", _MODELS))
            return
        request = json.loads(body or b"{}")
        chat = path.endswith("/chat/completions")
        asked = request.get("max_tokens") or request.get("max_completion_tokens") or 1
        tokens = max(1, int(asked))
        prompt = request.get("prompt") if not chat else request["messages"][-1]["content"]
        prompt_tokens = len(str(prompt).split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        }
        if request.get("stream"):
            interval = float(request.get("stream_interval_ms", 0)) / 1e3 or self.interval_s
            asyncio.get_running_loop().create_task(
                self.stream(received, tokens, chat, usage, interval, request)
            )
            return
        sent = time.monotonic_ns()
        text = f" @{received}:{sent}" + " x" * (tokens - 1)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text}
        )
        choice["finish_reason"] = "length"
        payload = json.dumps(
            {
                "id": "cmpl-0",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": "instant",
                "choices": [choice],
                "usage": usage,
            }
        ).encode()
        self.transport.write(_response("200 OK", payload, f"x-server-ns: {received},{sent}\r\n"))

    async def stream(
        self, received: int, tokens: int, chat: bool, usage: dict, interval: float, request: dict
    ) -> None:
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            "transfer-encoding: chunked\r\n\r\n"
        )
        self.transport.write(head.encode())
        meta = {
            "id": f"cmpl-{received}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": "instant",
        }
        start = time.monotonic()
        if interval and self.schedule == "staggered":
            start += random.random() * interval
        elif interval:  # the next global tick
            start = math.ceil(start / interval) * interval
        for i in range(tokens):
            if interval:
                # Absolute schedule: the server's own lateness does not accumulate.
                await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
            if self.transport.is_closing():
                return
            piece = f" @{received}:{time.monotonic_ns()}"
            choice = (
                {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            )
            choice["finish_reason"] = "length" if i == tokens - 1 else None
            if chat and i == 0:
                choice["delta"]["role"] = "assistant"
            chunk = {**meta, "choices": [choice]}
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if (request.get("stream_options") or {}).get("include_usage"):
            final = {**meta, "choices": [], "usage": usage}
            self._chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self.transport.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.transport.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def serve(host: str, port: int, interval_ms: float, schedule: str) -> None:
    InstantProtocol.interval_s = interval_ms / 1e3
    InstantProtocol.schedule = schedule
    server = await asyncio.get_running_loop().create_server(
        InstantProtocol, host, port, backlog=1024
    )
    print(f"listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("lockstep", "staggered"), default="lockstep")
    args = parser.parse_args()
    try:
        import uvloop  # optional: a faster loop where installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, args.interval_ms, args.schedule))


if __name__ == "__main__":
    main()
