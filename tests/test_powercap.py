"""Power capping against a fake NVML: set, restore on every exit path, refuse cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_nvml import FakeGpu, FakeNvml
from infermeter.errors import UserError
from infermeter.powercap import PowerCap

TESTS = Path(__file__).resolve().parent


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
    assert "250 W" in notes[0] and "restored on exit" in notes[0]
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
    import infermeter.powercap as powercap

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
from infermeter.powercap import PowerCap

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
