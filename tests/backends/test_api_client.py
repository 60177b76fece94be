"""The timing client against real local servers: healthy answers and every injected fault."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from api_servers import FaultServer, fault_server, free_port
from infermeter.backends.api.client import ApiClient, ApiConfig, RequestRecord, normalize_base_url
from infermeter.errors import UserError

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


def complete(config: ApiConfig, prompt: str = "the cat sat", max_tokens: int = 6) -> RequestRecord:
    async def go() -> RequestRecord:
        async with ApiClient(config) as client:
            return await client.complete(prompt, max_tokens)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def server():
    with fault_server() as running:
        yield running


@pytest.fixture(autouse=True)
def _clear(server: FaultServer) -> None:
    server.faults.clear()
    server.requests.clear()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("stream", [True, False])
def test_healthy_request_is_timed_and_counted(server: FaultServer, endpoint: str, stream: bool):
    record = complete(ApiConfig(server.url, "faulty", endpoint=endpoint, stream=stream))
    assert record.ok and record.cause is None and record.retries == 0
    assert (record.prompt_tokens, record.completion_tokens) == (4, 6)
    assert record.text == " x" * 6 and record.finish_reason == "length"
    assert record.e2e_s is not None and record.e2e_s > 0
    if stream:
        assert len(record.chunk_times_s) == 6 and len(record.itl_s) == 5
        assert 0 < record.ttft_s <= record.e2e_s
    else:
        assert record.ttft_s is None and record.chunk_times_s == []
    body = server.requests[-1]
    # forced length: the server is asked for exactly max_tokens
    assert (body["max_tokens"], body["min_tokens"], body["ignore_eos"]) == (6, 6, True)
    assert body["stream"] is stream
    assert ("messages" in body) is (endpoint == "chat")
    if stream:
        assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("fault", "cause", "stream"),
    [
        ("429", "http_429", True),
        ("500", "http_5xx", True),
        ("malformed", "malformed", False),
        ("cut", "stream_cut", True),
        ("cut", "stream_cut", False),
        ("close", "disconnected", True),
        ("badevent", "malformed", True),
        ("badchoice", "malformed", True),
        ("errevent", "stream_error", True),
    ],
)
def test_fault_then_success_is_retried_and_recorded(
    server: FaultServer, fault: str, cause: str, stream: bool
) -> None:
    server.script(fault)
    record = complete(ApiConfig(server.url, "faulty", stream=stream, **FAST))
    assert record.ok, record.detail
    assert [a.cause for a in record.attempts] == [cause, None]
    assert record.retries == 1
    assert record.completion_tokens == 6  # timing and counts are the successful attempt's
    summary = record.summary()
    assert summary["attempts"][0]["cause"] == cause and summary["attempts"][0]["detail"]


def test_retry_after_is_honoured(server: FaultServer) -> None:
    server.retry_after = "0.3"
    server.script("429", "429")
    start = time.perf_counter()
    record = complete(ApiConfig(server.url, "faulty", **FAST))
    assert record.ok
    waits = [a.waited_s for a in record.attempts[:2]]
    assert all(0.3 <= w <= 0.33 for w in waits), waits
    assert time.perf_counter() - start >= 0.6


def test_retry_after_beyond_the_limit_gives_up(server: FaultServer) -> None:
    server.retry_after = "3600"
    server.script("429")
    record = complete(ApiConfig(server.url, "faulty", **FAST))
    assert not record.ok and record.cause == "http_429" and len(record.attempts) == 1
    assert "exceeds the 120 s limit" in record.detail
    server.retry_after = "0.2"


def test_persistent_failure_stops_after_bounded_retries(server: FaultServer) -> None:
    server.script("500", "500", "500", "500")
    record = complete(ApiConfig(server.url, "faulty", retries=2, **FAST))
    assert not record.ok and record.cause == "http_5xx" and record.status == 500
    assert [a.cause for a in record.attempts] == ["http_5xx"] * 3
    assert "injected 500" in record.detail


def test_stalled_server_times_out(server: FaultServer) -> None:
    server.script("stall")
    start = time.perf_counter()
    record = complete(ApiConfig(server.url, "faulty", stall_timeout_s=0.3, retries=0))
    assert not record.ok and record.cause == "timeout"
    assert time.perf_counter() - start < 60  # the server stalls for an hour: no hang


def test_slow_stream_times_out_over_the_request_limit(server: FaultServer) -> None:
    """Bytes keep coming (no stall), but the request as a whole runs past timeout_s."""
    server.script("slow")
    start = time.perf_counter()
    config = ApiConfig(server.url, "faulty", timeout_s=0.25, stall_timeout_s=5, retries=0)
    record = complete(config)
    assert not record.ok and record.cause == "timeout"
    # The stream would have ended after 1.6 s; the request's timeout cut it first.
    assert "over the request timeout" in record.detail
    assert time.perf_counter() - start >= 0.25


def test_refused_connection_is_a_connect_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    record = complete(ApiConfig(url, "m", retries=2, **FAST))
    assert not record.ok and [a.cause for a in record.attempts] == ["connect"] * 3


@pytest.mark.parametrize("fault", ["401", "404"])
def test_refusals_are_not_retried(server: FaultServer, fault: str) -> None:
    server.script(fault)
    record = complete(ApiConfig(server.url, "faulty", **FAST))
    assert not record.ok and record.cause == "http_4xx" and record.status == int(fault)
    assert len(record.attempts) == 1


def test_the_key_is_sent_but_never_recorded(server: FaultServer) -> None:
    key = "sk-test-DO-NOT-LEAK-1234567890"
    config = ApiConfig(server.url, "faulty", api_key=key, **FAST)
    assert key not in repr(config) and key not in str(config.to_dict())
    server.script("echo401")
    record = complete(config)
    assert f"Bearer {key}" in server.headers[-1]
    assert record.status == 401 and "***" in record.detail
    assert key not in str(record.summary()) and key not in record.detail


def test_backoff_is_jittered_and_bounded() -> None:
    client = ApiClient(ApiConfig("http://x/v1", "m", backoff_s=0.5, backoff_max_s=4))
    client._rng = random.Random(1)
    waits = [[client._backoff(k, None) for _ in range(200)] for k in range(6)]
    for k, sample in enumerate(waits):
        cap = min(4.0, 0.5 * 2**k)
        assert all(0 <= w <= cap for w in sample)
        assert max(sample) > 0.8 * cap and len(set(sample)) == 200  # spread, not fixed
    assert 2.0 <= client._backoff(0, 2.0) <= 2.2


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host/v1", "http://", "http://h:99999"])
def test_bad_urls_are_user_errors(url: str) -> None:
    with pytest.raises(UserError, match="base-url"):
        normalize_base_url(url)
    assert normalize_base_url(" http://127.0.0.1:8000/v1/ ") == "http://127.0.0.1:8000/v1"


def test_gc_is_held_off_while_timing_and_restored_after() -> None:
    import gc

    from infermeter.backends.api.client import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer hold is still on
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is left as it was
    finally:
        gc.enable()


def test_requests_are_timed_on_uvloop_where_it_is_installed() -> None:
    import importlib.util

    from infermeter.backends.api.http import new_event_loop

    loop, name = new_event_loop()
    try:
        if importlib.util.find_spec("uvloop") is not None:  # a dependency on Linux and macOS
            assert type(loop).__module__.startswith("uvloop") and name.startswith("uvloop ")
        else:
            assert name == "asyncio"
    finally:
        loop.close()
