"""A response counts only on positive evidence; every stream shape is read; waits and sizes
are bounded. Each test is a real answer on the wire from a real local server (api_servers)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import test_api_client as shared
from test_api_client import FAST, complete

from api_servers import FaultServer, Raw, json_answer, sse
from infermeter.backends.api.client import ApiConfig
from infermeter.errors import UserError

server, _clear = shared.server, shared._clear  # the client tests' server and its reset


def chunk(text: str | None = None, finish: str | None = None, **delta: object) -> dict:
    """A chat chunk with these delta fields."""
    if text is not None:
        delta["content"] = text
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def ctext(text: str, finish: str | None = None) -> dict:
    """A completions chunk."""
    return {"id": "c", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4}}


# ---- 1. success needs positive evidence; in-band errors are read --------------------------


def test_a_stream_of_only_done_is_not_a_success(server: FaultServer) -> None:
    """The issue's example: `data: [DONE]` alone was stored as ok points of 0.4-0.6 ms."""
    server.script(*[sse([])] * 4)
    record = complete(ApiConfig(server.url, "faulty", **FAST))
    assert not record.ok and record.cause == "empty"
    assert [a.cause for a in record.attempts] == ["empty"] * 4
    assert "no token and no usage" in record.detail


def test_tokens_without_a_finish_reason_are_incomplete(server: FaultServer) -> None:
    server.script(sse([ctext(" a"), ctext(" b")]))
    record = complete(ApiConfig(server.url, "faulty", retries=0))
    assert not record.ok and record.cause == "incomplete"


def test_an_empty_json_answer_is_not_a_success(server: FaultServer) -> None:
    empty = {"id": "x", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
    server.script(json_answer(empty))
    record = complete(ApiConfig(server.url, "faulty", stream=False, retries=0))
    assert not record.ok and record.cause == "empty"


@pytest.mark.parametrize(
    ("answer", "stream"),
    [
        (json_answer({"error": {"message": "model overloaded", "type": "server_error"}}), False),
        (sse([ctext(" a"), {"error": {"message": "model overloaded"}}]), True),
        (sse([ctext(" a"), 'event: error\ndata: {"message": "model overloaded"}']), True),
        (sse([ctext(" a"), 'error: {"code": 500, "message": "model overloaded"}']), True),
        (sse(["error: model overloaded"], done=False), True),
    ],
    ids=["200-json-body", "data-event", "event-error", "error-field", "error-field-text"],
)
def test_every_in_band_error_form_is_read_and_retried(
    server: FaultServer, answer: Raw, stream: bool
) -> None:
    server.script(answer)
    record = complete(ApiConfig(server.url, "faulty", stream=stream, **FAST))
    assert record.ok  # retried, and the retry succeeded
    first = record.attempts[0]
    assert first.cause == "stream_error" and first.detail == "model overloaded"


@pytest.mark.parametrize(
    "error",
    [
        {"message": "This model's maximum context length is 2048 tokens", "code": 400},
        {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400},
        {"message": "Input validation error: `inputs` must have less than 1024 tokens"},
    ],
)
def test_in_band_errors_that_will_repeat_are_not_retried(server: FaultServer, error) -> None:
    server.script(sse([{"error": error}], done=False), json_answer({"error": error}))
    for stream in (True, False):
        record = complete(ApiConfig(server.url, "faulty", stream=stream, **FAST))
        assert not record.ok and record.cause == "request_error"
        assert len(record.attempts) == 1 and record.detail == error["message"]


# ---- 2. every stream shape: reasoning, tool calls, empty text, several tokens a chunk ------


def test_reasoning_deltas_are_tokens_and_set_the_ttft(server: FaultServer) -> None:
    """The issue's example: TTFT was taken at the first `content`, after the reasoning."""
    events = [chunk(role="assistant", content="")]
    events += [chunk(reasoning_content=w) for w in ("Let", " me", " think")]
    events += [chunk(" Hi"), chunk(" there", "length"), USAGE]
    server.script(sse(events, delays=[0, 0, 0, 0, 0.2, 0, 0]))
    record = complete(ApiConfig(server.url, "faulty", endpoint="chat"))
    assert record.ok and record.completion_tokens == 4
    assert len(record.chunk_times_s) == 5  # the role chunk bears no token
    assert record.reasoning == "Let me think" and record.text == " Hi there"
    assert record.ttft_s == record.chunk_times_s[0] < record.chunk_times_s[3]
    # the 0.2 s pause sits between the last reasoning chunk and the first content chunk
    gaps = record.chunk_gaps_s
    assert gaps.index(max(gaps)) == 2


def test_reasoning_field_and_tool_calls_are_tokens(server: FaultServer) -> None:
    call = {"index": 0, "function": {"name": "f", "arguments": '{"x":'}}
    more = {"index": 0, "function": {"arguments": " 1}"}}
    events = [
        chunk(reasoning="hm"),
        chunk(tool_calls=[call]),
        chunk(tool_calls=[more], finish="tool_calls"),
    ]
    server.script(sse(events))
    record = complete(ApiConfig(server.url, "faulty", endpoint="chat", retries=0))
    assert record.ok and len(record.chunk_times_s) == 3
    assert record.generated_text == 'hmf{"x": 1}' and record.completion_tokens is None
    assert record.itl_s is None  # tokens per chunk unknown: only chunk gaps
    assert len(record.summary()["chunk_gaps_s"]) == 2 and record.summary()["itl_s"] is None


def test_empty_text_chunks_are_tokens_without_usage(server: FaultServer) -> None:
    """llama.cpp's server: no usage in streams, a chunk of empty text for half a character."""
    events = [ctext(""), ctext("é"), ctext(" x"), ctext("", "length")]
    server.script(sse(events))
    record = complete(ApiConfig(server.url, "faulty", retries=0), max_tokens=3)
    assert record.ok and record.text == "é x" and record.completion_tokens is None
    assert len(record.chunk_times_s) == 3  # the first, empty, chunk is the first token
    assert record.ttft_s == record.chunk_times_s[0]


def test_several_tokens_per_chunk_are_counted_from_running_usage(server: FaultServer) -> None:
    def counted(text: str, total: int, finish: str | None = None) -> dict:
        event = ctext(text, finish)
        event["usage"] = {"prompt_tokens": 4, "completion_tokens": total}
        return event

    server.script(sse([counted(" a b", 2), counted(" c d e", 5), counted(" f", 6, "length")]))
    record = complete(ApiConfig(server.url, "faulty", retries=0), max_tokens=6)
    assert record.ok and record.chunk_tokens == [2, 3, 1] and record.completion_tokens == 6
    assert record.itl_s is None and len(record.chunk_gaps_s) == 2
    one_each = [counted(f" {w}", i + 1, "length" if i == 2 else None) for i, w in enumerate("abc")]
    server.script(sse(one_each))
    record = complete(ApiConfig(server.url, "faulty", retries=0), max_tokens=3)
    assert record.chunk_tokens == [1, 1, 1] and record.itl_s is not None and len(record.itl_s) == 2


# ---- 3. [DONE] is not the only proof of completion ----------------------------------------


def test_a_complete_stream_without_done_is_a_success(server: FaultServer) -> None:
    """The issue's example: TGI before its fix sent no [DONE]; every point was stream_cut."""
    events = [ctext(" a"), ctext(" b"), ctext(" c"), ctext(" d", "length"), USAGE]
    server.script(sse(events, done=False))
    record = complete(ApiConfig(server.url, "faulty", retries=0))
    assert record.ok and record.completion_tokens == 4 and record.retries == 0
    assert any("no [DONE]" in note for note in record.notes)


def test_a_close_delimited_stream_without_done_is_a_success(server: FaultServer) -> None:
    body = b"".join(
        f"data: {json.dumps(e)}\n\n".encode() for e in (ctext(" a"), ctext(" b", "length"))
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    server.script(Raw([(0.0, head), (0.0, body)], close=True))
    record = complete(ApiConfig(server.url, "faulty", retries=0), max_tokens=2)
    assert record.ok and record.text == " a b"


def test_a_stream_that_stops_without_finish_or_done_is_cut(server: FaultServer) -> None:
    server.script(sse([ctext(" a"), ctext(" b")], done=False))
    record = complete(ApiConfig(server.url, "faulty", retries=0))
    assert not record.ok and record.cause == "stream_cut"


# ---- 8. bounded waits and sizes; malformed counts ------------------------------------------


def test_a_stream_that_hangs_midway_stops_at_the_stall_timeout(server: FaultServer) -> None:
    hang = sse([ctext(" a"), ctext(" b", "length")], delays=[0, 3600])
    server.script(hang)
    started = time.monotonic()
    record = complete(ApiConfig(server.url, "faulty", stall_timeout_s=0.3, retries=0))
    assert not record.ok and record.cause == "timeout" and "no byte for 0.3 s" in record.detail
    assert time.monotonic() - started < 20  # a hang, not a measured duration


def test_a_huge_body_is_refused_not_stored(server: FaultServer) -> None:
    """The issue's example: a 50 MB body was an ok point; here 9 MiB passes the 8 MiB cap."""
    text = "x" * (9 * 2**20)
    server.script(json_answer({"choices": [{"text": text, "finish_reason": "length"}]}))
    record = complete(ApiConfig(server.url, "faulty", stream=False, **FAST))
    assert not record.ok and record.cause == "too_large" and len(record.attempts) == 1
    assert record.text == ""


def test_a_stream_over_the_size_cap_is_refused(server: FaultServer) -> None:
    server.script(sse([ctext("y" * 1000)] * 8))
    record = complete(ApiConfig(server.url, "faulty", max_body_bytes=4096, retries=0))
    assert not record.ok and record.cause == "too_large" and "4,096 bytes" in record.detail


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1.0, 1023.9])
def test_the_body_cap_is_checked_where_it_is_configured(bad: float) -> None:
    """ApiConfig owns the check of --max-body-mib (x 2**20): inf and nan passed it, checked
    only by the openai backend before."""
    with pytest.raises(UserError, match=r"--max-body-mib must be a finite number of MiB, at"):
        ApiConfig("http://127.0.0.1:9/v1", "m", max_body_bytes=bad)
    assert ApiConfig("http://127.0.0.1:9/v1", "m", max_body_bytes=4096.7).max_body_bytes == 4096


@pytest.mark.parametrize("bad", ["lots", -3, 2.5, True])
def test_malformed_usage_is_recorded_not_raised(server: FaultServer, bad: object) -> None:
    """The issue's example: "completion_tokens": "lots" crashed the run with a traceback."""
    usage = {"prompt_tokens": 4, "completion_tokens": bad}
    answer = {"choices": [{"text": " x", "finish_reason": "length"}], "usage": usage}
    server.script(
        json_answer(answer), sse([ctext(" x", "length"), {"choices": [], "usage": usage}])
    )
    for stream in (False, True):
        # A server that miscounts will do it again: not retried, and said to repeat.
        record = complete(ApiConfig(server.url, "faulty", stream=stream, retries=3))
        assert not record.ok and record.cause == "malformed"
        assert f"usage.completion_tokens is {bad!r}" in record.detail
        assert len(record.attempts) == 1 and record.summary()["repeats"]


# ---- 10. credentials in the URL ------------------------------------------------------------


def test_a_key_in_the_urls_query_is_refused_in_one_line_and_never_shown(tmp_path: Path) -> None:
    # A query was dropped from every request, and `?api_key=...` was stored with the run.
    from cli_runner import invoke

    url = "http://user:SECRET-1@127.0.0.1:9/v1?api_key=SECRET-2#SECRET-3"
    result = invoke("profile", "m", "--backend", "openai", "--base-url", url,
                    "--store", tmp_path / "s.sqlite")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "carries a query or fragment" in result.output and "--api-key" in result.output
    assert "SECRET" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s.sqlite").exists()
    with pytest.raises(UserError, match="not an http") as caught:
        ApiConfig("ftp://user:SECRET-4@host/v1", "m")
    assert "SECRET" not in str(caught.value)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_kept(server: FaultServer) -> None:
    url = server.url.replace("http://", "http://user:SECRET-KEY-42@")
    config = ApiConfig(url, "faulty", **FAST)
    assert config.base_url == server.url and "SECRET" not in str(config.to_dict())
    assert "SECRET" not in repr(config) and config.to_dict()["authenticated"]
    server.script("echo401")
    record = complete(config)
    token = base64.b64encode(b"user:SECRET-KEY-42").decode()
    assert f"Basic {token}" in server.headers[-1]
    assert "SECRET" not in record.detail and token not in record.detail
    assert "***" in record.detail
