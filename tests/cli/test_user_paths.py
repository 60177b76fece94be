"""Every path a user gives, as issue 18 found them: outputs in missing or read-only folders,
stores that do not exist or sit on read-only media. One line each, never a traceback, and a
verb that only reads never makes a store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_runner import assert_one_line, invoke
from readonly import read_only
from report_store import write_inputs

# a loaded machine's timings may fit poorly (R² < 0); the fit is not the subject here
GRID = ["--prompt-sizes", "1,16", "--output-sizes", "1,4,8", "--trials", "2", "--accept-poor-fit"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("paths")
    store, model = tmp / "s.sqlite", tmp / "model.json"
    result = invoke("profile", "tiny-llama", "--device", "cpu", *GRID, "--store", store)
    assert result.exit_code == 0, result.output
    assert invoke("fit", "--store", store, "--accept-poor-fit", "--output", model).exit_code == 0
    return store, model


def test_output_in_a_missing_folder(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = profiled
    target = tmp_path / "nodir" / "out.csv"
    result = invoke(
        "estimate", "--profile", model, "--prompt-tokens", "8", "--output-tokens", "4",
        "--output", target,
    )  # fmt: skip
    assert_one_line(result, "does not exist", "mkdir -p")
    assert not target.parent.exists()


def test_a_folder_as_output_suggests_a_file_of_its_kind(
    profiled: tuple[Path, Path], tmp_path: Path
) -> None:
    # A fresh-eyes check: `fit --output FOLDER` suggested FOLDER/out.csv for a JSON model.
    store, model = profiled
    cases = [
        (["fit", "--store", store, "--output", tmp_path], "model.json"),
        (["estimate", "--profile", model, "--prompt-tokens", "8", "--output-tokens", "4",
          "--output", tmp_path], "out.csv"),
        (["report", "--store", store, "--output", tmp_path], "report.html"),
        (["export", "--store", store, "--helm", tmp_path], "helm.json"),
    ]  # fmt: skip
    for args, example in cases:
        assert_one_line(invoke(*args), "is a folder", str(tmp_path / example))


def test_outputs_in_a_read_only_folder(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    store, model = profiled
    folder = tmp_path / "ro"
    folder.mkdir()
    capabilities, queries = write_inputs(tmp_path)
    with read_only(folder):
        cases = [
            ["estimate", "--profile", model, "--prompt-tokens", "8", "--output-tokens", "4",
             "--output", folder / "out.csv"],
            ["fit", "--store", store, "--output", folder / "m.json"],
            ["export", "--store", store, "--output", folder / "p.csv"],
            ["export", "--store", store, "--helm", folder / "h.json"],
            ["report", "--store", store, "--output", folder / "r.html"],
            ["tradeoffs", "--store", store, "--capabilities", capabilities,
             *[a for q in queries for a in ("--queries", q)], "--figures", folder / "figs"],
        ]  # fmt: skip
        for args in cases:
            assert_one_line(invoke(*args), "read-only")
        assert list(folder.iterdir()) == []


def test_read_verbs_never_create_a_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo.sqlite"
    for verb in ("runs", "show", "export", "variance"):
        args = [verb, "--store", typo] + (
            ["--output", tmp_path / "p.csv"] if verb == "export" else []
        )
        assert_one_line(invoke(*args), "does not exist")
        assert not typo.exists()
    assert_one_line(invoke("report", "--store", typo, "--output", tmp_path / "r.html"), "typo")
    assert not typo.exists()


def test_a_store_on_read_only_media_is_listed_and_read(
    profiled: tuple[Path, Path], tmp_path: Path
) -> None:
    store, _ = profiled
    folder = tmp_path / "media"
    folder.mkdir()
    copy = folder / "s.sqlite"
    shutil.copy(store, copy)
    with read_only(copy, folder):
        listed = invoke("runs", "--store", copy)
        assert listed.exit_code == 0, listed.output
        assert "tiny-llama" in listed.stdout
        shown = invoke("show", "--store", copy)
        assert shown.exit_code == 0 and "R²" in shown.stdout, shown.output
        exported = invoke("export", "--store", copy, "--output", tmp_path / "p.csv")
        assert exported.exit_code == 0 and (tmp_path / "p.csv").exists(), exported.output
        # A verb that writes says so in one line.
        assert_one_line(invoke("fit", "--store", copy, "--accept-poor-fit"), "read-only")
        assert sorted(p.name for p in folder.iterdir()) == ["s.sqlite"]


def test_a_folder_given_as_a_file(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = profiled
    result = invoke("export", "--store", store, "--output", tmp_path)
    assert_one_line(result, "is a folder")
    assert_one_line(invoke("estimate", "--profile", tmp_path, "--prompt-tokens", "1",
                           "--output-tokens", "1"), "is a folder")  # fmt: skip
    assert_one_line(invoke("runs", "--store", tmp_path), "is a folder")
