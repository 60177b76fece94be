"""`infermeter serve` on a tiny random-weight model, profiled through the openai backend.

Everything is real: a uvicorn server on 127.0.0.1 serving a transformers model, the HTTP
client, the SQLite store, the CLI. Faults come from tests/api_servers.FaultServer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from api_servers import LLAMA_TOKENIZER, fault_server, free_port
from infermeter.backends import get_backend
from infermeter.cli.main import app
from infermeter.errors import UserError
from infermeter.experiments.load import LoadGrid, load_summary, run_load_sweep
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.model.fit import fit_cost_model
from infermeter.spec.model import ModelSpec
from infermeter.store.db import Store
from infermeter.workloads.tokenizer import Tokenizer, load_tokenizer
from specs import LLAMA_LAYOUT
from timed_server import TimedServer

pytest.importorskip("torch")
pytest.importorskip("transformers")

from infermeter.backends.hf import HFBackend
from infermeter.backends.serve import create_app, running
from infermeter.workloads.textgen import HFGenerator

SPEC = ModelSpec(
    name="tiny-llama-32k",
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vocab_size=32000,  # the LLaMA tokenizer's size
    ffn_size=128,
    max_context=512,
    **LLAMA_LAYOUT,
    dtype="float32",
)
KEY = "sk-infermeter-test-SECRET-0123456789"
runner = CliRunner()


@pytest.fixture(scope="module")
def generator() -> Iterator[HFGenerator]:
    backend = HFBackend(device="cpu", warmup=0)
    backend.prepare(SPEC)
    yield HFGenerator(backend)
    backend.close()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(LLAMA_TOKENIZER if LLAMA_TOKENIZER.is_file() else "bytes")


@pytest.fixture(scope="module")
def served(generator: HFGenerator, tokenizer: Tokenizer) -> Iterator[str]:
    with running(create_app(generator, tokenizer, "tiny")) as url:
        yield url


@pytest.fixture(scope="module")
def locked(generator: HFGenerator, tokenizer: Tokenizer) -> Iterator[str]:
    with running(create_app(generator, tokenizer, "tiny", api_key=KEY)) as url:
        yield url


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMETER_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("OPENAI_API_KEY", "INFERMETER_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sse(raw: bytes) -> list[Any]:
    events = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---- the server ------------------------------------------------------------------------------


def test_models_list(served: str) -> None:
    with urllib.request.urlopen(f"{served}/models", timeout=10) as response:
        data = json.loads(response.read())
    assert [m["id"] for m in data["data"]] == ["tiny"]


def test_completion_streamed_and_not_agree(served: str, tokenizer: Tokenizer) -> None:
    body = {"model": "tiny", "prompt": "the cat sat", "max_tokens": 7, "ignore_eos": True}
    status, raw = post(f"{served}/completions", body)
    assert status == 200
    whole = json.loads(raw)
    expected_prompt = len(tokenizer.encode("the cat sat")) + 1  # + BOS
    assert whole["usage"] == {
        "prompt_tokens": expected_prompt,
        "completion_tokens": 7,
        "total_tokens": expected_prompt + 7,
    }
    assert whole["choices"][0]["finish_reason"] == "length"
    status, raw = post(
        f"{served}/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse(raw)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"] == whole["usage"] and events[-2]["choices"] == []
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == whole["choices"][0]["text"]  # greedy: the same tokens either way


def test_chat_stream_format(served: str) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
    }
    events = sse(post(f"{served}/chat/completions", body)[1])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1] == "[DONE]"
    assert not any("usage" in e for e in events[:-1])  # only when asked for
    _, raw = post(f"{served}/chat/completions", {**body, "stream": False})
    reply = json.loads(raw)
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] == 4


class EosIs:
    """The served tokenizer, but with a chosen id as end-of-sequence."""

    def __init__(self, tokenizer: Tokenizer, eos: int) -> None:
        self._tokenizer = tokenizer
        self.eos_id = eos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def test_max_min_tokens_and_ignore_eos(generator: HFGenerator, tokenizer: Tokenizer) -> None:
    prompt = "the cat sat"
    ids = [tokenizer.bos_id or 0, *tokenizer.encode(prompt)]
    first = next(iter(generator.stream(ids, 1)))  # the greedy first token becomes "eos"
    with running(create_app(generator, EosIs(tokenizer, first), "tiny")) as url:  # type: ignore[arg-type]

        def ask(**more: Any) -> dict[str, Any]:
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, **more}
            status, raw = post(f"{url}/completions", body)
            assert status == 200, raw
            return json.loads(raw)

        stopped = ask()
        assert stopped["usage"]["completion_tokens"] == 0
        assert stopped["choices"][0]["finish_reason"] == "stop"
        at_least = ask(min_tokens=3)
        assert 3 <= at_least["usage"]["completion_tokens"] <= 8
        forced = ask(ignore_eos=True)
        assert forced["usage"]["completion_tokens"] == 8
        assert forced["choices"][0]["finish_reason"] == "length"
        assert ask(max_tokens=2, ignore_eos=True)["usage"]["completion_tokens"] == 2


def test_streamed_tokens_reuse_the_kv_cache_without_deprecation_warnings(
    generator: HFGenerator,
) -> None:
    """The served stream equals greedy decoding by whole-sequence forwards (so the KV cache
    is passed under the name this transformers reads), and no FutureWarning reaches the
    server's console (transformers 5 warns on `past_key_values`)."""
    import warnings

    import torch

    prompt = [1, 450, 6635, 3290, 373]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        streamed = list(generator.stream(prompt, 6))
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(6):
            logits = generator.model(input_ids=torch.tensor([ids]), use_cache=False).logits
            ids.append(int(torch.argmax(logits[0, -1])))
    assert streamed == ids[len(prompt) :]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 600}, 400, "maximum context length"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": {"a": 1}}, 400, "prompt must be"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(
    served: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    path = "chat/completions" if "messages" in body else "completions"
    code, raw = post(f"{served}/{path}", body)
    assert code == status
    assert fragment in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize(
    ("more", "param", "fragment"),
    [
        ({"stream": "yes"}, "stream", "'stream' must be a boolean, got a string"),
        ({"stream": 1}, "stream", "'stream' must be a boolean, got an integer"),
        ({"ignore_eos": "no"}, "ignore_eos", "'ignore_eos' must be a boolean"),
        ({"temperature": "hot"}, "temperature", "'temperature' must be a number"),
        ({"temperature": True}, "temperature", "got a boolean"),
        ({"temperature": -1}, "temperature", "between 0 and 2, got -1"),
        ({"temperature": 2.5}, "temperature", "between 0 and 2, got 2.5"),
        ({"max_tokens": "5"}, "max_tokens", "'max_tokens' must be an integer >= 1, got a string"),
        ({"max_tokens": True}, "max_tokens", "got a boolean"),
        ({"max_tokens": 2.0}, "max_tokens", "got a number"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens", "got a string"),
        ({"min_tokens": False}, "min_tokens", "'min_tokens' must be an integer"),
        ({"n": True}, "n", "'n' must be an integer"),
        ({"n": 2}, "n", "only n=1 is supported"),
        ({"stream": True, "stream_options": [1]}, "stream_options", "must be an object"),
        (
            {"stream": True, "stream_options": {"include_usage": "no"}},
            "stream_options.include_usage",
            "'stream_options.include_usage' must be a boolean, got a string",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "got an integer",
        ),
        (
            {"stream_options": {"include_usage": True}},
            "stream_options",
            "only allowed when 'stream' is true",
        ),
        (
            {"stream": False, "stream_options": {}},
            "stream_options",
            "only allowed when 'stream' is true",
        ),
    ],
)
def test_wrongly_typed_fields_get_400s_naming_them(
    served: str, more: dict[str, Any], param: str, fragment: str
) -> None:
    """Typed like OpenAI's (and vLLM's) API: "stream": "yes" or "max_tokens": true were served."""
    code, raw = post(f"{served}/completions", {"model": "tiny", "prompt": "x", **more})
    assert code == 400, raw
    error = json.loads(raw)["error"]
    assert fragment in error.pop("message")
    assert error == {"type": "invalid_request_error", "param": param, "code": None}


def test_valid_optional_fields_are_still_served(served: str) -> None:
    for more in (
        {"temperature": 0},
        {"temperature": 2, "stream": None},
        {"temperature": 0.7},
        {"stream_options": None},
    ):
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1, "ignore_eos": False, **more}
        assert post(f"{served}/completions", body)[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "nothing", 404, "not_found"),
        ("POST", "nothing", 404, "not_found"),
        ("GET", "completions", 405, "method_not_allowed"),
        ("DELETE", "chat/completions", 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_and_methods_get_openai_errors(
    served: str, method: str, path: str, status: int, code: str
) -> None:
    """FastAPI's own {"detail": "Not Found"} is not the OpenAI shape clients parse."""
    request = urllib.request.Request(f"{served}/{path}", method=method)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["code"] == code and f"{method} /v1/{path}" in error["message"]
    if status == 405:
        assert caught.value.headers["allow"] == "POST"


def test_api_key_is_required_when_set(locked: str) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    assert post(f"{locked}/completions", body)[0] == 401
    assert post(f"{locked}/completions", body, key="wrong")[0] == 401
    assert post(f"{locked}/completions", body, key=KEY)[0] == 200


# ---- the openai backend through run_profile -------------------------------------------------

GRID = ProfileGrid((16, 64, 128), (1, 4, 8), (1,), 2)


def test_profile_of_the_served_model(served: str, tmp_path: Path) -> None:
    tokenizer_option = str(LLAMA_TOKENIZER) if LLAMA_TOKENIZER.is_file() else "bytes"
    backend = get_backend("openai", base_url=served, tokenizer=tokenizer_option)
    with Store(tmp_path / "s.sqlite") as db:
        run = run_profile(db, SPEC, {"backend": "openai"}, backend, {"u": served}, GRID)
        points = db.points(run.id)
        assert run.status == "complete" and run.backend_info["model"] == "tiny"
        assert len(points) == len(GRID.points()) and (points.status == "ok").all()
        extra = [json.loads(e) for e in points.extra_json]
        usage = pd.DataFrame([e["usage"] for e in extra])
        assert (usage.prompt_tokens == points.prompt_tokens).all()
        assert (usage.completion_tokens == points.output_tokens).all()
        itl = pd.Series([len(e["itl_s"]) for e in extra])
        assert (itl == points.output_tokens - 1).all()
        assert len({e["prompt_seed"] for e in extra}) == len(extra)  # new prompt every trial
        assert (points.ttft_s <= points.runtime_s).all()
        model = fit_cost_model(points, overhead="auto", accept_poor_fit=True)
        # The fit's quality is a property of the machine's noise (a tiny model on two shared
        # cores); that it covers every profiled point with the API overhead term is ours.
        assert model.fit["n_points"] == len(GRID.prompt_sizes) * len(GRID.output_sizes)
        assert model.fit["overhead_mode"] == "auto" and model.overhead >= 0
        # the same profile again measures nothing
        seen: list[tuple[int, int]] = []
        run_profile(
            db,
            SPEC,
            {"backend": "openai"},
            get_backend("openai", base_url=served, tokenizer=tokenizer_option),
            {"u": served},
            GRID,
            on_start=lambda r, done, total: seen.append((done, total)),
        )
        assert seen == [(len(GRID.points()), len(GRID.points()))]


def test_identical_prompts_when_asked(served: str, tmp_path: Path) -> None:
    backend = get_backend("openai", base_url=served, identical_prompts=True)
    grid = ProfileGrid((16,), (1, 2), (1,), 3)
    with Store(tmp_path / "s.sqlite") as db:
        run = run_profile(db, SPEC, {}, backend, {}, grid)
        extra = [json.loads(e) for e in db.points(run.id).extra_json]
    assert len({e["prompt_seed"] for e in extra}) == 1


def test_wrong_lengths_are_flagged_and_failures_recorded(tmp_path: Path) -> None:
    grid = ProfileGrid((8, 32), (2, 3), (1,), 2)
    with fault_server(token_delay_s=0.02) as server, Store(tmp_path / "s.sqlite") as db:
        server.faults_for = lambda body: body.get("max_tokens") in (2, 3)  # measurements only
        backend = get_backend("openai", base_url=server.url, endpoint="chat", retries=1)
        backend.config = replace(backend.config, backoff_s=0.01, backoff_max_s=0.02)
        # Measurements in order: (8,2,0) short, (8,3,0) 500 twice (an error after its
        # retry), (32,2,0) 429 then fine.
        server.script("short", "500", "500", "429")
        server.retry_after = "0.05"
        run = run_profile(db, SPEC, {}, backend, {}, grid)
        points = db.points(run.id).sort_values("measured_at", kind="stable")
        assert len(points) == len(grid.points())  # nothing dropped
        flagged = points[points.status == "flagged"]
        errors = points[points.status == "error"]
        assert len(flagged) == 1 and "server produced 1 token, asked 2" in flagged.detail.iloc[0]
        assert len(errors) == 1 and errors.detail.iloc[0].startswith("http_5xx: injected 500")
        assert "after 2 attempt(s)" in errors.detail.iloc[0]
        retried = [json.loads(e)["retries"] for e in points.extra_json]
        assert sum(retried) >= 2  # the error's retry and the 429's
        # Which points the fit takes: their statuses are the server's, their times made exact
        # (real ones on a loaded machine can make 6 points too noisy to fit at all).
        stored = db.points(run.id)
        stored["runtime_s"] = 0.01 + 2e-4 * stored.prompt_tokens + 0.02 * stored.output_tokens
        fitted = fit_cost_model(stored)
        assert fitted.fit["n_trials"] == len(grid.points()) - 2  # flagged and error left out
        # a rerun measures the failed point again (and only it)
        before = len(server.requests)
        run_profile(
            db, SPEC, {}, get_backend("openai", base_url=server.url, endpoint="chat"), {}, grid
        )
        after = db.points(run.id)
        assert (after.status != "error").all()
        assert len(server.requests) - before == 1 + 1  # the pre-flight request + the point


def test_configuration_faults_are_user_errors(served: str, locked: str) -> None:
    def prepare(**options: Any) -> None:
        get_backend("openai", **options).prepare(SPEC)

    with pytest.raises(UserError, match=r"cannot reach .* is the server running"):
        prepare(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UserError, match=r"model .gpt-9. is not served .* it serves: tiny"):
        prepare(base_url=served, api_model="gpt-9")
    with pytest.raises(UserError, match=r"refused the request .* pass --api-key"):
        prepare(base_url=locked)
    with pytest.raises(UserError, match="not an http"):
        prepare(base_url="127.0.0.1:8000")
    with pytest.raises(UserError, match="needs the server's URL"):
        get_backend("openai")


def test_servers_without_forced_length_params_are_handled(tmp_path: Path) -> None:
    with fault_server(strict=True) as server, Store(tmp_path / "s.sqlite") as db:
        backend = get_backend("openai", base_url=server.url)
        run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid((8,), (1, 2), (1,), 1))
        assert (db.points(run.id).status == "ok").all()
        assert not run.backend_info["forced_length"]
        assert any("not sent" in note for note in run.backend_info["notes"])
        assert "ignore_eos" not in server.requests[-1]


# ---- the CLI ---------------------------------------------------------------------------------


def invoke(*args: str | Path, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_cli_profile_variance_and_the_key(locked: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "api.sqlite"
    common = ["--backend", "openai", "--base-url", locked, "--store", store]
    grid = ["--prompt-sizes", "16,64", "--output-sizes", "1,4,8", "--trials", "2"]
    # the key is the subject, not the fit of a loaded machine's timings (variance keeps any)
    result = invoke("profile", "any-api-model", *common, *grid, "--accept-poor-fit",
                    env={"OPENAI_API_KEY": KEY})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "overhead" in result.stdout and "R²" in result.stdout
    varied = invoke("variance", "--store", store, "--output", tmp_path / "fig7.csv")
    assert varied.exit_code == 0, varied.output
    assert "raw >= denoised for" in varied.stdout
    fig7 = pd.read_csv(tmp_path / "fig7.csv")
    assert {"raw_s", "denoised_s"} <= set(fig7.columns) and len(fig7) == 2 * 3 * 2
    # a wrong key: one line, exit 2, no key in it
    wrong = "sk-wrong-key-ABCDEFGHIJKLMNOP"
    other_grid = [*grid[:-1], "3"]  # a new run, so the server is asked
    failed = invoke("profile", "any-api-model", *common, *other_grid, "--api-key", wrong)
    assert failed.exit_code == 2 and "pass --api-key" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
            assert wrong.encode() not in path.read_bytes(), path
    for text in (result.output, varied.output, failed.output, caplog.text):
        assert KEY not in text and wrong not in text


def test_cli_error_quoting_the_key_is_redacted(tmp_path: Path) -> None:
    key = "sk-echoed-0000-SECRET"
    with fault_server() as server:
        server.script("echo401")
        result = invoke(
            "profile",
            "m",
            "--backend",
            "openai",
            "--base-url",
            server.url,
            "--api-key",
            key,
            "--store",
            tmp_path / "s.sqlite",
        )
    assert result.exit_code == 2 and "***" in result.stderr and key not in result.output


def test_cli_load_sweep(served: str, tmp_path: Path) -> None:
    store = tmp_path / "load.sqlite"
    args = ["load", "tiny", "--base-url", served, "--prompt-tokens", "64", "--output-sizes", "8"]
    args += ["--concurrency", "1,4", "--trials", "2", "--store", str(store)]
    result = invoke(*args, "--output", tmp_path / "load.csv")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "load.csv")
    assert list(summary.concurrency) == [1, 4] and list(summary.requests) == [2, 8]
    # piped, the printed table is whole: every header uncut (the file's columns are its own)
    cut = [c for c in summary.columns if f" {c} " not in result.stdout]
    assert not cut and "\u2026" not in result.stdout, result.stdout
    # One worker serves requests in turn: four in flight take longer each (2.5x on a quiet
    # machine; the bound leaves room for a loaded one, whose timings are noisier).
    assert summary.slowdown.iloc[1] > 1.05
    with Store(store) as db:
        points = db.points(db.latest_run_id())
    assert len(points) == 2 + 8 and set(points.batch_size) == {1, 4}


def test_load_sweep_resumes(served: str, tmp_path: Path) -> None:
    grid = LoadGrid(32, (2,), (1, 2), 2)
    with Store(tmp_path / "l.sqlite") as db:
        steps: list[tuple[int, int, int]] = []
        backend = get_backend("openai", base_url=served)
        run = run_load_sweep(
            db, SPEC, {}, backend, {}, grid, on_step=lambda *a: steps.append(a[:3])
        )
        assert len(steps) == 4 and run.status == "complete"
        again: list[tuple[int, int]] = []
        run_load_sweep(
            db,
            SPEC,
            {},
            get_backend("openai", base_url=served),
            {},
            grid,
            on_start=lambda r, done, total: again.append((done, total)),
        )
        assert again == [(4, 4)]
        assert load_summary(db.points(run.id)).requests.tolist() == [2, 4]


def test_ctrl_c_leaves_a_resumable_run(tmp_path: Path) -> None:
    store = tmp_path / "c.sqlite"
    with TimedServer(delay_s=0.15) as server:  # slow to be caught; then a slope to fit
        cmd = [
            sys.executable,
            "-m",
            "infermeter",
            "profile",
            "m",
            "--backend",
            "openai",
            "--base-url",
            server.url,
            "--prompt-sizes",
            "8,32",
            "--output-sizes",
            "1,4",
            "--trials",
            "3",
            "--accept-poor-fit",  # the fault server's time has no structure in p or o
            "--store",
            str(store),
        ]
        env = {**os.environ, "INFERMETER_CACHE_DIR": str(tmp_path / "cache")}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and proc.poll() is None and stored < 3:
            time.sleep(0.05)
            try:
                stored = sqlite3.connect(store).execute("SELECT count(*) FROM points").fetchone()[0]
            except sqlite3.Error:
                continue
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert b"rerun the same command to resume" in err
        con = sqlite3.connect(store)
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
        kept = con.execute("SELECT count(*) FROM points").fetchone()[0]
        assert 0 < kept < 12
        server.delay_s = 0.0
        finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert finished.returncode == 0, finished.stderr
        assert f"resuming run 1: {kept}/24" in finished.stdout
        assert sqlite3.connect(store).execute("SELECT count(*) FROM points").fetchone()[0] == 12


def test_cli_serve_answers_until_interrupted() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "infermeter", "serve", "tiny-llama", "--device", "cpu"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--name", "served"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                    assert json.loads(response.read())["data"][0]["id"] == "served"
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.2)
        body = {"model": "served", "prompt": "hi", "max_tokens": 3, "ignore_eos": True}
        status, raw = post(f"{url}/completions", body)
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert b"serving served (hf, tokenizer bytes)" in out


def test_a_server_ended_without_its_shutdown_still_stops_the_models_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A second Ctrl-C makes uvicorn exit without the app's shutdown (its force_exit skips the
    # lifespan's end), which is what stops the model's thread: `serve` then closed the model
    # under a thread that might be inside torch as Python exits (found 2026-12-03).
    import infermeter.backends.serve as serve_module
    from infermeter.requests import ServeRequest

    served: list[Any] = []

    def force_exited(app: Any, *args: Any, **kwargs: Any) -> None:
        served.append(app)
        raise KeyboardInterrupt  # uvicorn raises the captured SIGINT once it has returned

    monkeypatch.setattr(serve_module, "serve", force_exited)
    request = ServeRequest(model="tiny-llama", device="cpu", port=0)
    with pytest.raises(KeyboardInterrupt):
        serve_module.serve_model(request, lambda notes, line: None)
    (served_app,) = served
    assert not served_app.state.worker._thread.is_alive()


# ---- a server in a process of its own -------------------------------------------------------


@pytest.mark.slow
def test_a_model_served_from_its_own_process_is_profiled_and_stopped(tmp_path: Path) -> None:
    from infermeter.backends.serve import running_in_process

    with running_in_process(SPEC, "hf", {"device": "cpu"}, tokenizer="bytes") as url:
        backend = get_backend("openai", base_url=url, tokenizer="bytes")
        with Store(tmp_path / "s.sqlite") as db:
            run = run_profile(db, SPEC, {"backend": "openai"}, backend, {}, GRID)
            points = db.points(run.id)
        pid = json.loads(urllib.request.urlopen(f"{url}/models", timeout=5).read())
    assert run.status == "complete" and (points.status == "ok").all()
    assert pid["data"][0]["id"] == SPEC.name  # served under the spec's name by default
    with pytest.raises(urllib.error.URLError):  # the child is gone with the block
        urllib.request.urlopen(f"{url}/models", timeout=2)


def test_a_server_that_cannot_load_says_why() -> None:
    from infermeter.backends.serve import running_in_process

    with (
        pytest.raises(RuntimeError, match=r"the model server failed: .*backend"),
        running_in_process(SPEC, "no-such-backend", {}),
    ):
        pass


# ---- issue 16: serve's edges, and prompts counted exact for any tokenizer --------------------


@pytest.mark.parametrize(
    ("path", "raw", "fragment"),
    [
        ("completions", b"[1,2,3]", "must be a JSON object"),
        ("chat/completions", b'{"model": "tiny", "messages": [1, 2]}', "messages[0] must be"),
        (
            "completions",
            b'{"model": "tiny", "prompt": "x", "stream": true, "stream_options": "yes"}',
            "'stream_options' must be an object",
        ),
        ("completions", b'{"model": "tiny", "prompt": [5, 1000000000]}', "outside the vocabulary"),
        ("completions", b'{"model": "tiny", "prompt": [-1]}', "token id -1 is outside"),
        ("chat/completions", b'{"model": "tiny", "messages": [{"content": 3}]}', "content must"),
    ],
)
def test_malformed_requests_get_openai_400s(served: str, path: str, raw: bytes, fragment: str):
    """The issue's examples: bare text/plain 500s, and a 200 for ids outside the vocabulary."""
    request = urllib.request.Request(f"{served}/{path}", raw, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert caught.value.headers["content-type"] == "application/json"
    error = json.loads(caught.value.read())["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


class SlowGenerator:
    """The served generator with an injected 20 ms a token, counting the tokens it makes."""

    def __init__(self, generator: HFGenerator) -> None:
        self.generator = generator
        self.name, self.vocab_size = generator.name, generator.vocab_size
        self.max_context = generator.max_context
        self.made = 0

    def stream(self, *args: Any, **kwargs: Any):
        for token in self.generator.stream(*args, **kwargs):
            time.sleep(0.02)
            self.made += 1
            yield token


def test_a_client_that_hangs_up_stops_its_generation(
    generator: HFGenerator, tokenizer: Tokenizer
) -> None:
    """The issue's example: a non-streaming request whose client hung up kept generating."""
    import socket

    slow = SlowGenerator(generator)
    with running(create_app(slow, tokenizer, "tiny")) as url:  # type: ignore[arg-type]
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 400, "ignore_eos": True})
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            deadline = time.monotonic() + 20
            while slow.made == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # generating
        status, _ = post(f"{url}/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
        assert status == 200
    # 400 tokens would take 8 s of injected time; the hang-up stopped it long before
    assert 0 < slow.made < 400


def test_shutdown_stops_a_generation_and_waits_for_the_models_thread(
    generator: HFGenerator,
) -> None:
    """A thread still inside a torch call when the server's process ends aborts it
    ("terminate called without an active exception"): stop() cancels what is generating or
    queued and returns once the thread has ended."""
    import asyncio

    from infermeter.backends.serve import GenerationWorker, _Job

    slow = SlowGenerator(generator)
    worker = GenerationWorker(slow, [])  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        jobs = [_Job([1, 2, 3], 400, 0, True, loop, asyncio.Queue()) for _ in range(2)]
        for job in jobs:
            worker.submit(job)
        deadline = time.monotonic() + 60
        while slow.made == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the first job is generating
        worker.stop()
        assert not worker._thread.is_alive()
        # 400 tokens would take 8 s of injected time; the second job never started
        assert 0 < slow.made < 400 and all(job.cancelled.is_set() for job in jobs)
    finally:
        loop.close()


def test_streams_say_whether_tokens_are_live(served: str) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "stream": True}
    request = urllib.request.Request(
        f"{served}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["x-infermeter-stream"] == "live"


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_served_bytes_model_is_profiled_exact_without_a_tokenizer(
    generator: HFGenerator, tmp_path: Path, endpoint: str
) -> None:
    """The issue's example: `serve gpt2` (bytes tokenizer) then a profile without --tokenizer
    said "prompt size 1 is below the 74 tokens..." and "could not build ... 100 tokens"."""
    from infermeter.workloads.tokenizer import ByteTokenizer

    sizes = (1, 100, 200) if endpoint == "completions" else (40, 100, 200)
    with running(create_app(generator, ByteTokenizer(), "gpt2")) as url:
        backend = get_backend("openai", base_url=url, endpoint=endpoint)
        with Store(tmp_path / "s.sqlite") as db:
            run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid(sizes, (1, 24), (1,), 2))
            points = db.points(run.id)
    assert len(points) == 12 and (points.status == "ok").all(), points.detail.tolist()
    extra = [json.loads(e) for e in points.extra_json]
    # Every token is a stream chunk, those whose bytes are half a character too (a fresh-eyes
    # check: served chat sent them as "delta": {}, and a point was stored with no TTFT).
    assert [e["stream_chunks"] for e in extra] == points.output_tokens.tolist()
    assert points.ttft_s.notna().all()
    assert {e["prompt_check"] for e in extra} == {"exact (usage)"}
    assert all(
        e["usage"]["prompt_tokens"] == p for e, p in zip(extra, points.prompt_tokens, strict=True)
    )
    assert run.backend_info["prompt_units"] == "letters"


def test_chat_prompts_are_exact_per_prompt_with_a_template(served: str, tmp_path: Path) -> None:
    backend = get_backend("openai", base_url=served, endpoint="chat")
    with Store(tmp_path / "s.sqlite") as db:
        run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid((32, 127, 128), (1, 2), (1,), 4))
        points = db.points(run.id)
    extra = [json.loads(e) for e in points.extra_json]
    assert [e["usage"]["prompt_tokens"] for e in extra] == points.prompt_tokens.tolist()
    assert (points.status == "ok").all()


def test_a_profile_says_when_the_server_streams_after_generating(
    generator: HFGenerator, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    # A fresh-eyes check: `serve` on the engine backend says its streams come after the whole
    # generation (x-infermeter-stream: after-generation), and the profiler stored their TTFTs
    # as real. Any generator that does not stream live is served so.
    import copy

    from infermeter.backends.api.client import AFTER_GENERATION

    after = copy.copy(generator)
    after.streams_live = False  # type: ignore[attr-defined]
    tokenizer_option = str(LLAMA_TOKENIZER) if LLAMA_TOKENIZER.is_file() else "bytes"
    with running(create_app(after, tokenizer, "tiny")) as url, Store(tmp_path / "s.db") as db:
        backend = get_backend("openai", base_url=url, tokenizer=tokenizer_option)
        run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid((8,), (2, 3), (1,), 1))
        notes = [json.loads(e)["notes"] for e in db.points(run.id).extra_json]
    assert AFTER_GENERATION in run.backend_info["notes"]
    assert all(AFTER_GENERATION in n for n in notes)
