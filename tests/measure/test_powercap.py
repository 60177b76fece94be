"""Power capping against a fake NVML: set, restore on every exit path, refuse cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_nvml import FakeGpu, FakeNvml
from infermeter.errors import UserError
from infermeter.measure.powercap import PowerCap
from paths import TESTS


def test_sets_and_restores_every_gpu_on_normal_exit() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(limit_mw=600_000)])
    notes: list[str] = []
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with PowerCap(250, [0, 1], nvml=nvml, on_note=notes.append) as cap:
        assert [g.limit_mw for g in nvml.gpus] == [250_000, 250_000]
        assert cap.active and signal.getsignal(signal.SIGTERM) == cap._on_signal
    assert [g.limit_mw for g in nvml.gpus] == [700_000, 600_000]
    assert nvml.gpus[1].limit_history == [250_000, 600_000]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert "GPU 1's power limit is 600 W, below its default 700 W" in notes[0]
    assert "250 W" in notes[-1] and "restored on exit" in notes[-1]
    assert cap.restore() == [] and len(nvml.calls) == 4  # restoring twice changes nothing


def test_restores_when_the_run_fails() -> None:
    nvml = FakeNvml([FakeGpu()])
    with pytest.raises(RuntimeError, match="rank 1 died"), PowerCap(300, [0], nvml=nvml):
        assert nvml.gpus[0].limit_mw == 300_000
        raise RuntimeError("engine rank 1 died during generate")
    assert nvml.gpus[0].limit_mw == 700_000


@pytest.mark.parametrize("watts", [199.0, 700.5, 1e6])
def test_out_of_range_is_refused_before_any_change(watts: float) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(min_limit_mw=100_000)])
    with pytest.raises(UserError, match=r"outside GPU 0's allowed range 200-700 W.*nothing"):
        PowerCap(watts, [0, 1], nvml=nvml).apply()
    assert nvml.calls == [] and all(g.limit_mw == 700_000 for g in nvml.gpus)


def test_without_permission_nothing_stays_changed() -> None:
    nvml = FakeNvml([FakeGpu(can_set_limit=False)])
    with pytest.raises(UserError, match=r"no permission.*root.*nothing was changed"):
        PowerCap(250, [0], nvml=nvml).apply()
    assert nvml.gpus[0].limit_mw == 700_000
    # The first GPU accepts, the second refuses: the first goes back.
    nvml = FakeNvml([FakeGpu(), FakeGpu(can_set_limit=False)])
    with pytest.raises(UserError, match=r"GPU 1.*nothing was changed"):
        PowerCap(250, [0, 1], nvml=nvml).apply()
    assert nvml.gpus[0].limit_history == [250_000, 700_000] and nvml.gpus[0].limit_mw == 700_000


def test_without_nvml_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    import infermeter.measure.powercap as powercap

    monkeypatch.setattr(powercap, "load_nvml", lambda: (None, "NVML unavailable (test)"))
    with pytest.raises(UserError, match=r"needs NVML.*nothing was changed"):
        PowerCap(250, [0]).apply()
    with pytest.raises(UserError, match="no GPU 3"):
        PowerCap(250, [3], nvml=FakeNvml([FakeGpu()])).apply()


@settings(max_examples=40, deadline=None)
@given(watts=st.floats(1, 1000, allow_nan=False))
def test_any_request_either_caps_and_restores_or_changes_nothing(watts: float) -> None:
    nvml = FakeNvml([FakeGpu(limit_mw=450_000)])
    try:
        with PowerCap(watts, [0], nvml=nvml):
            assert nvml.gpus[0].limit_mw == round(watts * 1000)
    except UserError:
        assert not 200 <= watts <= 700 and nvml.calls == []
    assert nvml.gpus[0].limit_mw == 450_000


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from fake_nvml import FakeGpu, FakeNvml
from infermeter.measure.powercap import PowerCap

log = open({log!r}, "a")

class LoggingNvml(FakeNvml):
    def nvmlDeviceSetPowerManagementLimit(self, gpu, limit_mw):
        super().nvmlDeviceSetPowerManagementLimit(gpu, limit_mw)
        log.write(f"{{limit_mw}}\\n")
        log.flush()

try:
    with PowerCap(250, [0], nvml=LoggingNvml([FakeGpu()])):
        print("ready", flush=True)
        time.sleep(30)
except KeyboardInterrupt:
    log.write("interrupted\\n")
    sys.exit(130)
"""


@pytest.mark.parametrize(
    ("signum", "code", "tail"), [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, ["interrupted"])]
)
def test_a_signal_restores_the_limit(
    tmp_path: Path, signum: int, code: int, tail: list[str]
) -> None:
    log = tmp_path / "limits.log"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(tests=str(TESTS), log=str(log))))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signum)
        assert child.wait(timeout=20) == code
    finally:
        if child.poll() is None:
            child.kill()
    assert log.read_text().split() == ["250000", "700000", *tail]


def test_handlers_are_only_installed_from_the_main_thread() -> None:
    import threading

    nvml = FakeNvml([FakeGpu()])
    seen: list[object] = []
    before = signal.getsignal(signal.SIGTERM)

    def worker() -> None:
        with PowerCap(250, [0], nvml=nvml):
            seen.append(signal.getsignal(signal.SIGTERM))
            time.sleep(0.01)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before] and nvml.gpus[0].limit_mw == 700_000


# ---- caps that cannot outlive the run: a fake NVML whose limits persist across processes ----


def child(tmp_path: Path, body: str) -> Path:
    """A script that runs `body` with `nvml`, a fake NVML of two GPUs whose limits live in
    tmp_path/limits.json (as a real GPU's outlive the process that set them)."""
    script = tmp_path / "child.py"
    head = f"""
import os, signal, sys, time
sys.path.insert(0, {str(TESTS)!r})
from fake_nvml import FakeGpu, FakeNvml
from infermeter.measure.powercap import PowerCap

class Nvml(FakeNvml):
    pass

def machine():
    return Nvml([FakeGpu(power=lambda t: 300.0), FakeGpu(power=lambda t: 300.0)],
                limits_file={str(tmp_path / "limits.json")!r})
"""
    script.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return script


def persisted(tmp_path: Path) -> FakeNvml:
    """The same fake machine, as the next process sees it."""
    gpus = [FakeGpu(power=lambda t: 300.0), FakeGpu(power=lambda t: 300.0)]
    return FakeNvml(gpus, limits_file=tmp_path / "limits.json")


def limits_w(tmp_path: Path) -> list[float]:
    nvml = persisted(tmp_path)
    return [nvml.nvmlDeviceGetPowerManagementLimit(g) / 1000 for g in nvml.gpus]


KILLED_MID_SWEEP = """
from infermeter.spec.catalog import get_spec
from infermeter.backends.engine import EngineBackend
from infermeter.workloads.datasets import load_workload
from infermeter.experiments.energy import EnergySweep, run_energy
from infermeter.measure.meter import Meter
from infermeter.store.db import Store
from infermeter.workloads.tokenizer import tokenizer_for

nvml = machine()
spec = get_spec("tiny-llama")
tok, _ = tokenizer_for(spec)
with Store(sys.argv[1]) as store:
    run_energy(
        store, spec, load_workload("gsm8k", 400), tok,
        EnergySweep((2,), (16,), power_limits=(250.0,)), lambda tp: EngineBackend(device="cpu"),
        meter_for=lambda tp: Meter(interval_s=0.05, nvml=nvml), power_nvml=nvml,
        idle_s=0.05,
    )
"""


def test_a_cap_left_by_kill_9_is_detected_and_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-sweep leaves the cards at 250 W: the next run refuses to read 250 W as
    'before' (it names the fix), `energy --restore-power-limit` puts back 700 W, and then
    capping works again."""
    import sqlite3

    from typer.testing import CliRunner

    import infermeter.measure.powercap as powercap
    from infermeter.cli.main import app

    store = tmp_path / "e.sqlite"
    proc = subprocess.Popen(
        [sys.executable, str(child(tmp_path, KILLED_MID_SWEEP)), str(store)],
        stderr=subprocess.PIPE,
    )
    try:
        stored, deadline = 0, time.monotonic() + 240
        while stored < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                with sqlite3.connect(store, timeout=1) as db:
                    stored = db.execute("SELECT count(*) FROM energy_batches").fetchone()[0]
            except sqlite3.OperationalError:
                continue
        assert stored >= 1, proc.stderr.read().decode() if proc.poll() is not None else ""
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert limits_w(tmp_path) == [250.0, 250.0]  # left behind: nothing ran to restore it
    nvml = persisted(tmp_path)
    with pytest.raises(UserError, match=r"left at 250 W by an earlier run.*before was 700 W"):
        PowerCap(200, [0, 1], nvml=nvml).apply()
    assert limits_w(tmp_path) == [250.0, 250.0] and nvml.calls == []  # nothing changed
    assert len(powercap.leftover_caps(nvml)) == 2
    monkeypatch.setattr(powercap, "load_nvml", lambda: (persisted(tmp_path), None))
    result = CliRunner().invoke(app, ["energy", "--restore-power-limit"])
    assert result.exit_code == 0, result.output
    assert result.output.count("power limit restored to 700 W (left at 250 W") == 2
    assert limits_w(tmp_path) == [700.0, 700.0] and powercap.leftover_caps(nvml) == []
    with PowerCap(200, [0, 1], nvml=persisted(tmp_path)):
        assert limits_w(tmp_path) == [200.0, 200.0]
    assert limits_w(tmp_path) == [700.0, 700.0]
    again = CliRunner().invoke(app, ["energy", "--restore-power-limit"])
    assert again.exit_code == 0 and "nothing to restore" in again.output


SIGNAL_DURING_APPLY = """
class Nvml(FakeNvml):
    def nvmlDeviceSetPowerManagementLimit(self, gpu, limit_mw):
        super().nvmlDeviceSetPowerManagementLimit(gpu, limit_mw)
        if gpu is self.gpus[1] and limit_mw == 250_000:  # mid-apply: GPU 0 is capped already
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))

try:
    with PowerCap(250, [0, 1], nvml=machine()):
        print("never here", flush=True)
        time.sleep(30)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_capping_leaves_no_cap(tmp_path: Path, name: str, code: int) -> None:
    script = child(tmp_path, SIGNAL_DURING_APPLY)
    done = subprocess.run(
        [sys.executable, str(script), name], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == code, done.stderr
    assert "never here" not in done.stdout
    assert limits_w(tmp_path) == [700.0, 700.0]  # GPU 0 went back too
    from infermeter.measure.powercap import leftover_caps

    assert leftover_caps(persisted(tmp_path)) == []  # and the state file is clean


IGNORING_SIGINT = """
signal.signal(signal.SIGINT, signal.SIG_IGN)
nvml = machine()
with PowerCap(250, [0, 1], nvml=nvml) as cap:
    ran = []
    for batch in range(8):
        if batch == 1:
            print("ready", flush=True)
            sys.stdin.readline()  # the parent sends SIGINT, then lets the sweep go on
        ran.append(min(cap.current_w()))
        time.sleep(0.01)
print(" ".join(f"{w:g}" for w in ran), flush=True)
"""


def test_an_ignored_sigint_keeps_the_cap_for_the_whole_sweep(tmp_path: Path) -> None:
    """A process that ignores SIGINT goes on measuring: every batch runs at the cap it is
    labelled with, and the cap goes back when the sweep ends."""
    script = child(tmp_path, IGNORING_SIGINT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.split() == ["250"] * 8
    assert limits_w(tmp_path) == [700.0, 700.0]


def test_caps_go_only_to_the_gpus_named_by_uuid() -> None:
    from fake_nvml import fake_uuid
    from infermeter.measure.gpus import resolve_gpus

    nvml = FakeNvml([FakeGpu() for _ in range(4)])
    env = {"CUDA_VISIBLE_DEVICES": f"{fake_uuid(3)},{fake_uuid(1)}"}
    refs = resolve_gpus("cuda", 2, nvml, environ=env, cuda_uuid=None)
    with PowerCap(250, refs, nvml=nvml):
        assert [g.limit_mw for g in nvml.gpus] == [700_000, 250_000, 700_000, 250_000]
    assert [len(g.limit_history) for g in nvml.gpus] == [0, 2, 0, 2]
    mig = replace(refs[0], mig=True)
    with pytest.raises(UserError, match=r"MIG instance.*nothing was changed"):
        PowerCap(250, [mig], nvml=nvml).apply()
