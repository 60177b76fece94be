"""Test helpers live beside the tests (fake_nvml); make them importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
