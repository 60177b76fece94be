"""Test helpers live beside the tests (fake_nvml); make them importable."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _power_limit_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Power caps record what they changed in a state file: each test gets its own (child
    processes inherit it), never the user's ~/.local/state."""
    monkeypatch.setenv("INFERMETER_STATE_DIR", str(tmp_path_factory.mktemp("state")))
