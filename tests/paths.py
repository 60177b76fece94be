"""Where the tests' files are, wherever a test module sits under tests/."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"  # recorded transcripts, HF configs, HELM samples
SCRIPTS = TESTS / "scripts"  # run in their own processes (torchrun ranks, Triton interpreter)
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout
