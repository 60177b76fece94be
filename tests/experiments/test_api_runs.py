"""API runs end to end against real local servers that misbehave as public ones do: the
pre-flight request, failures summarised at the end, literal messages, load accounting."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from api_servers import Raw, fault_server, free_port, json_answer, sse
from cli_runner import invoke
from infermeter.backends import get_backend
from infermeter.experiments.load import (
    LoadGrid,
    TimedLoad,
    load_summary,
    run_load_sweep,
    run_timed_load,
    timed_summary,
)
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.spec.model import ModelSpec
from infermeter.store.db import Store

SPEC = ModelSpec(
    name="m", hidden_size=8, num_layers=1, num_heads=1, vocab_size=100, max_context=4096
)


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMETER_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("OPENAI_API_KEY", "INFERMETER_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def measurement(body: dict) -> bool:
    """Measurement requests of the grids below (o = 2 or 3), not probes (1) or pre-flight (4)."""
    return body.get("max_tokens") in (2, 3)


GRID = ["--prompt-sizes", "8,16", "--output-sizes", "2,3", "--trials", "3"]


def profile_through_faults(tmp_path: Path, *faults: str | Raw, options: tuple = ()):
    """`infermeter profile` of GRID, the measurements taking `faults` in order, no retries;
    20 ms per token, so that the good points have a runtime to fit."""
    with fault_server(token_delay_s=0.02) as server:
        server.faults_for = measurement
        server.script(*faults)
        return invoke(
            "profile", "m", "--backend", "openai", "--base-url", server.url, "--retries", "0",
            "--store", tmp_path / "s.db", *options, *GRID,
        )  # fmt: skip


# ---- 4. the pre-flight request is the measurement request ---------------------------------


def test_a_server_refusing_stream_options_is_profiled_without_them(tmp_path: Path) -> None:
    """The issue's example: a 400 on stream_options passed pre-flight (unstreamed) and then
    failed every point."""
    with fault_server(refuse={"stream_options"}) as server, Store(tmp_path / "s.db") as db:
        backend = get_backend("openai", base_url=server.url)
        run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid((8,), (2, 3), (1,), 2))
        points = db.points(run.id)
        first = server.requests[0]
    assert (first["stream"], first["max_tokens"], first["min_tokens"]) == (True, 4, 4)
    assert first["ignore_eos"] and first["stream_options"] == {"include_usage": True}
    assert len(points) == 4 and (points.status == "ok").all()
    assert any("refused stream_options" in n for n in run.backend_info["notes"])
    assert run.backend_info["features"] == ["ignore_eos", "min_tokens"]
    assert all("stream_options" not in r for r in server.requests[2:])
    # no usage in streams now: prompts are unverified, said so, and still counted right
    checks = {json.loads(e)["prompt_check"] for e in points.extra_json}
    assert checks == {"unverified: the answer reported no usage"}
    # ... and so are output lengths, taken from the finish reason: said per point and run
    extras = [json.loads(e) for e in points.extra_json]
    assert {e["output_check"] for e in extras} == {"unverified: no usage"}
    assert [e["output_chunks"] for e in extras] == [2, 2, 3, 3]
    assert any("output lengths unverified" in n for n in run.backend_info["notes"])


def test_a_refusal_naming_no_field_drops_one_field_at_a_time(tmp_path: Path) -> None:
    refusal = json_answer({"error": {"message": "Bad Request"}}, "400 Bad Request")
    with fault_server() as server, Store(tmp_path / "s.db") as db:
        server.script(refusal, refusal)  # the first two pre-flight requests
        backend = get_backend("openai", base_url=server.url, endpoint="chat")
        run = run_profile(db, SPEC, {}, backend, {}, ProfileGrid((16,), (2, 3), (1,), 1))
        assert (db.points(run.id).status == "ok").all()
    notes = [n for n in run.backend_info["notes"] if n.startswith("server refused")]
    assert [n.split(" (")[0] for n in notes] == [
        "server refused ignore_eos",
        "server refused min_tokens",
    ]
    assert "stream_options" in server.requests[-1] and "min_tokens" not in server.requests[-1]


# ---- 1. through a profile: empty answers are failures, never fitted -----------------------


def test_done_only_streams_are_failed_points_and_the_cli_says_so(tmp_path: Path) -> None:
    result = profile_through_faults(tmp_path, *[sse([])] * 12)
    assert result.exit_code == 3, result.output
    assert "12/12 measurements failed: empty 'the answer held no token and no usage count'" in (
        result.stderr
    )
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "incomplete"
    assert con.execute("SELECT count(*) FROM points WHERE status='ok'").fetchone()[0] == 0


# ---- 3. through a profile: complete streams without [DONE] are measurements ---------------


def test_streams_without_done_are_profiled_and_fitted(tmp_path: Path) -> None:
    """The issue's example: every point stream_cut after 4 attempts, exit 2, nothing fitted."""
    # A rough fit is accepted: the fit's quality is not the subject, and beside two busy
    # processes the fault server's real 20 ms per token can make it rough.
    result = profile_through_faults(tmp_path, *["nodone"] * 12, options=("--accept-poor-fit",))
    assert result.exit_code == 0, result.output
    assert "all 12 measurements taken" in result.stderr and "R²" in result.stdout
    points = sqlite3.connect(tmp_path / "s.db").execute("SELECT extra_json FROM points")
    assert all(json.loads(e)["retries"] == 0 for (e,) in points)


# ---- 6. failures are counted at the end; a run that measured nothing leaves nothing ---------


def test_failed_points_are_counted_by_cause_and_exit_non_zero(tmp_path: Path) -> None:
    """The issue's example: 4 of 12 points failed with HTTP 500 and the command exited 0."""
    result = profile_through_faults(
        tmp_path, "500", "", "500", "", "500", "", "500", options=("--accept-poor-fit",)
    )  # beside two busy processes the 8 good points' fit was refused as poor (a rough one is fine)
    assert result.exit_code == 3, result.output
    assert "4/12 measurements failed: http_5xx 'injected 500' (4); rerun the same command" in (
        result.stderr
    )
    assert "R²" in result.stdout  # the 8 good points are still fitted and shown
    shown = invoke("show", "--store", tmp_path / "s.db")  # later, the store says the same
    assert shown.exit_code == 0, shown.output
    assert "incomplete: 4/12 measurements failed: http_5xx 'injected 500' (4)" in shown.stdout


def test_a_body_over_max_body_mib_fails_and_the_end_line_names_the_option(tmp_path: Path) -> None:
    chunk = {"id": "c", "choices": [{"index": 0, "text": "y" * 1000, "finish_reason": None}]}
    result = profile_through_faults(
        tmp_path, sse([chunk] * 8), options=("--max-body-mib", "0.004", "--accept-poor-fit")
    )
    assert result.exit_code == 3, result.output
    assert "1/12 measurements failed: too_large 'body over 4,194 bytes, not read further " in (
        result.stderr
    )
    assert "(--max-body-mib)'" in result.stderr
    # The advice is the option, not "fix the request or server" (a user review).
    assert "too_large will fail again as sent: raise --max-body-mib first" in result.stderr


@pytest.mark.parametrize("bad", ["inf", "nan", "0", "-1", "1e-9"])
def test_max_body_mib_must_be_finite(tmp_path: Path, bad: str) -> None:
    """One check (ApiConfig's), one message, for all: inf and nan were checked apart."""
    result = profile_through_faults(tmp_path, options=("--max-body-mib", bad))
    assert result.exit_code == 2, result.output
    assert "--max-body-mib must be a finite number of MiB, at least 1/1024 (1 KiB), got " in (
        result.stderr
    )
    assert "Traceback" not in result.output


def test_a_new_prompt_sizes_failed_calibration_is_counted_not_fatal(tmp_path: Path) -> None:
    """A fresh-eyes check: a new prompt size's calibration request failing mid-run (HTTP 500)
    stopped the whole run in one line, left it 'interrupted' and said nothing of its points."""
    with fault_server(token_delay_s=0.02) as server:
        measured = lambda: any(r.get("max_tokens") in (2, 3) for r in server.requests[:-1])  # noqa: E731
        server.faults_for = lambda body: body.get("max_tokens") == 1 and measured()
        server.script(*["500"] * 6)  # each probe of p = 16, once per point of that size
        result = invoke(
            "profile", "m", "--backend", "openai", "--base-url", server.url, "--retries", "0",
            "--store", tmp_path / "s.db", "--accept-poor-fit", *GRID,
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "6/12 measurements failed: http_5xx 'injected 500' (6)" in result.stderr
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "incomplete"
    failed = con.execute("SELECT prompt_tokens, detail FROM points WHERE status='error'")
    rows = failed.fetchall()
    assert len(rows) == 6 and {p for p, _ in rows} == {16}
    assert all("to calibrate prompt size 16" in d for _, d in rows)


def test_the_end_line_says_which_failures_a_rerun_meets_again() -> None:
    from infermeter.backends.api.outcome import run_outcome

    def row(status: str, cause: str | None = None) -> dict:
        said = {}
        if cause and ":" in cause:  # "cause:repeats" or "cause:once", as the client records
            cause, repeats = cause.split(":")
            said = {"repeats": repeats == "repeats"}
        extra = json.dumps({"cause": cause, **said} if cause else {})
        return {"status": status, "detail": f"{cause}: x" if cause else None, "extra_json": extra}

    def line(*causes: str) -> str:
        rows = [row("ok"), *(row("error", c) for c in causes)]
        return run_outcome(pd.DataFrame(rows), len(rows)).line()

    # In-band errors that repeat (context exceeded) and miscounted usage: a rerun won't help.
    assert line("request_error").endswith("request_error will fail again as sent: fix the "
                                          "request or server first")  # fmt: skip
    assert line("malformed:repeats").endswith("malformed will fail again as sent: fix the "
                                              "request or server first")  # fmt: skip
    assert line("malformed:once").endswith("; rerun the same command to retry them")

    assert line("http_5xx").endswith("; rerun the same command to retry them")
    # A body over the cap needs the cap raised (a user review), not the request or server fixed.
    assert line("too_large").endswith("; too_large will fail again as sent: raise --max-body-mib "
                                      "first")  # fmt: skip
    assert line("http_4xx", "too_large").endswith(
        "; http_4xx and too_large will fail again as sent: fix the request or server first, and "
        "raise --max-body-mib for too_large"
    )
    assert line("too_large", "timeout").endswith(
        "; rerun the same command to retry them (too_large will fail again as sent: raise "
        "--max-body-mib first)"
    )
    assert line("http_4xx", "timeout").endswith(
        "; rerun the same command to retry them (http_4xx will fail again as sent)"
    )


def test_the_end_line_counts_a_second_looks_trials_beside_the_grids() -> None:
    # `show` printed "all 141 measurements taken" above "150 ok measurements": the 9 were a
    # second look's trials (experiments.second_look), counted nowhere in the end line.
    from types import SimpleNamespace

    from infermeter.experiments.plans import stored_outcome

    grid = ProfileGrid((8, 16), (1, 4), trials=2)

    def shown(trials: list[tuple[int, int, int]], failed: int = 0) -> str:
        rows = [{"prompt_tokens": p, "output_tokens": o, "trial": t, "status": "ok",
                 "detail": None, "extra_json": "{}"} for p, o, t in trials]  # fmt: skip
        for row in rows[len(rows) - failed :]:
            row.update(status="error", detail="timeout: no answer")
        record = SimpleNamespace(kind="profile", grid=grid.to_dict())
        return stored_outcome(record, pd.DataFrame(rows)).line()

    every = [(p.prompt_tokens, p.output_tokens, p.trial) for p in grid.points()]
    again = [(8, 1, 2), (8, 1, 3)]
    assert shown(every) == "all 8 measurements taken"
    assert shown(every + again) == "all 8 measurements taken, and 2 more of points measured again"
    # a second look's trial that failed is not one `show` counts among the ok ones (it did:
    # found 2026-12-03)
    assert shown(every + again, failed=1) == (
        "all 8 measurements taken, and 1 more of points measured again (1 more failed or "
        "flagged, left out of fits)"
    )
    assert shown(every + again, failed=2) == (
        "all 8 measurements taken, and 2 of points measured again failed or were flagged "
        "(left out of fits)"
    )
    # a second look's trials never stand in for a grid measurement that was not taken
    assert (
        shown(every[1:] + again) == "1/8 measurements not taken; rerun the same command to "
        "retry them"
    )


@pytest.mark.parametrize("fault", ["refused", "401"])
def test_a_run_that_measured_nothing_leaves_no_run(tmp_path: Path, fault: str) -> None:
    store = tmp_path / "s.db"
    with fault_server() as server:
        url = f"http://127.0.0.1:{free_port()}/v1" if fault == "refused" else server.url
        server.script(*["401"] * 4)
        result = invoke("profile", "m", "--backend", "openai", "--base-url", url,
                        "--store", store, *GRID)  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert (
        not store.exists()
        or sqlite3.connect(store).execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    )


# ---- 7. untrusted text is printed literally ------------------------------------------------


@pytest.mark.parametrize("message", ["[INST] hi [/INST]", "sizes [np.int64(6)] [bold]x[/]"])
def test_server_text_is_printed_literally(tmp_path: Path, message: str) -> None:
    """The issue's example: `[INST] hi [/INST]` crashed the CLI with rich's MarkupError."""
    with fault_server() as server:
        server.script(json_answer({"error": {"message": message}}, "403 Forbidden"))
        result = invoke("profile", "m", "--backend", "openai", "--base-url", server.url,
                        "--store", tmp_path / "s.db", *GRID)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_a_store_path_with_brackets_is_printed_as_it_is(tmp_path: Path) -> None:
    store = tmp_path / "[red]runs[/red].db"
    with fault_server(token_delay_s=0.02) as server:
        result = invoke("profile", "m", "--backend", "openai", "--base-url", server.url,
                        "--store", store, *GRID, "--accept-poor-fit")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"stored in {store}" in result.stdout.replace("\n", "")


# ---- 8. the stall limit is an option ------------------------------------------------------


def test_the_stall_timeout_is_an_option(tmp_path: Path) -> None:
    result = profile_through_faults(tmp_path, "stall", options=("--stall-timeout", "0.3"))
    assert result.exit_code == 3, result.output
    assert "1/12 measurements failed: timeout 'no byte for 0.3 s'" in result.stderr


# ---- 9. load: new prompts per level, every attempt counted, timed modes -------------------


def test_load_levels_send_new_prompts_and_count_retries_and_failures(tmp_path: Path) -> None:
    """The issue's example: every level resent the same prompts; retries were hidden and
    failed requests dropped, so c = 4 looked faster than c = 2."""
    with fault_server() as server, Store(tmp_path / "l.db") as db:
        server.faults_for = measurement
        # trial 0: c=1 fine; c=2 both cut, then one retry cut again (fails), one fine
        server.script("", "cut", "cut", "cut", "")
        backend = get_backend("openai", base_url=server.url, retries=1)
        run = run_load_sweep(db, SPEC, {}, backend, {}, LoadGrid(16, (2,), (1, 2), 2))
        points = db.points(run.id)
        prompts = [json.dumps(r.get("prompt")) for r in server.requests if measurement(r)]
    summary = load_summary(points).set_index("concurrency")
    assert len(prompts) == 8 and len(set(prompts)) == 6  # only retries resend a prompt
    assert summary.loc[2, "requests"] == 4 and summary.loc[2, "errors"] == 1
    assert summary.loc[2, "attempts"] == 6 and summary.loc[2, "retried"] == 2
    # the step with a failure is left out of the curve; the whole one is kept
    assert summary.loc[2, "min_step_mean_s"] > 0
    extra = [json.loads(e) for e in points.extra_json]
    retried = [e for e in extra if e["retries"]]
    assert all(e["total_s"] >= e["e2e_s"] for e in retried if e["e2e_s"])


def test_cli_load_reports_failures_and_exits_non_zero(tmp_path: Path) -> None:
    with fault_server() as server:
        server.faults_for = measurement
        server.script("500")
        result = invoke(
            "load", "m", "--base-url", server.url, "--prompt-tokens", "16", "--output-sizes",
            "2", "--concurrency", "1,2", "--trials", "1", "--retries", "0",
            "--store", tmp_path / "l.db",
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "1/3 measurements failed: http_5xx 'injected 500' (1)" in result.stderr
    # The progress counts bursts and says each one's requests, which the end line counts.
    assert "bursts of load on m (burst): 2/2 done, last o=2 c=2: 2 requests" in result.output


def test_load_prompt_below_the_offset_names_the_load_option(tmp_path: Path) -> None:
    with fault_server(offset=12) as server:
        result = invoke("load", "m", "--base-url", server.url, "--prompt-tokens", "4",
                        "--store", tmp_path / "l.db")  # fmt: skip
    assert result.exit_code == 2
    assert "--prompt-tokens of at least 12" in result.stderr and "--prompt-sizes" not in (
        result.stderr
    )
    with Store(tmp_path / "l.db") as db:  # and no empty "interrupted" run is left behind
        assert db.runs().empty


def rate_load_failing_in_warmup(store: Path) -> Any:
    """`load --mode rate` (20/s, 0.5 s, 0.2 s warm-up) whose first request, a warm-up one,
    fails with a 500."""
    with fault_server(delay_s=0.01) as server:
        server.faults_for = lambda request: request.get("max_tokens") == 2  # not the probes
        server.script("500")
        return invoke("load", "m", "--base-url", server.url, "--prompt-tokens", "16",
                      "--output-sizes", "2", "--mode", "rate", "--rate", "20", "--arrival",
                      "constant", "--duration-s", "0.5", "--warmup-s", "0.2", "--retries",
                      "0", "--store", store)  # fmt: skip


def test_a_timed_loads_end_line_counts_what_its_table_counts(tmp_path: Path) -> None:
    # The warm-up's requests are stored, not summarised: a failed one was counted at the end
    # ("22/68 points failed") while the table showed 20 failed of 60.
    result = rate_load_failing_in_warmup(tmp_path / "l.db")
    assert result.exit_code == 0, result.output  # the failed request was a warm-up one
    with Store(tmp_path / "l.db") as db:
        points = db.points(db.latest_run_id())
    warm = [json.loads(e)["warmup"] for e in points.extra_json]
    assert any(warm) and (points[warm].status != "ok").sum() == 1
    assert f"all {warm.count(False)} measurements taken" in result.stderr


def test_load_says_which_served_model_its_requests_name(tmp_path: Path) -> None:
    # A fresh-eyes check: `load gpt3` against a server of one other model measured that model
    # and stored the run as gpt3 without a word.
    with fault_server(model="served-one", delay_s=0.01) as server:
        result = invoke("load", "m", "--base-url", server.url, "--prompt-tokens", "16",
                        "--output-sizes", "2", "--concurrency", "1", "--trials", "1",
                        "--store", tmp_path / "l.db")  # fmt: skip
        assert result.exit_code == 0, result.output
        said = " ".join(result.stderr.split())
        assert "note: requests name 'served-one', the one model the server serves, and the run" in (
            said
        )
        assert "labelled 'm' (MODEL): if that is not the model served, correct MODEL" in said
        named = invoke("load", "m", "--base-url", server.url, "--api-model", "served-one",
                       "--prompt-tokens", "16", "--output-sizes", "2", "--concurrency", "1",
                       "--trials", "1", "--store", tmp_path / "n.db")  # fmt: skip
    assert named.exit_code == 0, named.output
    assert "the one model the server serves" not in named.stderr
    # MODEL the same model by another name (vLLM serves the Hugging Face id): no note
    with fault_server(model="openai-community/gpt2", delay_s=0.01) as server:
        same = invoke("load", "gpt2", "--base-url", server.url, "--prompt-tokens", "16",
                      "--output-sizes", "2", "--concurrency", "1", "--trials", "1",
                      "--store", tmp_path / "g.db")  # fmt: skip
    assert same.exit_code == 0, same.output
    assert "the one model the server serves" not in same.stderr


def test_a_timed_load_run_again_says_it_measured_nothing(tmp_path: Path) -> None:
    # A review: a second identical `load --mode concurrent` showed the stored table with no
    # word that nothing was measured (bursts and profiles said so).
    args = ["load", "m", "--prompt-tokens", "16", "--output-sizes", "2", "--mode",
            "concurrent", "--concurrency", "1", "--duration-s", "0.3", "--warmup-s", "0",
            "--store", tmp_path / "l.db"]  # fmt: skip
    with fault_server(delay_s=0.01) as server:
        first = invoke(*args, "--base-url", server.url)
        again = invoke(*args, "--base-url", server.url)
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    said = " ".join((again.stdout + again.stderr).split())
    assert "resuming run 1: 1/1 step already stored; nothing left to measure" in said
    assert "nothing left to measure" not in " ".join((first.stdout + first.stderr).split())


def test_fit_refuses_a_load_run_in_one_line(tmp_path: Path) -> None:
    # A fresh-eyes check: `fit` of a load run fitted its queries in flight as batch sizes and
    # printed R² = 1 from two points, then suggested `profile --validate`.
    store = tmp_path / "l.db"
    assert rate_load_failing_in_warmup(store).exit_code == 0
    with Store(store) as db:
        run = db.latest_run_id()
    result = invoke("fit", str(run), "--store", store)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a load-rate run" in lines[0]
    said = " ".join(lines[0].split())  # the commands name the store the run is in
    assert f"infermeter show {run} --store {store}" in said and f"runs --store {store}" in said
    assert "Traceback" not in result.output
    with Store(store) as db:
        assert db.latest_fits(run) == []  # nothing stored as the run's fit


def test_rate_progress_counts_measured_requests_and_the_warm_up_apart(tmp_path: Path) -> None:
    # A user review: the progress said "level 20: 13 requests 1 not ok" where the table said
    # 9 requests, none failed: the warm-up's 4 (one failed) were counted as measured.
    result = rate_load_failing_in_warmup(tmp_path / "l.db")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "l.db") as db:
        points = db.points(db.latest_run_id())
    warm = [json.loads(e)["warmup"] for e in points.extra_json]
    measured, warm_up = warm.count(False), warm.count(True)
    assert measured and warm_up
    line = f"1/1 done, last level 20: {measured} requests (warm-up: {warm_up} requests), "
    assert line in result.output


def test_show_counts_a_stored_rate_load_as_its_end_line_did(tmp_path: Path) -> None:
    # A user review: `show` counted every stored row, so the run whose end line said "all 10
    # points measured" (its failure a warm-up one) showed "incomplete: 1/13 points failed".
    result = rate_load_failing_in_warmup(tmp_path / "l.db")
    assert result.exit_code == 0, result.output
    load = TimedLoad(16, 2, "rate", (20.0,), duration_s=0.5, warmup_s=0.2, arrival="constant")
    planned = sum(t >= load.warmup_s for t in load.arrivals(20.0))
    assert f"all {planned} measurements taken" in result.stderr
    shown = invoke("show", "--store", tmp_path / "l.db")
    assert shown.exit_code == 0, shown.output
    assert f"all {planned} measurements taken" in shown.stdout, shown.stdout
    # the table `load` printed, not a profile's points and a failed fit
    assert "rate load (p = 16, o = 2, 0.5 s a level)" in shown.stdout, shown.stdout
    assert "cannot fit" not in shown.output and "not used in fits" not in shown.stdout


class Interrupt(KeyboardInterrupt):
    """A Ctrl-C after the first burst or level is stored."""


def stop_after_first(*_: object) -> None:
    raise Interrupt


def test_show_counts_the_requests_an_interrupted_burst_load_never_sent(tmp_path: Path) -> None:
    # Counted against its stored rows, a load stopped after its first burst showed "all 1
    # points measured": the 2 + 4 requests it never sent were not missed.
    store = tmp_path / "l.db"
    with fault_server() as server, Store(store) as db, pytest.raises(Interrupt):
        backend = get_backend("openai", base_url=server.url)
        run_load_sweep(db, SPEC, {}, backend, {}, LoadGrid(16, (2,), (1, 2, 4), 1),
                       on_step=stop_after_first)  # fmt: skip
    shown = invoke("show", "--store", store)
    assert shown.exit_code == 0, shown.output
    assert "6/7 measurements not taken" in shown.stdout, shown.stdout
    assert "runtime vs queries in flight (p = 16)" in shown.stdout, shown.stdout
    assert "cannot fit" not in shown.output


def test_show_counts_the_planned_requests_of_an_interrupted_rate_load(tmp_path: Path) -> None:
    load = TimedLoad(16, 2, "rate", (20.0, 40.0), duration_s=0.3, warmup_s=0.2,
                     arrival="constant")  # fmt: skip
    store = tmp_path / "l.db"
    with fault_server(delay_s=0.01) as server, Store(store) as db, pytest.raises(Interrupt):
        backend = get_backend("openai", base_url=server.url)
        run_timed_load(db, SPEC, {}, backend, {}, load, on_level=stop_after_first)
    with Store(store) as db:
        points = db.points(db.latest_run_id())
    # A request is in the warm-up by its planned arrival, as the plan counts it (sent, it
    # may start a hair either side of the warm-up's end).
    planned_warm = [t < load.warmup_s for t in load.arrivals(20.0)]
    assert [json.loads(e)["warmup"] for e in points.extra_json] == planned_warm
    first = planned_warm.count(False)
    never = sum(t >= load.warmup_s for t in load.arrivals(40.0))  # level 40's, warm-up aside
    shown = invoke("show", "--store", store)
    assert shown.exit_code == 0, shown.output
    assert f"{never}/{first + never} measurements not taken" in shown.stdout, shown.stdout


def test_a_timed_load_says_which_one_output_length_it_measures(tmp_path: Path) -> None:
    # A fresh-eyes check: with the default --output-sizes 1,32 a timed load measured o = 1
    # (the first) and said nothing.
    with fault_server(delay_s=0.01) as server:
        result = invoke("load", "m", "--base-url", server.url, "--prompt-tokens", "16",
                        "--output-sizes", "1,3", "--mode", "concurrent", "--concurrency", "1",
                        "--duration-s", "0.3", "--warmup-s", "0",
                        "--store", tmp_path / "l.db")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: --mode concurrent measures one output length, o = 3: the largest of " in (
        result.stderr
    )
    with Store(tmp_path / "l.db") as db:
        assert set(db.points(db.latest_run_id()).output_tokens) == {3}


@pytest.mark.parametrize(("mode", "levels"), [("concurrent", (1.0, 3.0)), ("rate", (20.0,))])
def test_timed_load_modes(tmp_path: Path, mode: str, levels: tuple[float, ...]) -> None:
    load = TimedLoad(16, 2, mode, levels, duration_s=1.0, warmup_s=0.1, arrival="constant")  # type: ignore[arg-type]
    with fault_server(delay_s=0.02) as server, Store(tmp_path / "t.db") as db:
        backend = get_backend("openai", base_url=server.url)
        run = run_timed_load(db, SPEC, {}, backend, {}, load)
        points = db.points(run.id)
    summary = timed_summary(points, load.duration_s).set_index("level")
    assert list(summary.index) == list(levels) and (points.status == "ok").all()
    extra = pd.DataFrame([json.loads(e) for e in points.extra_json])
    assert extra["warmup"].any() and not extra["warmup"].all()
    assert (summary["requests"] > 0).all() and (summary["failed"] == 0).all()
    for name in ("latency", "ttft", "gap"):
        assert (summary[f"{name}_p99_s"] >= summary[f"{name}_p50_s"]).all()
    assert set(summary["gap_kind"]) == {"itl"}
    if mode == "rate":  # 20/s over 1.1 s, evenly spaced: one request every 0.05 s
        assert len(points) == len(load.arrivals(20.0)) in (21, 22)


# ---- 10. credentials in the URL ----------------------------------------------------------


def test_credentials_in_the_base_url_are_never_stored(tmp_path: Path) -> None:
    """The issue's example: user:KEY@host was stored verbatim in the run and the cache."""
    with fault_server(token_delay_s=0.02) as server:
        url = server.url.replace("http://", "http://user:sk-URL-SECRET-99@")
        result = invoke("profile", "m", "--backend", "openai", "--base-url", url,
                        "--store", tmp_path / "s.db", *GRID, "--accept-poor-fit")  # fmt: skip
        auth = server.headers[-1]
    assert result.exit_code == 0, result.output
    assert "--base-url holds credentials" in result.stderr and "Basic " in auth
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sk-URL-SECRET-99" not in path.read_bytes(), path
    assert "sk-URL-SECRET-99" not in result.output


def test_a_raw_answer_can_be_scripted() -> None:
    assert Raw([(0.0, b"x")]).body == b"x"


def test_the_report_draws_the_load_figure(tmp_path: Path) -> None:
    from infermeter.report.build import ReportInputs, build_report

    store = tmp_path / "load.db"
    with fault_server() as server, Store(store) as db:
        server.faults_for = measurement
        server.script("", "500")  # one failed request: counted in the figure's numbers
        grid = LoadGrid(16, (2, 3), (1, 2), 1)
        run_load_sweep(
            db, SPEC, {}, get_backend("openai", base_url=server.url, retries=0), {}, grid
        )
        timed = TimedLoad(16, 2, "concurrent", (1.0, 2.0), duration_s=0.2, warmup_s=0.0)
        run_timed_load(db, SPEC, {}, get_backend("openai", base_url=server.url), {}, timed)
    report = build_report(ReportInputs([store]))
    fig6 = next(s for s in report.sections if s.id == "fig6")
    assert fig6.plot is not None, fig6.missing
    data = fig6.plot.data
    assert set(data["kind"]) == {"load", "load-concurrent"}
    assert data["failed"].sum() == 1 and {"latency_p99_s", "ttft_p50_s"} <= set(data.columns)
    assert not any(s.id == "table3" and s.plot is not None for s in report.sections)


def test_the_command_says_which_feature_the_server_refused(tmp_path: Path) -> None:
    """The run's note was only in the store; the user who typed the command sees it too."""
    with fault_server(refuse={"stream_options"}, token_delay_s=0.02) as server:
        result = invoke("profile", "m", "--backend", "openai", "--base-url", server.url,
                        "--store", tmp_path / "s.db", *GRID, "--accept-poor-fit")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: server refused stream_options" in result.stderr
    assert "note: output lengths unverified where an answer reported no usage" in result.stderr
    shown = invoke("show", "--store", tmp_path / "s.db")  # later, the store says the same
    assert "note: server refused stream_options" in shown.stdout
    assert "all 12 measurements taken" in shown.stdout
