"""Profile a real llama.cpp server as a user would: completions and chat, streamed and not.

The server is llama-cpp-python's (`python -m llama_cpp.server`), built from source in an
environment of its own (never in CI: about 20 minutes on 2 cores), serving a tiny random-weight
LLaMA made here and converted with llama.cpp's own converter (convert_hf_to_gguf.py, from the
llama.cpp source that llama-cpp-python vendors). For each of the four request shapes the
installed `infermeter profile MODEL --backend openai` runs without --tokenizer, then:

- prompt exactness: every stored point's prompt is rebuilt from its seed and counted by the
  server (an unstreamed request, max_tokens 1) after the profile, so streamed points (which
  llama.cpp answers without usage) are checked too; the profile's own check is recorded
  beside it (exact where the answer had usage, unverified where not);
- forced lengths: points whose output length was not o (flagged) and why;
- the fit: per-prompt R², PE(p), g and the API overhead, from `infermeter fit`.

`--record DIR` also writes the server's raw answers (completions and chat, streamed and not)
as replay transcripts byte for byte, with the reads' timing (tests/data/api_transcripts).

Run:
  python benchmarks/api_real_server.py --llama-python /work/llamacpp-venv/bin/python \
      --llama-src /work/llamacpp-src [--record tests/data/api_transcripts]
(--llama-src: a llama.cpp checkout, for convert_hf_to_gguf.py and gguf-py; env
INFERMETER_LLAMACPP_PYTHON and INFERMETER_LLAMACPP_SRC work too.)
Writes docs/benchmarks/api_real_server.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _record import write_result  # noqa: E402

TOKENIZER = ROOT.parent / "shared" / "data" / "llama_tokenizer.model"
PROMPT_SIZES = (32, 64, 128, 256, 512)
OUTPUT_SIZES = (1, 16, 32, 64)
TRIALS = 5
SHAPES = (("completions", True), ("completions", False), ("chat", True), ("chat", False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_gguf(folder: Path, llama_src: Path) -> Path:
    """A tiny random-weight LLaMA (2 layers, h = 64, the LLaMA tokenizer) as GGUF, converted
    by llama.cpp's convert_hf_to_gguf.py."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = folder / "hf"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(hf, safe_serialization=True)
    shutil.copy(TOKENIZER, hf / "tokenizer.model")
    (hf / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True})
    )  # fmt: skip
    out = folder / "tiny-llama.gguf"
    subprocess.run(
        [sys.executable, str(llama_src / "convert_hf_to_gguf.py"), str(hf),
         "--outfile", str(out), "--outtype", "f32"],
        check=True, capture_output=True, cwd=llama_src,
    )  # fmt: skip
    return out


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server in a process of its own."""

    def __init__(self, python: str, gguf: Path, chat_format: str = "llama-2") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", "2048", "--chat_format", chat_format,
               "--model_alias", "tiny-llama", "--n_threads", "1"]  # fmt: skip
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as reply:
                    self.models = json.loads(reply.read())
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.close()
        raise SystemExit(f"the llama.cpp server did not start: {Path(self.log.name).read_text()}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def version(python: str) -> str:
    code = "import llama_cpp; print(llama_cpp.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


# ---- recording answers byte for byte ------------------------------------------------------


def record(port: int, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one request on a raw socket; the answer's reads, each with its delay (s)."""
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writes, last = [], time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + raw)
        while piece := sock.recv(65536):
            now = time.perf_counter()
            try:
                entry: dict[str, Any] = {"text": piece.decode()}
            except UnicodeDecodeError:  # a read that splits a character: kept as bytes
                entry = {"b64": base64.b64encode(piece).decode()}
            writes.append({"delay_s": round(now - last, 6), **entry})
            last = now
    return writes


def expected(writes: list[dict[str, Any]], chat: bool, stream: bool) -> dict[str, Any]:
    """What the answer holds, read plainly (independently of infermeter's client)."""
    data = b"".join(
        base64.b64decode(w["b64"]) if "b64" in w else w["text"].encode() for w in writes
    )
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        plain, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            plain, rest = plain + rest[:n], rest[n + 2 :]
        body = plain
    if not stream:
        answer = json.loads(body)
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        usage = answer.get("usage") or {}
        return {"ok": True, "completion_tokens": usage.get("completion_tokens"),
                "prompt_tokens": usage.get("prompt_tokens"), "chunks": 0, "text": text,
                "finish_reason": choice["finish_reason"]}  # fmt: skip
    text, chunks, finish, usage = "", 0, None, {}
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            part = choice.get("delta", {}) if chat else choice
            key = "content" if chat else "text"
            if key in part and not choice.get("finish_reason") and "role" not in part:
                chunks += 1
                text += part[key] or ""
            finish = choice.get("finish_reason") or finish
    return {"ok": True, "completion_tokens": usage.get("completion_tokens"),
            "prompt_tokens": usage.get("prompt_tokens"), "chunks": chunks, "text": text,
            "finish_reason": finish}  # fmt: skip


def record_transcripts(server: LlamaServer, folder: Path, llama_version: str) -> list[str]:
    names = []
    for endpoint, stream in SHAPES:
        chat = endpoint == "chat"
        body: dict[str, Any] = {"model": "tiny-llama", "max_tokens": 12, "stream": stream,
                                "temperature": 0.0, "seed": 1}  # fmt: skip
        if chat:
            body["messages"] = [{"role": "user", "content": "the of and to in is was"}]
        else:
            body["prompt"] = "the of and to in is was"
        if stream:
            body["stream_options"] = {"include_usage": True}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        writes = record(server.port, path, body)
        name = f"llamacpp_{endpoint}_{'stream' if stream else 'json'}"
        entry = {
            "server": f"llama.cpp server (llama-cpp-python {llama_version})",
            "source": f"recorded from a real server on 127.0.0.1 ({time.strftime('%Y-%m-%d')}, "
            "tiny random-weight LLaMA, chat format llama-2) by benchmarks/api_real_server.py",
            "endpoint": endpoint,
            "request": body,
            "response": {"writes": writes, "close": True},
            "expect": expected(writes, chat, stream),
        }
        (folder / f"{name}.json").write_text(json.dumps(entry, indent=1, ensure_ascii=False) + "\n")
        names.append(name)
    return names


# ---- profiling as a user would -------------------------------------------------------------


def infermeter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "infermeter", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


def recount_prompts(url: str, store: Path, run_id: int, endpoint: str, cache: Path) -> dict:
    """Rebuild every stored point's prompt from its seed and ask the server to count it."""
    from infermeter.backends.openai import OpenAIBackend
    from infermeter.spec.model import ModelSpec
    from infermeter.store.db import Store

    backend = OpenAIBackend(base_url=url, endpoint=endpoint, stream=False,
                            calibration_cache=str(cache))  # fmt: skip
    backend.prepare(ModelSpec.from_dict(Store(store).get_run(run_id).spec))
    with Store(store) as db:
        points = db.points(run_id)
    counted, off = 0, []
    for row in points.itertuples(index=False):
        extra = json.loads(row.extra_json)
        text = backend.prompts.factory.content(extra["prompt_units"], extra["prompt_seed"])
        reported = backend._probe(text)
        counted += 1
        if reported != row.prompt_tokens:
            off.append({"asked": int(row.prompt_tokens), "counted": reported})
    backend.close()
    return {"prompts": counted, "exact": counted - len(off), "off": off[:10]}


def profile_shape(url: str, endpoint: str, stream: bool, folder: Path) -> dict[str, Any]:
    from infermeter.store.db import Store

    store = folder / f"{endpoint}-{'stream' if stream else 'json'}.sqlite"
    env = {**os.environ, "INFERMETER_CACHE_DIR": str(folder / "cache")}
    args = ["profile", "llamacpp-tiny", "--backend", "openai", "--base-url", url,
            "--endpoint", endpoint, "--stream" if stream else "--no-stream",
            "--prompt-sizes", ",".join(map(str, PROMPT_SIZES)),
            "--output-sizes", ",".join(map(str, OUTPUT_SIZES)), "--trials", str(TRIALS),
            "--store", str(store)]  # fmt: skip
    started = time.perf_counter()
    done = infermeter(*args, env=env)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"endpoint": endpoint, "stream": stream, "exit_code": done.returncode,
                              "profile_s": seconds, "stderr_tail": done.stderr[-800:]}  # fmt: skip
    if not store.exists():
        return result
    with Store(store) as db:
        run = db.get_run(db.latest_run_id())
        points = db.points(run.id)
        fit = db.latest_fit(run.id, "runtime_s")
    extra = [json.loads(e) for e in points.extra_json]
    result["points"] = len(points)
    result["status"] = points.status.value_counts().to_dict()
    result["flagged"] = points[points.status == "flagged"].detail.value_counts().head(5).to_dict()
    result["prompt_check"] = dict(
        (k, sum(e.get("prompt_check") == k for e in extra))
        for k in sorted({str(e.get("prompt_check")) for e in extra})
    )
    result["output_tokens_from"] = sorted({str(e.get("output_tokens_from")) for e in extra})
    result["notes"] = run.backend_info.get("notes")
    result["prompt_units"] = run.backend_info.get("prompt_units")
    result["prompt_offset"] = run.backend_info.get("prompt_offset")
    result["recount"] = recount_prompts(url, store, run.id, endpoint, folder / "cache")
    if fit is not None:
        per_p = fit.fit.get("per_prompt", [])
        result["fit"] = {
            "r2_per_prompt": {int(r["prompt_tokens"]): r["r2"] for r in per_p},
            "min_r2": min((r["r2"] for r in per_p), default=float("nan")),
            "pe_s": dict(zip(map(int, fit.prompt_sizes), fit.prompt_encoding, strict=True)),
            "g_s": fit.per_output_token,
            "overhead_s": fit.overhead,
            "r2_overall": fit.fit.get("r2_overall"),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-python", default=os.environ.get("INFERMETER_LLAMACPP_PYTHON"))
    parser.add_argument("--llama-src", default=os.environ.get("INFERMETER_LLAMACPP_SRC"))
    parser.add_argument("--gguf", type=Path, help="Use this GGUF instead of making one.")
    parser.add_argument("--record", type=Path, help="Write raw answers as replay transcripts.")
    args = parser.parse_args()
    if not args.llama_python or not Path(args.llama_python).exists():
        raise SystemExit("give --llama-python: the python of an env with llama-cpp-python[server]")
    llama_version = version(args.llama_python)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.gguf is None:
            if not args.llama_src:
                raise SystemExit("give --llama-src (llama.cpp source, for its converter) or --gguf")
            gguf = make_gguf(folder, Path(args.llama_src))
        else:
            gguf = args.gguf
        server = LlamaServer(args.llama_python, gguf)
        load_before = os.getloadavg()
        try:
            recorded = record_transcripts(server, args.record, llama_version) if args.record else []
            shapes = [profile_shape(server.url, e, s, folder) for e, s in SHAPES]
        finally:
            server.close()
    for shape in shapes:
        fit = shape.get("fit", {})
        recount = shape.get("recount", {})
        print(f"{shape['endpoint']:>11} stream={shape['stream']!s:5} exit {shape['exit_code']} "
              f"status {shape.get('status')} exact {recount.get('exact')}/{recount.get('prompts')} "
              f"min R² {fit.get('min_r2', float('nan')):.4f}")  # fmt: skip
    result = {
        "server": f"llama-cpp-python {llama_version} (python -m llama_cpp.server, 1 thread)",
        "model": "tiny random-weight LLaMA (2 layers, h=64, LLaMA tokenizer), GGUF f32, made "
        "with llama.cpp's convert_hf_to_gguf.py",
        "grid": {"prompt_sizes": PROMPT_SIZES, "output_sizes": OUTPUT_SIZES, "trials": TRIALS},
        "shapes": shapes,
        "transcripts": recorded,
        # R² measures signal over noise: other work on the machine shows here.
        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
    }
    rows = []
    for shape in shapes:
        label = f"{shape['endpoint']}, {'streamed' if shape['stream'] else 'not streamed'}"
        fit, recount = shape.get("fit", {}), shape.get("recount", {})
        status = shape.get("status", {})
        rows.append((f"{label}: exit code; points ok / flagged / error",
                     f"{shape['exit_code']}; {status.get('ok', 0)} / {status.get('flagged', 0)}"
                     f" / {status.get('error', 0)}", "0; all ok"))  # fmt: skip
        rows.append((f"{label}: prompts counted exact by the server afterwards",
                     f"{recount.get('exact')}/{recount.get('prompts')}", "all"))  # fmt: skip
        rows.append((f"{label}: profile's own check",
                     ", ".join(f"{k} {v}" for k, v in shape.get("prompt_check", {}).items()),
                     "exact or unverified"))  # fmt: skip
        nan = float("nan")
        value = (
            f"{fit.get('min_r2', nan):.4f}; {fit.get('g_s', nan):.3g} s; "
            f"{fit.get('overhead_s', nan):.3g} s"
        )
        rows.append((f"{label}: min per-p R²; g; overhead", value, ">= 0.99 (quiet machine)"))
    before, after = result["load_average_1m_before_after"]
    rows.append(("load average (1 min) before / after, on this many cores",
                 f"{before:.1f} / {after:.1f} on {os.cpu_count()}", "quiet: < 1"))  # fmt: skip
    path = write_result("api_real_server", result, rows)
    print(f"written {path}")


if __name__ == "__main__":
    main()
