"""Sweeps (infermeter.experiments.sweep) and merged stores (infermeter.store.merge): a
SWEEP.toml's jobs, one
after another or as Ray tasks on a local cluster (a head and one worker node on 127.0.0.x)
with one worker killed mid-sweep; the merged store holds every run and point exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from infermeter.backends.base import Measurement, Point
from infermeter.cli.main import app
from infermeter.cli.options import options_of
from infermeter.errors import UserError
from infermeter.experiments.sweep import check_options, load_sweep
from infermeter.store.db import Store
from infermeter.store.merge import merge_stores
from paths import REPO

GRID = """
[defaults]
device = "cpu"
validate = 0
prompt-sizes = "1,8,16"
output-sizes = "1,8,16"
trials = 2
accept-poor-fit = true
"""  # a loaded machine's timings may fit poorly; the fit is not the subject


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "SWEEP.toml"
    path.write_text(text)
    return path


def test_lists_multiply_into_named_jobs_with_their_gpus(tmp_path: Path) -> None:
    sweep = load_sweep(
        _write(
            tmp_path,
            '[sweep]\nstore = "all.sqlite"\nretries = 2\n[defaults]\nvalidate = 0\n'
            '[[jobs]]\ncommand = "profile"\nmodel = ["llama-7b", "llama-13b"]\ntp = [1, 2]\n'
            '[[jobs]]\ncommand = "energy"\nname = "w2w"\nmodel = "llama-65b"\nshards = "4,8"\n'
            "energy = false\n",
        )
    )
    assert [j.name for j in sweep.jobs] == [
        "profile-llama-7b-tp1", "profile-llama-7b-tp2", "profile-llama-13b-tp1",
        "profile-llama-13b-tp2", "w2w",
    ]  # fmt: skip
    assert [j.gpus for j in sweep.jobs] == [1, 2, 1, 2, 8]
    assert sweep.store == tmp_path / "all.sqlite" and sweep.stores == tmp_path / "sweep-stores"
    assert sweep.retries == 2
    w2w = sweep.jobs[-1]
    assert w2w.argv(Path("s.sqlite")) == [
        "energy", "llama-65b", "--validate", "0", "--shards", "4,8", "--no-energy",
        "--store", "s.sqlite",
    ]  # fmt: skip
    with pytest.raises(UserError, match=r"`infermeter energy` has no option --validate"):
        check_options(sweep, _options_of)
    check_options(sweep.__class__(sweep.jobs[:4], sweep.store, sweep.stores), _options_of)


def _options_of(command: str) -> set[str]:
    return options_of(typer.main.get_command(app), command)  # type: ignore[arg-type]


def test_the_docs_sweep_file_runs(tmp_path: Path) -> None:
    """docs/scale-out.md's SWEEP.toml is one that `infermeter sweep` takes as it is."""
    page = (REPO / "docs" / "scale-out.md").read_text()
    text = page.split("```toml\n", 1)[1].split("```", 1)[0]
    sweep = load_sweep(_write(tmp_path, text))
    check_options(sweep, _options_of)
    assert [(j.command, j.gpus) for j in sweep.jobs] == [
        ("profile", 4), ("profile", 8), ("energy", 4), ("energy", 8),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[jobs]]\ncommand = "serve"\nmodel = "gpt2"\n', "command must be one of profile"),
        ('[[jobs]]\ncommand = "profile"\n', "jobs\\[0\\]: no model"),
        ("[jobs\n", "is not valid TOML"),
        ("[sweep]\nretries = -1\n[[jobs]]\n", "retries must be a whole number"),
        ('[[jobs]]\ncommand = "profile"\nmodel = []\n', "a list must hold at least one value"),
        ('[[jobs]]\ncommand="profile"\nmodel="a"\n[[jobs]]\ncommand="profile"\nmodel="a"\n',
         "two jobs are named 'profile-a'"),
        ("", "no \\[\\[jobs\\]\\]"),
    ],
)  # fmt: skip
def test_a_sweep_file_it_cannot_run_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(UserError, match=message) as caught:
        load_sweep(_write(tmp_path, text))
    assert "\n" not in str(caught.value)


def _store_with(path: Path, points: dict[tuple[int, int], str], status: str) -> None:
    """A store with one run (the same key in every store; resumed where `path` holds it)
    holding `points`' statuses, each measured now."""
    with Store(path) as store:
        run, _ = store.open_run(
            key="k1", model="tiny", spec={}, stack={}, backend="engine", backend_info={},
            grid={}, device="cpu",
        )  # fmt: skip
        for (p, o), state in points.items():
            runtime = 0.1 if state == "ok" else float("nan")
            store.record_points(run.id, [(Point(p, o, 1, 0), Measurement(runtime, status=state))])
        store.set_run_status(run.id, status)


def _table(store: Path, query: str) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return sorted(db.execute(query).fetchall())


def test_a_merge_keeps_each_point_once_and_a_remeasured_failure_replaces_it(
    tmp_path: Path,
) -> None:
    """A job's store merged, then merged again once the resumed job measured its failed trial
    again (or the two merged the other way round): one run, each point once, the measured
    trial in place of the failed one, which is kept once in replaced_points."""
    job, then = tmp_path / "job.sqlite", tmp_path / "then.sqlite"
    _store_with(job, {(1, 1): "ok", (1, 4): "error"}, "interrupted")
    shutil.copy(job, then)  # the job's store as a first merge read it
    _store_with(job, {(1, 4): "ok", (8, 1): "ok"}, "complete")  # resumed
    for order in ([then, job], [job, then]):
        target = tmp_path / f"{order[0].stem}-first.sqlite"
        first, second = merge_stores(target, order).merged
        assert (first.runs_new, second.runs_joined, second.runs_apart) == (1, 1, 0)
        assert second.superseded["points"] == (1 if order[0] == then else 0)
        again = merge_stores(target, order).merged  # idempotent
        assert [
            (m.runs_joined, sum(m.copied.values()), sum(m.superseded.values())) for m in again
        ] == [(1, 0, 0), (1, 0, 0)]
        assert _table(target, "SELECT count(*), status FROM runs") == [(1, "complete")]
        points = _table(target, "SELECT prompt_tokens, output_tokens, status FROM points")
        assert points == [(1, 1, "ok"), (1, 4, "ok"), (8, 1, "ok")]
        kept = _table(target, "SELECT prompt_tokens, output_tokens, status FROM replaced_points")
        assert kept == [(1, 4, "error")]
    target = tmp_path / "m.sqlite"
    with pytest.raises(UserError, match="is the target of the merge and one of its sources"):
        merge_stores(target, [job, target])  # refused, not skipped in silence
    with pytest.raises(UserError, match="no store at"):
        merge_stores(target, [tmp_path / "missing.sqlite"])


def test_a_failed_trial_a_merge_replaces_is_kept(tmp_path: Path) -> None:
    """Copies of one store that measured a trial apart, one failing it: merged, the measured
    trial takes the failed one's place and the failed one is kept in replaced_points."""
    failed, measured = tmp_path / "failed.sqlite", tmp_path / "measured.sqlite"
    _store_with(failed, {(1, 1): "ok"}, "interrupted")
    shutil.copy(failed, measured)
    _store_with(failed, {(1, 4): "error"}, "interrupted")
    _store_with(measured, {(1, 4): "ok"}, "complete")
    target = tmp_path / "m.sqlite"
    _, second = merge_stores(target, [failed, measured]).merged
    assert (second.runs_joined, second.copied["points"], second.superseded["points"]) == (1, 1, 1)
    points = _table(target, "SELECT prompt_tokens, output_tokens, status FROM points")
    assert points == [(1, 1, "ok"), (1, 4, "ok")]
    kept = _table(target, "SELECT prompt_tokens, output_tokens, status FROM replaced_points")
    assert kept == [(1, 4, "error")]


def _points_once(store: Path, runs: int, per_run: int) -> None:
    with sqlite3.connect(store) as db:
        statuses = db.execute("SELECT status FROM runs").fetchall()
        total, distinct = db.execute(
            "SELECT count(*), count(DISTINCT run_id || ':' || prompt_tokens || ':' || "
            "output_tokens || ':' || trial) FROM points WHERE status = 'ok'"
        ).fetchone()
    assert statuses == [("complete",)] * runs
    assert total == distinct == runs * per_run


def _sweep_cmd(path: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "infermeter", "sweep", str(path), *more]


@pytest.mark.slow
def test_without_ray_the_jobs_run_one_after_another_and_merge(tmp_path: Path) -> None:
    path = _write(tmp_path, GRID + '[[jobs]]\ncommand = "profile"\nmodel = "tiny-llama"\n'
                  "tp = [1, 2]\n")  # fmt: skip
    done = subprocess.run(_sweep_cmd(path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done profile-tiny-llama-tp1\ndone profile-tiny-llama-tp2" in done.stdout
    _points_once(tmp_path / "sweep.sqlite", 2, 18)
    log = (tmp_path / "sweep-stores" / "profile-tiny-llama-tp2.log").read_text()
    assert log.startswith("$ infermeter profile tiny-llama --device cpu")
    # Run again over finished jobs: each is one attempt of this run, not a retry.
    again = subprocess.run(_sweep_cmd(path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "attempts" not in again.stdout, again.stdout
    _points_once(tmp_path / "sweep.sqlite", 2, 18)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until_started(proc: subprocess.Popen, timeout_s: float = 90) -> None:
    """Wait for `ray start --block` to say its node is up (then keep draining its output)."""
    started = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    assert started.wait(timeout_s), "ray start did not come up:\n" + "".join(lines[-20:])


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.2 and a worker node on 127.0.0.3 (both this machine's loopback),
    one CPU each, started in process groups of their own and killed by those at the end."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'infermeter[ray]'")
    ray = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--num-cpus", "1",
           "--num-gpus", "0", "--object-store-memory", "80000000", "--disable-usage-stats",
           "--dashboard-agent-listen-port", str(_free_port())]  # fmt: skip
    temp = tempfile.mkdtemp(prefix="imray", dir="/tmp")  # short: socket paths are limited
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = [*ray, "--head", "--node-ip-address", "127.0.0.2", "--port", str(port),
            "--include-dashboard=false", "--ray-client-server-port", str(_free_port()),
            "--temp-dir", temp]  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        for command in (head, [*ray, "--address", f"127.0.0.2:{port}", "--node-ip-address",
                               "127.0.0.3"]):  # fmt: skip
            proc = subprocess.Popen(command, env=env, start_new_session=True, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            procs.append(proc)
            _until_started(proc)
        yield f"127.0.0.2:{port}"
    finally:
        for proc in reversed(procs):  # each group is one `ray start` and what it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_a_ray_sweep_loses_a_worker_retries_its_job_and_merges_every_point_once(
    tmp_path: Path, ray_cluster: str
) -> None:
    path = _write(tmp_path, GRID + '[[jobs]]\ncommand = "profile"\n'
                  'model = ["tiny-llama", "tiny-gpt2"]\ntp = [1, 2]\n')  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    sweep = subprocess.Popen(_sweep_cmd(path, "--ray", ray_cluster), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    stores = tmp_path / "sweep-stores"
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.05)
            for store in stores.glob("*.sqlite"):
                try:
                    with sqlite3.connect(store, timeout=1) as db:
                        measured = db.execute("SELECT count(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:  # not made yet, or busy
                    continue
                if measured:
                    attempts = store.with_suffix(".attempts").read_text().splitlines()
                    worker = json.loads(attempts[-1])["pid"]  # the Ray worker running it
                    os.kill(worker, signal.SIGKILL)
                    killed = store.stem
                    break
        out, _ = sweep.communicate(timeout=240)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert killed is not None, "a worker must be killed while its job measures"
    assert sweep.returncode == 0, out
    assert f"done {killed}, 2 attempts" in out
    assert out.count("\ndone ") == 4
    _points_once(tmp_path / "sweep.sqlite", 4, 18)
    nodes = {
        json.loads(line)["node"]
        for attempts in stores.glob("*.attempts")
        for line in attempts.read_text().splitlines()
    }
    assert len(nodes) == 2, "the head and the worker node both ran jobs"


def test_a_ray_address_where_nothing_answers_is_refused_at_once(tmp_path: Path) -> None:
    """ray.init retried a wrong address for over ten minutes, printing only its own warnings
    (a fresh-eyes check found it): nothing answering at HOST:PORT is now a one-line error."""
    from cli_runner import assert_one_line, invoke

    path = _write(tmp_path, GRID + '[[jobs]]\ncommand = "profile"\nmodel = "tiny-llama"\n')
    address = f"127.0.0.1:{_free_port()}"
    result = invoke("sweep", path, "--ray", address)
    assert_one_line(result, f"no Ray cluster answers at {address}", "ray start --head")
    assert not (tmp_path / "sweep.sqlite").exists()
