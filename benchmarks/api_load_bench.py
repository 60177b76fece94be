"""Is the client ever the bottleneck? Request rate and timing overhead of infermeter's API client
against a server that answers at once, and the same figures for peer load testers (guidellm,
AIPerf, inference-perf) in the same run, each from its own environment.

Goals (on the 2-core reference machine): >= 1,000 requests/s non-streaming, and p99 timing
overhead <= 1 ms with 64 concurrent streams.

- Server: benchmarks/instant_server.py in its own process (raw asyncio, uvloop where present).
  Its completion text carries, per token, ` @RECEIVED:SENT` on the system-wide monotonic clock.
- Max request rate: non-streaming completions (16-word prompt, 4 tokens) from `--concurrency`
  workers; the best level counts. Peers: their throughput or concurrency profiles.
- Timing overhead at 64 streams (the first round of every stream left out as warm-up: all 64
  start at the same instant): 64 concurrent streaming requests, 32 tokens each, the server
  spacing tokens 20 ms apart (a 50 tokens/s model), each stream on its own clock ("staggered":
  independent requests; the headline) and all on one clock ("lockstep": continuous batching,
  64 chunks leave at once every 20 ms; reported beside it). Per request:
      overhead = client-measured end-to-end latency - (last token SENT - RECEIVED)
  i.e. everything the client adds to the server's own time (sending, loopback, parsing, event
  loop delays); the same for time to first token. Token lateness = when the client stamped a
  token - when the server wrote it (same clock). A peer whose records keep the output text
  is measured the same way; one whose records do not is reported with its own latency less
  the server's nominal stream time, and says so.
- Ours is ApiClient.complete, the call `infermeter profile --backend openai` makes, on the loop
  it makes (api/http.new_event_loop: uvloop where installed, as it is by the install); the
  raw-socket floor runs on the same kind of loop. Each stream worker only keeps the records
  while the loop runs; the server's stamps are read from them once all streams are done (as
  the profiler reads its records after each step), so the harness's own analysis never runs
  on the loop it times.
  The raw-socket floor likewise; note that it ends a request at `[DONE]`, ours at the
  response's last chunk, as HTTP requires before the connection is reused.

Peers live in environments of their own (e.g. `python -m venv /work/peer-guidellm &&
/work/peer-guidellm/bin/pip install guidellm`); this script finds each by --guidellm /
--aiperf / --inference-perf PATH, $INFERMETER_PEER_<NAME>, /work/peer-<name>/bin/<name> or
PATH, installs nothing, and records for each what it measured or why it could not run.

Run: .venv/bin/python benchmarks/api_load_bench.py [--requests 20000] [--rounds 5]
Writes docs/benchmarks/api_load.json and api_load.md with device, date and commit.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import write_result  # noqa: E402
from infermeter.backends.api.client import ApiClient, ApiConfig, RequestRecord  # noqa: E402
from infermeter.backends.api.http import new_event_loop  # noqa: E402

STAMP = re.compile(r"@(\d+):(\d+)")
PROMPT = " ".join(["the"] * 16)
STREAMS, STREAM_TOKENS, INTERVAL_MS = 64, 32, 20.0
SCHEDULES = ("staggered", "lockstep")
GOAL_RPS, GOAL_P99_MS = 1000.0, 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InstantServer:
    """benchmarks/instant_server.py in a subprocess."""

    def __init__(self, interval_ms: float = 0.0, schedule: str = "lockstep") -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        cmd = [sys.executable, str(HERE / "instant_server.py"), "--port", str(self.port)]
        cmd += ["--interval-ms", str(interval_ms), "--schedule", schedule]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening" not in line:
            raise SystemExit(f"the instant server did not start: {line!r}")

    def __enter__(self) -> InstantServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def on_loop(coroutine: Any) -> Any:
    """Run `coroutine` on the loop the profiler times requests on (uvloop where installed)."""
    loop, _ = new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def p(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# ---- ours ----------------------------------------------------------------------------------


async def ours_rate(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    config = ApiConfig(url, "instant", stream=False, retries=0, max_connections=concurrency)
    async with ApiClient(config) as client:
        left = requests
        errors = 0

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                record = await client.complete(PROMPT, 4)
                errors += not record.ok

        await asyncio.gather(*(client.complete(PROMPT, 4) for _ in range(concurrency)))  # warm
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "seconds": seconds,
        "rps": requests / seconds,
    }


async def ours_streams(url: str, rounds: int) -> dict[str, Any]:
    config = ApiConfig(url, "instant", stream=True, retries=0, max_connections=STREAMS)
    records: list[RequestRecord] = []
    async with ApiClient(config) as client:
        await asyncio.gather(*(client.complete(PROMPT, 2) for _ in range(STREAMS)))  # warm

        async def stream() -> None:
            for _ in range(rounds):
                records.append(await client.complete(PROMPT, STREAM_TOKENS))

        await asyncio.gather(*(stream() for _ in range(STREAMS)))
    # The server's stamps are read once every stream is done, as the profiler reads its
    # records: the harness's own analysis must not run on the loop it is timing.
    rows: list[dict[str, Any]] = []
    errors = 0
    for record in records:
        stamps = [(int(a), int(b)) for a, b in STAMP.findall(record.text)]
        if not record.ok or len(stamps) != len(record.chunk_times_s) or not stamps:
            errors += 1
            continue
        received = stamps[0][0]
        late = [
            record.sent_at + t - sent / 1e9
            for t, (_, sent) in zip(record.chunk_times_s, stamps, strict=True)
        ]
        rows.append(
            {
                "start": record.sent_at,
                "e2e": record.e2e_s - (stamps[-1][1] - received) / 1e9,
                "ttft": record.ttft_s - (stamps[0][1] - received) / 1e9,
                "edge": [late[0], late[-1]],
                "lateness": late,
            }
        )
    return summary(rows, errors)


class _FloorProtocol(asyncio.Protocol):
    """The least a client can do: stamp each read, look for the server's stamps and [DONE]."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.done: asyncio.Future[float] | None = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.reads.append((now, data))
        if b"[DONE]" in data and self.done is not None and not self.done.done():
            self.done.set_result(now)


async def floor_streams(port: int, rounds: int) -> dict[str, Any]:
    """The same measurement with a raw-socket client: what this machine and server allow."""
    loop = asyncio.get_running_loop()
    body = json.dumps(
        {"model": "instant", "prompt": PROMPT, "max_tokens": STREAM_TOKENS, "stream": True}
    ).encode()
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    wire = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    rows: list[dict[str, Any]] = []

    async def stream() -> None:
        transport, protocol = await loop.create_connection(_FloorProtocol, "127.0.0.1", port)
        for _ in range(rounds):
            protocol.reads = []
            protocol.done = loop.create_future()
            sent = time.perf_counter()
            transport.write(wire)
            ended = await protocol.done
            requests.append((sent, ended, protocol.reads))
        transport.close()

    requests: list[tuple[float, float, list[tuple[float, bytes]]]] = []
    await asyncio.gather(*(stream() for _ in range(STREAMS)))
    rows: list[dict[str, Any]] = []
    for sent, ended, reads in requests:  # analysed after the run, like ours
        stamps = [
            (t, int(a), int(b)) for t, data in reads for a, b in STAMP.findall(
                data.decode("latin-1")
            )
        ]  # fmt: skip
        received = stamps[0][1]
        late = [t - sent_ns / 1e9 for t, _, sent_ns in stamps]
        rows.append(
            {
                "start": sent,
                "e2e": (ended - sent) - (stamps[-1][2] - received) / 1e9,
                "ttft": (stamps[0][0] - sent) - (stamps[0][2] - received) / 1e9,
                "edge": [late[0], late[-1]],
                "lateness": late,
            }
        )
    return summary(rows, 0)


# ---- guidellm ------------------------------------------------------------------------------


def byte_tokenizer(folder: Path) -> Path:
    """A local byte-level tokenizer for guidellm's synthetic prompts (it must not download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    wrapped.save_pretrained(str(folder))
    return folder


def guidellm(
    exe: str,
    root: str,
    tokdir: Path,
    out: Path,
    profile: str,
    requests: int,
    stream: bool,
    output_tokens: int,
) -> dict[str, Any]:
    backend = (
        f"kind=openai_http,target={root},model=instant,request_format=/v1/completions,"
        f"http2=false,stream={str(stream).lower()}"
    )
    cmd = [
        exe, "run", "--backend", backend,
        "--tokenizer", f"kind=huggingface_auto,model={tokdir}",
        "--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={output_tokens}",
        "--profile", profile,
        "--constraint", f"kind=max_requests,count={requests}",
        "--output", f"kind=json,path={out}",
        "--disable-console-interactive",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"guidellm failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(out.read_text())["benchmarks"][0]


def peer_rate(bench: dict[str, Any]) -> dict[str, Any]:
    ok = bench["requests"]["successful"]
    starts = [r["info"]["timings"]["request_start"] for r in ok]
    ends = [r["info"]["timings"]["request_end"] for r in ok]
    seconds = max(ends) - min(starts)
    totals = bench["metrics"]["request_totals"]
    return {
        "requests": len(ok),
        "errors": totals["errored"],
        "seconds": seconds,
        "rps": len(ok) / seconds,
    }


def peer_overheads(bench: dict[str, Any], wall_minus_mono: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    errors = bench["metrics"]["request_totals"]["errored"]
    for r in bench["requests"]["successful"]:
        t = r["info"]["timings"]
        stamps = [(int(a), int(b)) for a, b in STAMP.findall(r.get("output") or "")]
        if len(stamps) != STREAM_TOKENS:
            errors += 1
            continue
        received = stamps[0][0]
        first, last = stamps[0][1], stamps[-1][1]
        rows.append(
            {
                "start": t["request_start"],
                "e2e": (t["request_end"] - t["request_start"]) - (last - received) / 1e9,
                "ttft": (t["first_token_iteration"] - t["request_start"])
                - (first - received) / 1e9,
                "edge": [
                    t["first_token_iteration"] - (first / 1e9 + wall_minus_mono),
                    t["last_token_iteration"] - (last / 1e9 + wall_minus_mono),
                ],
            }
        )
    return summary(rows, errors)


# ---- the run -------------------------------------------------------------------------------


def summary(rows: list[dict[str, Any]], errors: int) -> dict[str, Any]:
    """Percentiles in ms, the first round of every stream left out (all 64 start at once)."""
    rows = sorted(rows, key=lambda r: r["start"])[STREAMS:]
    out: dict[str, Any] = {"requests": len(rows), "warmup_left_out": STREAMS, "errors": errors}
    for name in ("e2e", "ttft", "edge", "lateness"):
        if rows and name in rows[0]:
            flat = [v for r in rows for v in (r[name] if isinstance(r[name], list) else [r[name]])]
            values = np.asarray(flat) * 1e3
            out[f"{name}_ms"] = {q: p(values, float(q[1:])) for q in ("p50", "p90", "p99")}
            out[f"{name}_ms"]["max"] = float(values.max()) if len(values) else float("nan")
    return out


def load_command_rate(url: str, folder: Path, seconds: float = 10.0) -> dict[str, Any]:
    """Requests/s of `infermeter load --mode concurrent` (64 in flight, unstreamed, o = 4), as
    a user runs it: the CLI, its pre-flight and calibration, and every request stored."""
    cmd = [sys.executable, "-m", "infermeter", "load", "instant", "--base-url", url,
           "--mode", "concurrent", "--concurrency", "64", "--duration-s", str(seconds),
           "--warmup-s", "1", "--prompt-tokens", "16", "--output-sizes", "4", "--no-stream",
           "--retries", "0", "--output", str(folder / "load.csv"),
           "--store", str(folder / "load.sqlite")]  # fmt: skip
    env = {**os.environ, "INFERMETER_CACHE_DIR": str(folder / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"infermeter load failed ({done.returncode}): {done.stderr[-1000:]}")
    row = next(csv.DictReader((folder / "load.csv").open()))
    return {
        "concurrency": 64,
        "duration_s": seconds,
        "requests": int(row["requests"]),
        "failed": int(row["failed"]),
        "rps": float(row["achieved_rps"]),
        "latency_p99_s": float(row["latency_p99_s"]),
    }


class PeerFailed(Exception):
    """A peer tool that could not run here, with why (recorded, never fatal)."""


PEERS = ("guidellm", "aiperf", "inference-perf")


def find_peer(name: str, given: str | None) -> str:
    """The peer's executable: --NAME, $INFERMETER_PEER_<NAME>, /work/peer-NAME/bin/NAME, PATH."""
    env = os.environ.get(f"INFERMETER_PEER_{name.upper().replace('-', '_')}")
    for candidate in (given, env, f"/work/peer-{name}/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise PeerFailed(
        f"{name} not found: pass --{name} PATH (its own venv's executable)"
        + PEER_INSTALL_NOTES.get(name, "")
    )


# How to install a peer that a plain `python -m venv` + `pip install` on this machine's Python
# (3.11) does not give.
PEER_INSTALL_NOTES = {
    "inference-perf": "; its releases need Python >= 3.12, which pyenv has here: "
    "/root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /work/peer-inference-perf && "
    "/work/peer-inference-perf/bin/pip install inference-perf",
}


def peer_version(exe: str, package: str) -> str:
    """The peer's version, read by its own interpreter (it lives in its own environment)."""
    python = Path(exe).with_name("python")
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def run_guidellm(exe: str, levels: list[int], args: Any, folder: Path) -> dict[str, Any]:
    tokdir = byte_tokenizer(folder / "tok")
    rates = []
    with InstantServer() as server:
        profiles = [("throughput", f"kind=throughput,max_concurrency={max(levels)}")]
        profiles += [(f"concurrent@{c}", f"kind=concurrent,streams={c}") for c in levels]
        for i, (label, profile) in enumerate(profiles):
            bench = guidellm(
                exe, server.root, tokdir, folder / f"rate{i}.json", profile,
                min(args.requests, 5000), stream=False, output_tokens=4,
            )  # fmt: skip
            rates.append({"profile": label, **peer_rate(bench)})
            print(f"guidellm {label:>14}: {rates[-1]['rps']:8.0f} req/s")
    streams = {}
    for schedule in SCHEDULES:
        with InstantServer(INTERVAL_MS, schedule) as server:
            wall_minus_mono = time.time() - time.monotonic()
            bench = guidellm(
                exe, server.root, tokdir, folder / f"streams-{schedule}.json",
                f"kind=concurrent,streams={STREAMS}", STREAMS * args.rounds, stream=True,
                output_tokens=STREAM_TOKENS,
            )  # fmt: skip
            streams[schedule] = peer_overheads(bench, wall_minus_mono)
        print(f"guidellm 64 streams, {schedule}: p99 {streams[schedule]['e2e_ms']['p99']:.3f} ms")
    return {"rate": rates, "streams": streams}


def hf_cache_tokenizer(folder: Path) -> tuple[Path, str]:
    """byte_tokenizer laid out as a cached hub repo (AIPerf loads offline only from a cache):
    (HF_HOME, repo id)."""
    snapshot = folder / "hf" / "hub" / "models--local--bytetok" / "snapshots" / ("0" * 40)
    byte_tokenizer(snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text("0" * 40)
    return folder / "hf", "local/bytetok"


def aiperf(exe: str, url: str, home: Path, out: Path, extra: list[str]) -> Path:
    cmd = [exe, "profile", "-m", "instant", "--url", url, "--endpoint-type", "completions",
           "--tokenizer", "local/bytetok", "--artifact-dir", str(out), "--export-level", "raw",
           "--ui-type", "none", *extra]  # fmt: skip
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0 or not (out / "profile_export_raw.jsonl").exists():
        raise PeerFailed(f"aiperf failed ({done.returncode}): {done.stdout[-1500:]}")
    return out


def aiperf_rows(out: Path) -> tuple[list[dict[str, Any]], int]:
    """Our rows from AIPerf's raw records: its read times (perf_ns, CLOCK_MONOTONIC as the
    server's stamps) against the server's stamps in each chunk's text."""
    rows, errors = [], 0
    for line in (out / "profile_export_raw.jsonl").read_text().splitlines():
        record = json.loads(line)
        start = record["start_perf_ns"] / 1e9
        reads = [
            (r["perf_ns"] / 1e9, STAMP.findall(p.get("value") or ""))
            for r in record.get("responses") or ()
            for p in r.get("packets") or ()
        ]
        stamps = [(t, int(a), int(b)) for t, found in reads for a, b in found]
        if record.get("status") != 200 or len(stamps) != STREAM_TOKENS:
            errors += 1
            continue
        received = stamps[0][1]
        late = [t - sent / 1e9 for t, _, sent in stamps]
        rows.append(
            {
                "start": start,
                "e2e": (reads[-1][0] - start) - (stamps[-1][2] - received) / 1e9,
                "ttft": (stamps[0][0] - start) - (stamps[0][2] - received) / 1e9,
                "edge": [late[0], late[-1]],
                "lateness": late,
            }
        )
    return rows, errors


def run_aiperf(exe: str, levels: list[int], args: Any, folder: Path) -> dict[str, Any]:
    home, _ = hf_cache_tokenizer(folder)
    rates = []
    with InstantServer() as server:
        for c in levels:
            count = min(args.requests, 5000)
            out = aiperf(exe, server.root, home, folder / f"rate{c}", [
                "--concurrency", str(c), "--request-count", str(count), "--isl", "16",
                "--osl", "4"])  # fmt: skip
            stats = json.loads((out / "profile_export_aiperf.json").read_text())
            rps = stats["request_throughput"]["avg"]
            rates.append({"profile": f"concurrent@{c}", "requests": count, "rps": rps})
            print(f"aiperf   concurrent@{c:>4}: {rps:8.0f} req/s")
    streams = {}
    for schedule in SCHEDULES:
        with InstantServer(INTERVAL_MS, schedule) as server:
            count = str(STREAMS * args.rounds)
            out = aiperf(exe, server.root, home, folder / f"streams-{schedule}", [
                "--streaming", "--concurrency", str(STREAMS), "--request-count", count,
                "--isl", "64", "--osl", str(STREAM_TOKENS)])  # fmt: skip
        streams[schedule] = summary(*aiperf_rows(out))
        print(f"aiperf   64 streams, {schedule}: p99 {streams[schedule]['e2e_ms']['p99']:.3f} ms")
    return {"rate": rates, "streams": streams}


# ---- inference-perf -------------------------------------------------------------------------


def inference_perf_config(
    root: str, tokdir: Path, out: Path, stream: bool, tokens: tuple[int, int], stages: list[dict]
) -> dict[str, Any]:
    """An inference-perf config: /v1/completions of the vllm client type with the model named
    (so it never asks /v1/models) and no `metrics` section (so it scrapes no Prometheus);
    synthetic prompts cut from its bundled corpus to exactly `tokens` = (prompt, output) of
    the local byte tokenizer; `concurrent` stages ({num_requests, concurrency_level}: a closed
    loop, that many in flight over its worker processes, one per core by default)."""

    def fixed(n: int) -> dict[str, Any]:
        return {"min": n, "max": n, "mean": n, "std_dev": 0, "type": "fixed"}

    # Stage reports for the rate; per-request records, with every chunk, for the streams.
    fields = {"request": False, "response": False, "info": True, "response_chunks": True}
    report = {
        "summary": False,
        "per_stage": not stream,
        "per_adapter": False,
        "per_request": stream,
        "per_request_fields": fields,
    }
    return {
        "api": {"type": "completion", "streaming": stream},
        "server": {"type": "vllm", "model_name": "instant", "base_url": root, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokdir)},
        "data": {
            "type": "synthetic",
            "input_distribution": fixed(tokens[0]),
            "output_distribution": fixed(tokens[1]),
        },
        "load": {"type": "concurrent", "stages": stages},
        "report": {"request_lifecycle": report},
        "storage": {"local_storage": {"path": str(out)}},
    }


def inference_perf(exe: str, config: dict[str, Any], expect: str) -> Path:
    """Runs inference-perf offline on `config` (written as JSON, which is YAML) and returns its
    report folder, where `expect` must have been written."""
    out = Path(config["storage"]["local_storage"]["path"])
    out.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".yml")
    path.write_text(json.dumps(config, indent=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [exe, "-c", str(path), "--log-level", "WARNING"],
        capture_output=True, text=True, env=env, cwd=out, timeout=900,
    )  # fmt: skip
    if done.returncode != 0 or not (out / expect).exists():
        raise PeerFailed(f"inference-perf failed ({done.returncode}): {done.stderr[-1500:]}")
    return out


def inference_perf_rate(out: Path, stage: int, requests: int) -> dict[str, Any]:
    """Requests/s of one stage from inference-perf's own stage report: successful requests /
    (last end - first start), the same definition as the guidellm figure. Errors count every
    request asked for that did not succeed (failed, or never generated/sent)."""
    report = json.loads((out / f"stage_{stage}_lifecycle_metrics.json").read_text())
    ok = report["successes"]
    return {
        "requests": ok["count"],
        "errors": requests - ok["count"],
        "seconds": report["benchmark_time_seconds"],
        "rps": ok["throughput"]["requests_per_sec"],
    }


def inference_perf_rows(out: Path) -> tuple[list[dict[str, Any]], int]:
    """Our rows from inference-perf's per-request records: its dispatch and end times
    (start_time, end_time: time.perf_counter, CLOCK_MONOTONIC as the server's stamps, in s)
    and the read time of every content chunk (chunk_times, 1:1 with response_chunks, each
    chunk's JSON as received) against the server's stamps in those chunks' texts."""
    rows, errors = [], 0
    for entry in json.loads((out / "per_request_lifecycle_metrics.json").read_text()):
        metrics = (entry.get("info") or {}).get("response_metrics") or {}
        chunks, times = metrics.get("response_chunks") or [], metrics.get("chunk_times") or []
        stamps = [
            (t, int(a), int(b))
            for t, chunk in zip(times, chunks, strict=False)
            for a, b in STAMP.findall(chunk)
        ]
        if entry.get("error") or len(chunks) != len(times) or len(stamps) != STREAM_TOKENS:
            errors += 1
            continue
        start, end = entry["start_time"], entry["end_time"]
        received = stamps[0][1]
        late = [t - sent / 1e9 for t, _, sent in stamps]
        rows.append(
            {
                "start": start,
                "e2e": (end - start) - (stamps[-1][2] - received) / 1e9,
                "ttft": (stamps[0][0] - start) - (stamps[0][2] - received) / 1e9,
                "edge": [late[0], late[-1]],
                "lateness": late,
            }
        )
    return rows, errors


INFERENCE_PERF_METHOD = {
    "rate": "load.type concurrent (closed loop: concurrency_level requests in flight, split "
    "over its worker processes, default one per core), one run with a warm-up stage and then "
    "one stage per level, non-streaming, 16-token prompts, 4 output tokens; req/s from its "
    "stage reports (successful requests / (last end - first start))",
    "streams": "load.type concurrent, 64 in flight, streaming, 64-token prompts, 32 output "
    "tokens; its per-request records keep every content chunk's JSON and read time, so all is "
    "compared as for ours: e2e = its end_time - start_time (its request latency, which also "
    "holds its re-tokenizing of the output after [DONE]) - server's (last SENT - RECEIVED); "
    "ttft = first chunk's read time - start_time - (first SENT - RECEIVED); lateness = each "
    "chunk's read time - that chunk's SENT (its read time is stamped per SSE message as it "
    "parses the buffer, not per socket read)",
    "prompts": "data.type synthetic (its bundled corpus) cut to exact lengths of a local "
    "byte-level tokenizer; the server counts ~4 words for 16 tokens",
}


def run_inference_perf(exe: str, levels: list[int], args: Any, folder: Path) -> dict[str, Any]:
    """inference-perf's max request rate at each concurrency level (non-streaming) and its
    timing overhead at 64 streams per schedule, as for the other peers."""
    tokdir = byte_tokenizer(folder / "tok")
    count = min(args.requests, 5000)
    # A concurrent stage releases its num_requests over one second: at these counts its
    # workers, not the release, are the limit.
    stages = [{"num_requests": 4 * max(levels), "concurrency_level": max(levels)}]  # warm-up
    stages += [{"num_requests": count, "concurrency_level": c} for c in levels]
    rates = []
    with InstantServer() as server:
        config = inference_perf_config(server.root, tokdir, folder / "rate", False, (16, 4), stages)
        out = inference_perf(exe, config, f"stage_{len(levels)}_lifecycle_metrics.json")
    for stage, c in enumerate(levels, start=1):
        rates.append({"profile": f"concurrent@{c}", **inference_perf_rate(out, stage, count)})
        print(f"inference-perf concurrent@{c:>4}: {rates[-1]['rps']:8.0f} req/s")
    streams = {}
    for schedule in SCHEDULES:
        stages = [{"num_requests": STREAMS * args.rounds, "concurrency_level": STREAMS}]
        with InstantServer(INTERVAL_MS, schedule) as server:
            config = inference_perf_config(
                server.root, tokdir, folder / f"streams-{schedule}", True, (64, STREAM_TOKENS),
                stages,
            )  # fmt: skip
            out = inference_perf(exe, config, "per_request_lifecycle_metrics.json")
        streams[schedule] = summary(*inference_perf_rows(out))
        p99 = streams[schedule]["e2e_ms"]["p99"]
        print(f"inference-perf 64 streams, {schedule}: p99 {p99:.3f} ms")
    return {"rate": rates, "streams": streams, "method": INFERENCE_PERF_METHOD}


PEER_RUNNERS = {
    "guidellm": run_guidellm,
    "aiperf": run_aiperf,
    "inference-perf": run_inference_perf,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="Per rate measurement.")
    parser.add_argument("--concurrency", default="16,64,256")
    parser.add_argument("--rounds", type=int, default=5, help="Streams per stream worker.")
    for name in PEERS:
        parser.add_argument(f"--{name}", help=f"{name}'s executable in its own venv.")
    parser.add_argument("--peers", default=",".join(PEERS), help="Which peers to run.")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    clock = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in clock:
        raise SystemExit(f"token lateness needs perf_counter on CLOCK_MONOTONIC, not {clock}")

    load_before = os.getloadavg()[0]
    with InstantServer() as server:
        rates = [on_loop(ours_rate(server.url, c, args.requests)) for c in levels]
        for r in rates:
            print(f"ours  c={r['concurrency']:>4}: {r['rps']:8.0f} req/s ({r['errors']} errors)")
        with tempfile.TemporaryDirectory() as tmp:
            load_rate = load_command_rate(server.url, Path(tmp))
        print(f"infermeter load, 64 in flight: {load_rate['rps']:8.0f} req/s (stored)")
    streams, floor = {}, {}
    for schedule in SCHEDULES:
        with InstantServer(INTERVAL_MS, schedule) as server:
            streams[schedule] = on_loop(ours_streams(server.url, args.rounds))
        with InstantServer(INTERVAL_MS, schedule) as server:
            floor[schedule] = on_loop(floor_streams(server.port, args.rounds))
        ours_p99 = streams[schedule]["e2e_ms"]["p99"]
        print(f"ours  64 streams, {schedule}: overhead p99 {ours_p99:.3f} ms")

    peers: dict[str, dict[str, Any]] = {}
    for name in [p for p in args.peers.split(",") if p]:
        try:
            exe = find_peer(name, getattr(args, name.replace("-", "_")))
            runner = PEER_RUNNERS.get(name)
            if runner is None:
                raise PeerFailed(f"{name}: no runner in this script")
            with tempfile.TemporaryDirectory() as tmp:
                figures = runner(exe, levels, args, Path(tmp))
            peers[name] = {"ran": True, "version": peer_version(exe, name), **figures}
        except (PeerFailed, SystemExit, OSError, subprocess.SubprocessError, KeyError) as why:
            peers[name] = {"ran": False, "why": str(why)[-1500:]}
            print(f"peer {name} not run: {str(why)[-300:]}")

    max_rps = max(r["rps"] for r in rates)
    p99 = streams["staggered"]["e2e_ms"]["p99"]
    result = {
        "max_rps": max_rps,
        "p99_overhead_ms": p99,
        "goals": {"max_rps": GOAL_RPS, "p99_overhead_ms": GOAL_P99_MS},
        "meets_goals": max_rps >= GOAL_RPS and p99 <= GOAL_P99_MS,
        "client": "infermeter.backends.api.client over infermeter.backends.api.http, on "
        + new_event_loop()[1],
        "server": "benchmarks/instant_server.py, one process, uvloop"
        if _has("uvloop")
        else "benchmarks/instant_server.py, one process, asyncio",
        "cpus": os.cpu_count(),
        # Other work on the machine shows in every tail figure: the load it ran beside.
        "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        "rate": {"ours": rates, "load_command": load_rate, "prompt_words": 16, "max_tokens": 4},
        "streams": {
            "streams": STREAMS,
            "tokens": STREAM_TOKENS,
            "interval_ms": INTERVAL_MS,
            "headline_schedule": "staggered",
            "ours": streams,
            "raw_socket_floor": floor,
            "definition": "overhead = client end-to-end latency - server's (last token sent - "
            "request received); ttft likewise; token lateness = client stamp - server write",
        },
        "peers": peers,
    }
    stag, lock = streams["staggered"], streams["lockstep"]

    def pair(a: dict, b: dict, key: str) -> str:
        return f"{a[key]['p99']:.2f} / {b[key]['p99']:.2f} ms"

    rows = [
        ("max request rate, non-streaming (ours: the library client)", f"{max_rps:,.0f} req/s",
         f">= {GOAL_RPS:,.0f}"),
        ("request rate of `infermeter load --mode concurrent`, 64 in flight, every request "
         "stored", f"{load_rate['rps']:,.0f} req/s", f">= {GOAL_RPS:,.0f}"),
        ("p99 timing overhead, 64 streams, staggered (ours)", f"{p99:.2f} ms",
         f"<= {GOAL_P99_MS} ms"),
        ("p99 timing overhead, 64 streams, lockstep (ours)",
         f"{lock['e2e_ms']['p99']:.2f} ms", "-"),
        ("p99 timing overhead, 64 streams, raw-socket floor (staggered / lockstep)",
         pair(floor["staggered"], floor["lockstep"], "e2e_ms"), "-"),
        ("p99 TTFT overhead, staggered (ours)", f"{stag['ttft_ms']['p99']:.2f} ms", "-"),
        ("p99 lateness of every token, staggered / lockstep (ours)",
         pair(stag, lock, "lateness_ms"), "-"),
    ]  # fmt: skip
    for name, peer in peers.items():
        if not peer["ran"]:
            rows.append((f"{name}", f"not run: {peer['why'][:120]}", "-"))
            continue
        label = f"{name} {peer['version']}"
        if peer.get("rate"):
            rows.append((f"max request rate ({label})",
                         f"{max(r['rps'] for r in peer['rate']):,.0f} req/s", "-"))  # fmt: skip
        for schedule, figures in (peer.get("streams") or {}).items():
            if "e2e_ms" in figures:
                rows.append((f"p99 timing overhead, 64 streams, {schedule} ({label})",
                             f"{figures['e2e_ms']['p99']:.2f} ms", "-"))  # fmt: skip
    rows.append(("load average (1 min) before / after, on this many cores",
                 f"{load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()}",
                 "quiet: < 1"))  # fmt: skip
    path = write_result("api_load", result, rows)
    print(f"written {path}")


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
