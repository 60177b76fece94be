"""A run is measured by one process at a time, and a failed start-up leaves nothing behind.

Issue 18 found two identical commands on one store both measuring every point, and failed
start-up checks (memory refusal, closed port, 401) leaving empty "interrupted" runs. Real
processes, a real store, real HTTP servers on 127.0.0.1; no assertion on how long anything took
(the first process is paused with SIGSTOP while the second one tries).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import infermeter.measure.memory
from api_servers import free_port
from cli_runner import assert_one_line, invoke
from infermeter.errors import UserError
from infermeter.store.db import Store
from timed_server import TimedServer

# A loaded machine's timings may fit poorly (R² < 0); the fit is not the subject here. The
# long outputs keep the first process measuring for seconds after its first point is stored,
# so that a test polling the store (starved on a loaded machine) still catches it mid-run: with
# outputs of at most 16 tokens it once finished all 24 points before the poll saw the first.
GRID = ["--prompt-sizes", "1,16", "--output-sizes", "1,64,128,256", "--trials", "3",
        "--accept-poor-fit"]  # fmt: skip
TOTAL = 2 * 4 * 3  # grid trials (--validate 0)


def command(store: Path) -> list[str]:
    return ["profile", "tiny-llama", "--device", "cpu", *GRID, "--validate", "0", "--store",
            str(store)]  # fmt: skip


def start(store: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "infermeter", *command(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def stored_points(store: Path) -> pd.DataFrame:
    with sqlite3.connect(store) as con:
        return pd.read_sql_query("SELECT * FROM points ORDER BY rowid", con)


def wait_for_points(store: Path, proc: subprocess.Popen, at_least: int = 1) -> None:
    """Until the process has stored `at_least` points (a hang guard only: 300 s)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the profile ended before it was caught measuring"
        try:
            if store.exists() and len(stored_points(store)) >= at_least:
                return
        except (sqlite3.OperationalError, pd.errors.DatabaseError):
            pass
        time.sleep(0.05)
    raise AssertionError("no point stored")


def test_a_second_identical_command_refuses_naming_the_first(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    first = start(store)
    try:
        wait_for_points(store, first)
        first.send_signal(signal.SIGSTOP)  # it owns the run, and measures nothing meanwhile
        before = stored_points(store)
        assert len(before) < TOTAL, "caught after measuring, not during (the test's premise)"
        second = invoke(*command(store))
        assert_one_line(second, f"process {first.pid}", "run 1 (tiny-llama)", "being measured")
        pd.testing.assert_frame_equal(stored_points(store), before)  # nothing measured twice
        listed = invoke("runs", "--store", store)
        assert listed.exit_code == 0 and "running" in listed.stdout, listed.stdout
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    after = stored_points(store)
    assert len(after) == TOTAL and (after.status == "ok").all()
    kept = after.merge(before, on=["prompt_tokens", "output_tokens", "trial"], suffixes=("", "_b"))
    assert (kept.measured_at == kept.measured_at_b).all()


def test_a_dead_owner_is_taken_over_and_a_refused_start_keeps_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.sqlite"
    first = start(store)
    wait_for_points(store, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = stored_points(store)
    assert 0 < len(before) < TOTAL
    # The killed process's run still says running in the store; `runs` knows better.
    listed = invoke("runs", "--store", store)
    assert listed.exit_code == 0 and "interrupted" in listed.stdout, listed.output
    # A start-up check that fails (memory) leaves the run as it was: no new, empty run.
    with monkeypatch.context() as patch:
        patch.setattr(infermeter.measure.memory, "available_bytes", lambda device: 1)
        assert_one_line(invoke(*command(store)), "GiB of weights")
    with Store(store, read_only=True) as db:
        assert db.runs()["id"].tolist() == [1]
    # The lock of the dead process is taken over; the same run resumes where it stopped.
    resumed = invoke(*command(store))
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming run 1: {len(before)}/{TOTAL}" in resumed.stdout
    after = stored_points(store)
    assert len(after) == TOTAL and set(after.run_id) == {1}


def test_the_same_run_twice_in_one_process_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as one, Store(tmp_path / "s.sqlite") as two:
        one.claim("k")
        with pytest.raises(UserError, match="already open in this process"):
            two.claim("k")
    with Store(tmp_path / "s.sqlite") as three:  # released with the stores that held it
        three.claim("k")


def test_failed_start_up_checks_leave_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERMETER_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "api.sqlite"
    grid = ["--prompt-sizes", "8,16", "--output-sizes", "1,4", "--trials", "2", "--accept-poor-fit"]
    closed = f"http://127.0.0.1:{free_port()}/v1"
    base = ["profile", "api-model", "--backend", "openai", *grid, "--store", store]
    assert_one_line(invoke(*base, "--base-url", closed), "cannot reach")
    with TimedServer() as server:
        args = [*base, "--base-url", server.url]
        server.script("401")
        assert_one_line(invoke(*args), "--api-key")
        # A tokenizer that is not the server's: prompts of exact size cannot be calibrated.
        assert_one_line(invoke(*args, "--tokenizer", "bytes"), "--tokenizer")
        with Store(store, read_only=True) as db:
            assert db.runs().empty  # no failure left a run behind
        done = invoke(*args)
        assert done.exit_code == 0, done.output
    with Store(store, read_only=True) as db:
        runs = db.runs()
    assert runs["id"].tolist() == [1] and runs["status"].tolist() == ["complete"]


def test_serve_on_a_busy_port_says_so_before_serving() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "tiny-llama", "--device", "cpu", "--port", str(port))
    assert_one_line(result, f"port {port}", "in use")
    assert "serving" not in result.stdout


# ---- the one resumable-run helper every experiment uses (infermeter.experiments.run) -------


def _identity(key: str = "k"):
    from infermeter.experiments.run import RunIdentity

    return RunIdentity(key, "tiny", {}, {}, "hf", {}, {"trials": 1}, "cpu")


def test_resumable_run_sets_the_status_the_body_ends_with(tmp_path: Path) -> None:
    from infermeter.backends.base import Measurement, Point
    from infermeter.experiments.run import resumable_run

    cleaned: list[str] = []
    with Store(tmp_path / "s.sqlite") as store:
        resume = resumable_run(store, _identity(), lambda run: [] if run else ["all"])
        assert resume.existing is None and resume.todo == ["all"]
        with (
            pytest.raises(KeyboardInterrupt),
            resume.open(cleanup=lambda: cleaned.append("x")) as active,
        ):
            store.record_point(active.run.id, Point(1, 1), Measurement(0.1))
            raise KeyboardInterrupt
        assert cleaned == ["x"] and store.get_run(active.run.id).status == "interrupted"
        again = resumable_run(store, _identity(), lambda run: [] if run else ["all"])
        assert again.existing is not None and again.todo == []
        with again.open() as second:
            second.status = "partial"
        assert second.resumed and second.run.id == active.run.id
        assert store.get_run(active.run.id).status == "partial"
        assert again.mark_complete().status == "complete"


def test_resumable_run_discards_a_new_run_that_measured_nothing(tmp_path: Path) -> None:
    from infermeter.experiments.run import resumable_run

    with Store(tmp_path / "s.sqlite") as store:
        resume = resumable_run(store, _identity(), lambda run: None)
        with pytest.raises(RuntimeError), resume.open(discard_if_empty=True):
            raise RuntimeError("calibration failed")
        assert store.runs().empty
        with pytest.raises(RuntimeError, match="port"), resume.open(before=_fail):
            pass
        assert store.runs().empty  # `before` failed: nothing was recorded


def _fail() -> None:
    raise RuntimeError("closed port")


def test_the_three_experiments_are_experiments() -> None:
    from infermeter.experiments.base import Experiment
    from infermeter.experiments.energy import EnergyExperiment
    from infermeter.experiments.load import LoadExperiment
    from infermeter.experiments.profile import ProfileExperiment

    for experiment in (ProfileExperiment(), EnergyExperiment(), LoadExperiment()):
        assert isinstance(experiment, Experiment) and experiment.name
