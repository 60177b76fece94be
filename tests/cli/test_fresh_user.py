"""What a fresh user met in runs, fit --points, merge, compare, models --show, tradeoffs and
the lines that count things: every run said with its kind and counts that mean something, one
line naming the whole problem and the fix that matches the verb, nothing dropped silently, and
a count of one said in the singular.

Stores are built from synthetic points and rows through the store's own functions, as a profile
or an energy run stores them, so nothing here depends on how fast this machine runs a model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_newcomer_errors import POINTS_COLUMNS, energy_store, points_file, profile_store

from cli_runner import assert_one_line, invoke
from infermeter.backends.base import Measurement, Point
from infermeter.experiments.profile import ProfileGrid
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import Stack, get_accelerator
from infermeter.store.db import Store
from infermeter.store.energy import record_batch
from infermeter.units import count_text, plural
from readonly import read_only

GRID = ProfileGrid((1, 32, 64), (1, 4, 8), (1,), 2)


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The rows of the one rich table in `stdout`, by column name."""
    lines = stdout.splitlines()
    header = next(line for line in lines if "┃" in line)
    names = [cell.strip() for cell in header.split("┃") if cell.strip()]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]
    return [dict(zip(names, row, strict=True)) for row in rows]


def said(stderr: str, label: str) -> list[str]:
    """The lines of `stderr` labelled `label:`, without the label."""
    return [
        line.removeprefix(f"{label}: ") for line in stderr.splitlines() if line.startswith(label)
    ]


def engine_run(store: Store, key: str, backend: str, g_s: float) -> int:
    """A complete profile of tiny-llama on `backend` on this CPU (stack cpu, float32): a
    runtime of 10 ms + 0.1 ms per prompt token + `g_s` per output token after the first."""
    stack = Stack(backend, get_accelerator("cpu"), dtype="float32").to_dict()
    run, _ = store.open_run(
        key=key, model="tiny-llama", spec=get_spec("tiny-llama").to_dict(), stack=stack,
        backend=backend, backend_info={}, grid=GRID.to_dict(), device="cpu: test",
    )  # fmt: skip
    for point in GRID.points():
        runtime = 0.01 + 1e-4 * point.prompt_tokens + g_s * (point.output_tokens - 1)
        store.record_point(run.id, point, Measurement(runtime, output_tokens_actual=None))
    store.set_run_status(run.id, "complete")
    return run.id


# ---- 1: runs says each run's kind, and counts an energy run's configurations and batches -------


def test_runs_gives_each_runs_kind_and_an_energy_runs_configurations(tmp_path: Path) -> None:
    store = energy_store(profile_store(tmp_path / "s.sqlite"))
    with Store(store) as db:
        configs = int(db.frame("SELECT count(*) AS n FROM energy_configs").n[0])
        for index in range(3):  # three batches of one configuration, one response each
            batch = (2, "b8-l256-s1-cap250", index, 1, 12, 0.5, 0.5, 100.0 + index,
                     100.5 + index, 90.0, 88.0, "counter", 80.0, 20.0, 1.0, 250.0)  # fmt: skip
            record_batch(db, [(2, "b8-l256-s1-cap250", index, index, 12, 8, 6, 90.0, 90.0)], batch)
    listed = invoke("runs", "--store", store)
    assert listed.exit_code == 0, listed.output
    profile, energy = table_rows(listed.stdout)
    assert (profile["kind"], energy["kind"]) == ("profile", "energy")
    assert (profile["points"], profile["measurements"], profile["ok_measurements"]) == (
        "9", "18", "18"
    )  # fmt: skip
    assert (energy["points"], energy["measurements"], energy["ok_measurements"]) == (
        str(configs), "3", "3"
    )  # fmt: skip
    assert configs > 0
    assert "an energy run's points are its configurations" in listed.stdout


# ---- 2: fit --points names every required column it lacks -----------------------------------


def test_fit_points_names_every_required_column_it_lacks(tmp_path: Path) -> None:
    renamed = points_file(tmp_path / "p.csv", prompt_tokens="prompt", runtime_s="seconds")
    message = assert_one_line(
        invoke("fit", "--points", renamed), "lacks column(s) prompt_tokens, runtime_s;"
    )
    assert POINTS_COLUMNS in message
    assert_one_line(
        invoke("fit", "--points", points_file(tmp_path / "q.csv", runtime_s="t")),
        "lacks column(s) runtime_s; a points file has columns",
    )


# ---- 3, 7, d: merge ------------------------------------------------------------------------------


def test_merge_says_how_merge_takes_its_stores(tmp_path: Path) -> None:
    junk = tmp_path / "points.csv"
    junk.write_text("prompt_tokens,output_tokens\n1,2\n")
    message = assert_one_line(
        invoke("merge", tmp_path / "m.sqlite", junk),
        "is not an infermeter store",
        "infermeter merge TARGET SOURCE",
    )
    assert "--store" not in message
    assert not (tmp_path / "m.sqlite").exists()


def test_merge_refuses_a_store_named_twice_or_the_target_as_a_source(tmp_path: Path) -> None:
    store = profile_store(tmp_path / "s.sqlite")
    before = store.read_bytes()
    assert_one_line(invoke("merge", store, store), f"{store} is the target", "drop it")
    target = tmp_path / "t.sqlite"
    assert_one_line(
        invoke("merge", target, store, tmp_path / "." / "s.sqlite"), "named twice", "once"
    )
    assert not target.exists() and store.read_bytes() == before
    merged = invoke("merge", target, store)
    assert merged.exit_code == 0, merged.output
    assert merged.stdout.startswith(f"merged {store} into {target}: 1 new run"), merged.stdout


def test_merge_reads_a_source_in_a_read_only_folder(tmp_path: Path) -> None:
    """Each source is opened once, read-only: one on read-only media merges, untouched."""
    media = tmp_path / "media"
    media.mkdir()
    source = profile_store(media / "s.sqlite")
    with Store(source):  # settle its journal into the file, as a copied store would be
        pass
    for name in ("s.sqlite-wal", "s.sqlite-shm", "s.sqlite.lock"):
        (media / name).unlink(missing_ok=True)
    before = source.read_bytes()
    with read_only(source, media):
        merged = invoke("merge", tmp_path / "all.sqlite", source)
    assert merged.exit_code == 0, merged.output
    assert "copied 18 measurements" in merged.stdout and source.read_bytes() == before


# ---- 4: compare keeps a stack's runs from two stores, and says which run it left out -------------


def test_compare_keeps_runs_of_one_stack_from_two_stores(tmp_path: Path) -> None:
    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with Store(first) as db:
        engine_run(db, "a-engine", "engine", 0.003)
    with Store(second) as db:
        engine_run(db, "b-engine-old", "engine", 0.005)
        engine_run(db, "b-engine", "engine", 0.004)
        engine_run(db, "b-hf", "hf", 0.006)
    result = invoke("compare", "--store", first, "--store", second)
    assert result.exit_code == 0, result.output
    stacks = [row["stack"] for row in table_rows(result.stdout)]
    assert stacks == [
        "engine on 1 × cpu (a.sqlite#1)",
        "engine on 1 × cpu (b.sqlite#2)",
        "hf on 1 × cpu (b.sqlite#3)",
    ]
    left_out, priced = said(result.stderr, "note")
    assert left_out.startswith("b.sqlite#1 left out: b.sqlite#2 is a newer run of tiny-llama on "
                               "the same stack (engine on 1 × cpu) in the same store")  # fmt: skip
    assert priced.startswith(  # one note for the three stacks its assumption holds for
        "engine on 1 × cpu (a.sqlite#1), engine on 1 × cpu (b.sqlite#2), hf on 1 × cpu "
        "(b.sqlite#3): priced as 1 × cpu (nominal: $"
    ) and priced.endswith("prices each with your own figures (--accelerator, --price-per-hour, "
                          "--power-watts)"), priced  # fmt: skip
    again = invoke("compare", "--store", first, "--store", second, "--store", first)
    assert again.exit_code == 0 and table_rows(again.stdout) == table_rows(result.stdout)


def test_compare_tells_two_stores_of_one_file_name_apart(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first, second = tmp_path / "x" / "infermeter.sqlite", tmp_path / "y" / "infermeter.sqlite"
    for path, g_s in ((first, 0.003), (second, 0.004)):
        with Store(path) as db:
            engine_run(db, "engine", "engine", g_s)
    result = invoke("compare", "--store", first, "--store", second)
    assert result.exit_code == 0, result.output
    stacks = [row["stack"] for row in table_rows(result.stdout)]
    assert stacks == [f"engine on 1 × cpu ({first}#1)", f"engine on 1 × cpu ({second}#1)"]


# ---- 5: models --show and the catalog show a small model's counts ----------------------------


def test_models_show_gives_a_small_models_counts_in_a_unit_that_shows_them() -> None:
    spec = get_spec("tiny-llama")
    result = invoke("models", "--show", "tiny-llama")
    assert result.exit_code == 0, result.output
    facts = {
        row["figure"]: row["value"] for row in table_rows(result.stdout.split("One decode")[0])
    }
    assert spec.num_params == 106_816 and facts["total parameters"] == "106.816 K"
    assert facts["active parameters per token"].startswith("106.816 K (90.432 K without")
    assert facts["weights"] == "427.26 kB at float32"
    assert facts["KV cache per token"] == "512 bytes (all layers)"
    assert "0.000" not in result.stdout.split("One decode")[0]
    listed = invoke("models")
    tiny = next(row for row in table_rows(listed.stdout) if row["name"] == "tiny-llama")
    assert float(tiny["params (B)"]) == pytest.approx(spec.num_params / 1e9, rel=0.01)
    assert float(tiny["active (B)"]) == pytest.approx(spec.active_params() / 1e9, rel=0.01)


@pytest.mark.parametrize(
    ("count", "text"),
    [(512, "512"), (90_432, "90.432 K"), (124_439_808, "124.440 M"), (6.738e9, "6.738 B")],
)
def test_count_text_picks_the_largest_unit_a_count_reaches(count: float, text: str) -> None:
    assert count_text(count) == text


# ---- 6: a count of one is said in the singular -----------------------------------------------


@pytest.mark.parametrize(
    ("count", "noun", "text"),
    [(1, "query", "1 query"), (2, "query", "2 queries"), (0, "batch", "0 batches"),
     (1, "KV head", "1 KV head"), (3, "key", "3 keys")],
)  # fmt: skip
def test_plural_says_one_in_the_singular(count: int, noun: str, text: str) -> None:
    assert plural(count, noun) == text


def test_lines_that_count_one_thing_say_it_in_the_singular(tmp_path: Path) -> None:
    store = tmp_path / "one.sqlite"
    with Store(store) as db:
        run, _ = db.open_run(key="one", model="tiny-llama", spec=get_spec("tiny-llama").to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid=GRID.to_dict(), device="cpu: test")  # fmt: skip
        db.record_points(run.id, [(Point(8, 1, 1, 0), Measurement(0.05))])
    exported = invoke("export", "--store", store, "--output", tmp_path / "one.csv")
    assert exported.exit_code == 0, exported.output
    assert "run 1: 1 measurement written" in exported.stdout
    model = tmp_path / "m.json"
    assert (
        invoke("fit", "--points", points_file(tmp_path / "p.csv"), "--output", model).exit_code == 0
    )
    priced = invoke(
        "estimate", "--profile", model, "--prompt-tokens", "200", "--output-tokens", "4"
    )
    assert priced.exit_code == 0, priced.output
    assert "\n1 query" in priced.stdout and "1 queries" not in priced.output
    assert "the query has a prompt longer than the profile's largest" in priced.stderr


# ---- 8: tradeoffs checks its scenario queries as estimate does ---------------------------------


def test_tradeoffs_checks_scenario_queries_as_estimate_does(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    with Store(store) as db:
        engine_run(db, "engine", "engine", 0.003)
    caps = tmp_path / "caps.csv"
    pd.DataFrame([("tiny-llama", "s1", 0.8)], columns=["model", "scenario", "accuracy"]).to_csv(
        caps, index=False
    )
    beyond, past = tmp_path / "beyond.csv", tmp_path / "past.csv"
    pd.DataFrame({"prompt_tokens": [100, 20], "output_tokens": [4, 2]}).to_csv(beyond, index=False)
    pd.DataFrame({"prompt_tokens": [10, 1000], "output_tokens": [2, 20]}).to_csv(past, index=False)
    args = ["tradeoffs", "--store", store, "--capabilities", caps, "--queries"]
    priced = invoke(*args, f"s1={beyond}")
    assert priced.exit_code == 0, priced.output
    assert said(priced.stderr, "warning") == [
        "scenario s1: 1 of 2 queries has a prompt longer than the profile's largest (64 tokens, "
        "up to 100 asked): its prefill is extrapolated along the last segment's slope, 0.0001 s "
        "per token from the PE of 64 tokens (0.0164 s); profile larger prompt sizes "
        "(--max-context, --prompt-sizes) to price them"
    ]
    assert_one_line(
        invoke(*args, f"s1={past}"),
        "scenario s1, query 2: prompt 1000 + output 20 tokens exceeds tiny-llama's context of "
        "512 tokens; the model cannot run it",
    )
