"""`infermeter serve`: an OpenAI-compatible server over a local backend (hf or engine).

Endpoints: GET /v1/models, POST /v1/completions and /v1/chat/completions, streaming (SSE,
with `stream_options.include_usage`) or not, with `usage` counted in the served tokenizer's
tokens. Length controls: max_tokens, min_tokens, ignore_eos.

Generation runs on one worker thread, one request at a time in arrival order (a batch-1 stack):
requests in flight queue behind each other, which is what a parallel-load sweep sees. Tokens
cross to the event loop through an asyncio queue. With the hf backend a stream shows each token
as it is made; the engine backend generates the whole sequence first and then streams it (its
decode is one CUDA graph per step over a static cache, run to the end): its streams carry the
header `x-infermeter-stream: after-generation` (hf: `live`), so their TTFT is not a TTFT. A
client that hangs up cancels its generation, streamed or not.

Malformed requests (a body that is not a JSON object, messages that are not objects, a field
of the wrong type or range, such as "stream": "yes", "max_tokens": true or "temperature": 3,
token ids outside the vocabulary) get OpenAI-style 400 errors that name the field in `param`.
An unknown path (404) or method (405) gets the same error shape, not FastAPI's {"detail": ...}.

Prompt tokens = the tokenizer's ids of the prompt (or of the chat template's text) plus BOS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from infermeter.errors import UserError
from infermeter.workloads.textgen import TokenGenerator
from infermeter.workloads.tokenizer import Tokenizer

if TYPE_CHECKING:
    from infermeter.requests import ServeRequest

_ids = itertools.count()


@dataclass
class _Job:
    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)


# How long shutdown waits for the model's thread: a thread still inside a torch call when
# Python finalizes aborts the process ("terminate called without an active exception").
# A cancelled generation ends at its next token; a whole-generation call (the engine's) only
# when it returns.
STOP_JOIN_S = 10.0


class GenerationWorker:
    """One thread that runs jobs in order and hands their tokens to the event loop."""

    def __init__(self, generator: TokenGenerator, stop_ids: list[int]) -> None:
        self.generator = generator
        self.stop_ids = stop_ids
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._current: _Job | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infermeter-generate", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
        """Queue `job` for the model's thread."""
        self._jobs.put(job)

    def stop(self) -> None:
        """At shutdown (every client answered or gone): cancel what is still generating or
        queued, and wait up to STOP_JOIN_S for the thread to end."""
        self._stopping.set()  # a job the thread takes from now on is skipped
        if (job := self._current) is not None:
            job.cancelled.set()
        while True:
            try:
                queued = self._jobs.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                queued.cancelled.set()
        self._jobs.put(None)
        self._thread.join(STOP_JOIN_S)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._current = job
            if job.cancelled.is_set() or self._stopping.is_set():
                continue
            made = 0
            try:
                for token in self.generator.stream(
                    job.prompt_ids,
                    job.max_tokens,
                    job.min_tokens,
                    self.stop_ids,
                    job.ignore_eos,
                    job.cancelled.is_set,
                ):
                    made += 1
                    job.loop.call_soon_threadsafe(job.out.put_nowait, token)
                finish: Any = "length" if made >= job.max_tokens else "stop"
            except Exception as error:  # reported to the client as a 500 / an error event
                finish = error
            with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                job.loop.call_soon_threadsafe(job.out.put_nowait, ("end", finish))


class _Detokenizer:
    """Incremental text: each token's piece is the growth of decode(all ids so far)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # half of a multi-byte character: wait for the rest
        piece, self.text = text[len(self.text) :], text
        return piece


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The chat messages, or BadRequest: a non-empty list of objects with text content."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{i}] must be an object with a role and content", param="messages"
            )
        content = message.get("content", "")
        if not isinstance(content, (str, list)) and content is not None:
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of parts", param="messages"
            )
    return messages


def chat_text(messages: list[dict[str, Any]]) -> str:
    """A plain chat template: 'role: content' lines, then 'assistant:'."""
    lines = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{message.get('role', 'user')}: {content}")
    return "\n".join([*lines, "assistant:"])


class BadRequest(Exception):
    """A request the API refuses: its message, HTTP status, OpenAI error code and the request
    field at fault (the error's `param`)."""

    def __init__(
        self, message: str, status: int = 400, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def _kind(value: Any) -> str:
    """The JSON type of a parsed value, with its article ("a string"), to say what came."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bools are ints in Python, not in JSON
        return "a boolean"
    kinds = {int: "an integer", float: "a number", str: "a string", list: "an array"}
    return kinds.get(type(value), "an object")


def _int_field(body: dict[str, Any], name: str, default: int, low: int) -> int:
    """body[name], an integer >= low (not a bool, float or numeric string); default if absent
    or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer >= {low}, got {_kind(value)}", param=name)
    if value < low:
        raise BadRequest(f"'{name}' must be an integer >= {low}, got {value}", param=name)
    return value


def _bool_field(body: dict[str, Any], name: str) -> bool:
    """body[name], a JSON boolean (false if absent or null): "yes" or 1 are refused, not
    taken as true, as OpenAI's and vLLM's servers do."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean, got {_kind(value)}", param=name)
    return bool(value)


def _check_request_fields(body: dict[str, Any], stream: bool) -> bool:
    """Check the typed fields not read as they are checked, and return include_usage:
    stream_options (an object, only with stream true, as OpenAI's API wants; its include_usage
    a boolean) and temperature (0 to 2; generation is greedy whatever it is, but a client
    sending "hot" or 3 should hear so, as from a real API)."""
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise BadRequest(
                f"'temperature' must be a number between 0 and 2, got {_kind(temperature)}",
                param="temperature",
            )
        if not 0 <= temperature <= 2:  # NaN too
            raise BadRequest(
                f"'temperature' must be a number between 0 and 2, got {temperature}",
                param="temperature",
            )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(
            f"'stream_options' must be an object, e.g. {{\"include_usage\": true}}, got "
            f"{_kind(options)}",
            param="stream_options",
        )
    if options is None:
        return False
    if not stream:
        raise BadRequest(
            "'stream_options' is only allowed when 'stream' is true: drop it or send "
            '"stream": true',
            param="stream_options",
        )
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise BadRequest(
            f"'stream_options.include_usage' must be a boolean, got {_kind(include_usage)}",
            param="stream_options.include_usage",
        )
    return bool(include_usage)


def create_app(
    generator: TokenGenerator,
    tokenizer: Tokenizer,
    model_name: str,
    api_key: str | None = None,
    add_bos: bool = True,
) -> FastAPI:
    """The FastAPI app serving `generator` as `model_name` (tokens counted by `tokenizer`)."""
    stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    worker = GenerationWorker(generator, stops)
    live = getattr(generator, "streams_live", not str(generator.name).startswith("engine:"))
    mode = "live" if live else "after-generation"

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        worker.stop()

    app = FastAPI(title=f"infermeter serve: {model_name}", lifespan=lifespan)
    app.state.worker = worker

    def error(
        message: str, status: int, code: str | None = None, param: str | None = None
    ) -> JSONResponse:
        """An OpenAI-shaped error response: every refusal of this server goes through here."""
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": param, "code": code}},
            status_code=status,
        )

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own errors (an unknown path, a wrong method) in the OpenAI shape, not
        {"detail": "Not Found"}: clients read {"error": {"message": ...}}."""
        where = f"{request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message, code = f"no such endpoint: {where}", "not_found"
        elif exc.status_code == 405:
            allowed = headers.get("Allow", "")
            message, code = f"{where} is not allowed; use {allowed}", "method_not_allowed"
        else:
            message, code = f"{where}: {exc.detail}", None
        response = error(message, exc.status_code, code)
        response.headers.update(headers)  # e.g. a 405's Allow
        return response

    def authorised(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return error("Incorrect API key provided.", 401, "invalid_api_key")
        entry = {"id": model_name, "object": "model", "created": 0, "owned_by": "infermeter"}
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    def prompt_ids(body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            ids = tokenizer.encode(chat_text(check_messages(body.get("messages"))))
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                ids = tokenizer.encode(prompt)
            elif isinstance(prompt, list) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in prompt
            ):
                ids = list(prompt)
                bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
                if bad:
                    raise BadRequest(
                        f"token id {bad[0]} is outside the vocabulary (0 to "
                        f"{tokenizer.vocab_size - 1})",
                        param="prompt",
                    )
            else:
                raise BadRequest(
                    "prompt must be a string or a list of token ids (one prompt)", param="prompt"
                )
        if add_bos and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id, *ids]
        return ids or [0]

    async def handle(request: Request, chat: bool) -> Any:
        if not authorised(request):
            return error("Incorrect API key provided.", 401, "invalid_api_key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error("the request body is not JSON", 400)
        if not isinstance(body, dict):
            return error("the request body must be a JSON object", 400)
        try:
            if body.get("model") != model_name:
                raise BadRequest(
                    f"The model `{body.get('model')}` does not exist; this server has "
                    f"`{model_name}`.",
                    404,
                    "model_not_found",
                )
            if _int_field(body, "n", 1, 1) != 1:
                raise BadRequest("only n=1 is supported", param="n")
            stream = _bool_field(body, "stream")
            ignore_eos = _bool_field(body, "ignore_eos")
            include_usage = _check_request_fields(body, stream)
            ids = prompt_ids(body, chat)
            max_tokens = _int_field(body, "max_tokens", 16, 1)
            if "max_completion_tokens" in body:
                max_tokens = _int_field(body, "max_completion_tokens", max_tokens, 1)
            min_tokens = _int_field(body, "min_tokens", 0, 0)
            if min_tokens > max_tokens:
                raise BadRequest(
                    f"min_tokens ({min_tokens}) exceeds max_tokens ({max_tokens})",
                    param="min_tokens",
                )
            if len(ids) + max_tokens > generator.max_context:
                raise BadRequest(
                    f"This model's maximum context length is {generator.max_context} tokens; "
                    f"the prompt has {len(ids)} and max_tokens is {max_tokens}.",
                    400,
                    "context_length_exceeded",
                )
        except BadRequest as bad:
            return error(str(bad), bad.status, bad.code, bad.param)
        loop = asyncio.get_running_loop()
        job = _Job(ids, max_tokens, min_tokens, ignore_eos, loop, asyncio.Queue())
        worker.submit(job)
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}",
            "created": int(time.time()),
            "model": model_name,
        }
        if stream:
            events = _stream(job, tokenizer, meta, chat, include_usage)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"x-infermeter-stream": mode}
            )
        try:
            collected = await _collect_unless_gone(job, request)
        except Exception as failure:
            return error(f"generation failed: {failure}", 500)
        finally:
            job.cancelled.set()
        if collected is None:  # the client hung up: nobody reads an answer
            return error("the client closed the connection", 499)
        tokens, finish = collected
        text = tokenizer.decode(tokens)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            **meta,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [choice],
            "usage": _usage(len(ids), len(tokens)),
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    return app


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _collect(job: _Job) -> tuple[list[int], str]:
    tokens: list[int] = []
    while True:
        item = await job.out.get()
        if isinstance(item, tuple):
            finish = item[1]
            if isinstance(finish, Exception):
                raise finish
            return tokens, finish
        tokens.append(item)


async def _collect_unless_gone(job: _Job, request: Any) -> tuple[list[int], str] | None:
    """The job's tokens and finish reason, or None as soon as the client has hung up (checked
    every 0.1 s: the worker then stops the generation at its next token)."""
    collect = asyncio.ensure_future(_collect(job))
    try:
        while True:
            done, _ = await asyncio.wait({collect}, timeout=0.1)
            if done:
                return collect.result()
            if await request.is_disconnected():
                job.cancelled.set()
                return None
    finally:
        if not collect.done():
            collect.cancel()


async def _stream(
    job: _Job, tokenizer: Tokenizer, meta: dict[str, Any], chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return (
            b"data: "
            + json.dumps({**meta, "object": kind, "choices": choices, **more}).encode()
            + b"\n\n"
        )

    def choice(piece: str, finish: str | None) -> dict[str, Any]:
        if chat:
            return {
                "index": 0,
                # A token whose text is not whole yet (half a UTF-8 character) is still a
                # token: "content": "" (as llama.cpp sends); only the finish chunk has none.
                "delta": {"content": piece} if piece or finish is None else {},
                "finish_reason": finish,
            }
        return {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}

    detok = _Detokenizer(tokenizer)
    try:
        if chat:
            yield event(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        while True:
            item = await job.out.get()
            if isinstance(item, tuple):
                finish = item[1]
                if isinstance(finish, Exception):
                    error = {"message": f"generation failed: {finish}", "type": "server_error"}
                    yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                    return
                break
            yield event([choice(detok.add(item), None)])
        yield event([choice("", finish)])
        if include_usage:
            yield event([], usage=_usage(len(job.prompt_ids), len(detok.ids)))
        yield b"data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client that hung up stops its generation


# ---- running it ----------------------------------------------------------------------------


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    sock: Any = None,
) -> None:
    """Serve `app` until interrupted (blocking), on `sock` when given (see `bind`)."""
    import uvicorn

    if sock is None:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
        return
    config = uvicorn.Config(app, log_level=log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def serve_model(r: ServeRequest, on_ready: Callable[[list[str], str], None]) -> None:
    """`infermeter serve`: r.model (random weights, or r.checkpoint's) on the hf or engine
    backend behind the API until stopped. The port is taken before the model loads; once it
    is loaded `on_ready` gets the notes and the line that says where it is served."""
    from infermeter.backends.config import build_backend, config_for
    from infermeter.measure.gpus import check_device
    from infermeter.spec.catalog import resolve_spec
    from infermeter.workloads.textgen import generator_for
    from infermeter.workloads.tokenizer import load_tokenizer

    if r.backend not in ("hf", "engine"):
        raise UserError(f"serve runs the hf or engine backend, not {r.backend!r}")
    spec = resolve_spec(r.model)
    tok = load_tokenizer(r.tokenizer)
    options: dict[str, Any] = {"device": check_device(r.device), "dtype": r.dtype}
    if r.checkpoint is not None:
        options["checkpoint"] = str(r.checkpoint)
    config = config_for(r.backend, **options)
    sock = bind(r.host, r.port)  # a busy port is said now, before the model loads
    try:
        runner = build_backend(config)
        runner.prepare(spec)
    except BaseException:
        sock.close()
        raise
    app = None
    try:
        name = r.name or spec.name
        app = create_app(generator_for(runner), tok, name, api_key=r.api_key)
        notes = [f"tokenizer {tok.name} has {tok.vocab_size} ids, the model {spec.vocab_size}: "
                 "prompt ids wrap around"] if tok.vocab_size > spec.vocab_size else []  # fmt: skip
        where = f"http://{r.host}:{sock.getsockname()[1]}/v1"  # --port 0: the port given
        on_ready(notes, f"serving {name} ({r.backend}, tokenizer {tok.name}) at {where}")
        serve(app, r.host, r.port, log_level="warning", sock=sock)
    finally:
        sock.close()
        if app is not None:  # a second Ctrl-C ends uvicorn without the app's shutdown
            app.state.worker.stop()  # so the model's thread is not inside torch at exit
        runner.close()


def bind(host: str, port: int) -> Any:
    """The listening address taken before anything is loaded or printed: a port in use (or
    an address this machine does not have) is one line, not uvicorn's Errno after "serving"."""
    import errno

    try:
        return _bound_socket(host, port)
    except OverflowError:
        raise UserError(f"--port {port} is not a port; pass 1-65535") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use (another server?); stop it or pass another --port"
            ) from None
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port"
        ) from None


def _bound_socket(host: str, port: int) -> Any:
    """A listening-ready TCP socket on (host, port); port 0 picks a free one."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _quiet_server(app: Any) -> Any:
    """A uvicorn server for `app` that logs only warnings (for `running` and its child)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` on a thread for the block's duration; yields the base URL (…/v1).

    port=0 picks a free port. For tests and notebooks.
    """
    sock = _bound_socket(host, port)
    server = _quiet_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_in_process(
    spec: Any,
    backend: str = "hf",
    options: dict[str, Any] | None = None,
    tokenizer: str = "bytes",
    name: str | None = None,
    start_timeout_s: float = 900.0,
) -> Iterator[str]:
    """Serve `spec` (a ModelSpec) from a child process for the block; yields the base URL.

    Unlike `running`, the model generates in its own interpreter: a client timing it in this
    process shares no GIL with the generation loop (with transformers' Python-heavy decode
    on a GPU, sharing one made per-token times swing several-fold), as with a real API. The
    child is a fresh `python -c` (no fork, no re-import of the caller's script) that sees this
    process's sys.path; it reports its port, or why it could not start, on its stdout.
    """
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    payload = {
        "spec": spec.to_dict(),
        "backend": backend,
        "options": options or {},
        "tokenizer": tokenizer,
        "name": name or spec.name,
    }
    paths = [p for p in sys.path if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    code = "from infermeter.backends.serve import _child_main; _child_main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(payload))
    process.stdin.close()
    answer: queue.Queue[str] = queue.Queue()

    def read_reports() -> None:  # the child's report line; the rest is drained, never blocks it
        for text in process.stdout:  # type: ignore[union-attr]
            if text.startswith(('{"port"', '{"error"')):
                answer.put(text)
        answer.put("")

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    try:
        try:
            line = answer.get(timeout=start_timeout_s)
        except queue.Empty:
            raise RuntimeError(
                f"the model server did not start within {start_timeout_s:.0f} s"
            ) from None
        if not line:
            raise RuntimeError(f"the model server exited with code {process.wait()}")
        report = json.loads(line)
        if "error" in report:
            raise RuntimeError(f"the model server failed: {report['error']}")
        url = f"http://127.0.0.1:{report['port']}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1.0) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the model server did not answer /health")
            time.sleep(0.05)
        yield f"{url}/v1"
    finally:
        process.terminate()  # uvicorn shuts down on SIGTERM
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)  # EOF once the child is gone
        process.stdout.close()


def _child_main() -> None:
    """The child of `running_in_process`: read the job on stdin, load the model, bind, print
    {"port": N} (or {"error": why}) on stdout, serve until terminated."""
    import sys

    from infermeter.backends import get_backend
    from infermeter.spec.model import ModelSpec
    from infermeter.workloads.textgen import generator_for
    from infermeter.workloads.tokenizer import load_tokenizer

    job = json.loads(sys.stdin.read())
    try:
        runner = get_backend(job["backend"], **job["options"])
        runner.prepare(ModelSpec.from_dict(job["spec"]))
        app = create_app(generator_for(runner), load_tokenizer(job["tokenizer"]), job["name"])
        sock = _bound_socket("127.0.0.1", 0)
    except Exception as error:  # reported to the parent, which raises it
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:500]}), flush=True)
        return
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    _quiet_server(app).run(sockets=[sock])
