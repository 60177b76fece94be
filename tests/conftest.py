"""Test helpers live beside the tests (fake_nvml); make them importable. Ctrl-C works in the
processes the tests start, however the suite itself was started."""

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# A job started in the background by a shell without job control (a CI script's `cmd &`,
# nohup) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every CLI
# the tests start would then shrug off the Ctrl-C the interrupt tests send. A handled signal
# is reset to the default on exec, so handling it here gives children Python's usual Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _power_limit_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Power caps record what they changed in a state file: each test gets its own (child
    processes inherit it), never the user's ~/.local/state."""
    monkeypatch.setenv("INFERMETER_STATE_DIR", str(tmp_path_factory.mktemp("state")))
