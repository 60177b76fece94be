"""Real servers' answers, replayed byte for byte by a real local HTTP server: vLLM, TGI,
SGLang, Ollama's OpenAI endpoint, a reasoning model, llama.cpp's server (recorded from a real
one: tests/data/api_transcripts/llamacpp_*.json) and the rest written from each server's
published wire format. Each carries what the client must make of it (`expect`)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from api_servers import TRANSCRIPTS, fault_server, transcript
from infermeter.backends.api.client import ApiClient, ApiConfig, RequestRecord

NAMES = sorted(p.stem for p in TRANSCRIPTS.glob("*.json"))


def replay(name: str) -> tuple[dict, RequestRecord]:
    data = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    request = data["request"]
    answer = transcript(name)

    async def go(url: str) -> RequestRecord:
        config = ApiConfig(
            url, "m", endpoint=data["endpoint"], stream=request["stream"], retries=0,
            stall_timeout_s=10,
        )  # fmt: skip
        async with ApiClient(config) as client:
            prompt = request.get("prompt") or request["messages"][-1]["content"]
            return await client.complete(prompt, request["max_tokens"])

    with fault_server() as server:
        server.script(answer)
        return data, asyncio.run(go(server.url))


@pytest.mark.parametrize("name", NAMES)
def test_every_recorded_answer_is_read_as_its_server_meant(name: str) -> None:
    data, record = replay(name)
    expect = data["expect"]
    assert record.ok is expect["ok"], (record.cause, record.detail)
    if not expect["ok"]:
        assert record.cause == expect["cause"]
        if "detail" in expect:
            assert record.detail == expect["detail"]
        return
    assert record.completion_tokens == expect["completion_tokens"]
    assert record.prompt_tokens == expect["prompt_tokens"]
    assert record.finish_reason == expect["finish_reason"]
    assert record.text == expect["text"]
    assert record.reasoning == expect.get("reasoning", "")
    assert len(record.chunk_times_s) == expect["chunks"]
    if expect["chunks"]:
        assert record.ttft_s == record.chunk_times_s[0] <= record.e2e_s
        if record.itl_s is None:  # tokens per chunk unknown: gaps are labelled chunk gaps
            assert (
                record.summary()["itl_s"] is None and record.summary()["chunk_gaps_s"] is not None
            )


def test_the_reasoning_model_s_first_token_is_its_first_reasoning_chunk() -> None:
    _, record = replay("reasoning_chat_stream")
    # the answer's content begins 0.2 s after the reasoning (a pause in the recording)
    first_content = 4
    assert record.ttft_s == record.chunk_times_s[0] < record.chunk_times_s[first_content]
    gaps = record.chunk_gaps_s
    assert gaps.index(max(gaps)) == first_content - 1


@pytest.mark.parametrize("name", NAMES)
def test_the_replay_is_byte_for_byte(name: str) -> None:
    answer = transcript(name)
    with fault_server() as server:
        server.script(answer)
        body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 1}).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            got = b""
            while len(got) < len(answer.body):
                piece = sock.recv(65536)
                if not piece:
                    break
                got += piece
    assert got == answer.body


def test_transcripts_cover_the_servers_the_issue_names() -> None:
    servers = " ".join(json.loads(p.read_text())["server"] for p in TRANSCRIPTS.glob("*.json"))
    for name in ("vLLM", "text-generation-inference", "SGLang", "Ollama", "reasoning"):
        assert name in servers, name
    assert Path(TRANSCRIPTS).is_dir()
