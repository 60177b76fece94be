"""A profile or an energy run resumes only on the engine path its points were measured
with: a run stored with FlexAttention prefill (the default on a GPU since 2026-12-05) is not
finished by the explicit path, or the other way round, under one record
(experiments/run.path_changed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("torch")

from infermeter.backends.base import Measurement, Point
from infermeter.backends.engine import EngineBackend
from infermeter.errors import UserError
from infermeter.experiments.energy import EnergySweep, run_energy
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.experiments.run import RESUME_FIX, path_changed, resume_settings
from infermeter.spec.catalog import get_spec
from infermeter.store.db import SCHEMA_VERSION, Store
from infermeter.store.energy import measured_anything
from infermeter.workloads.datasets import load_workload
from infermeter.workloads.tokenizer import tokenizer_for
from paths import REPO, SHARED_DATA


def test_a_run_measured_with_another_prefill_attention_is_not_resumed(tmp_path: Path) -> None:
    spec = get_spec("tiny-gemma2")  # soft-capped layers: on a CPU the explicit path runs
    grid = ProfileGrid((1, 9), (1, 3), (1,), 1)
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run = run_profile(store, spec, {}, EngineBackend(device="cpu"), {}, grid, validate=0)
        assert run.backend_info["prefill_attention"] == "explicit"
        # as if measured on a GPU with flex and cut short: its record says flex, a point is left
        store.update_run_backend(run.id, {**run.backend_info, "prefill_attention": "flex"})
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM points WHERE run_id = ? AND prompt_tokens = 9", (run.id,))
        db.execute("UPDATE runs SET status = 'partial' WHERE id = ?", (run.id,))
    with Store(path) as store:
        kept = len(store.points(run.id))
        with pytest.raises(UserError) as refused:
            run_profile(store, spec, {}, EngineBackend(device="cpu"), {}, grid, validate=0)
        after = store.get_run(run.id)
        assert len(store.points(run.id)) == kept and after.status == "partial"
        assert after.backend_info["prefill_attention"] == "flex"  # its record not overwritten
    says = str(refused.value)
    assert "measured with prefill_attention flex, this process would use explicit" in says
    assert "INFERMETER_PREFILL_ATTENTION=flex" in says and "\n" not in says


def test_an_energy_run_measured_with_another_prefill_attention_is_not_resumed(
    tmp_path: Path,
) -> None:
    spec = get_spec("tiny-gemma2")
    gsm8k = SHARED_DATA / "gsm8k_test.jsonl"
    workload = load_workload(str(gsm8k) if gsm8k.is_file() else "gsm8k-test", 4, seed=1)
    tok, _ = tokenizer_for(spec)
    path = tmp_path / "s.sqlite"

    def energy(sweep: EnergySweep) -> object:
        with Store(path) as store:
            return run_energy(
                store, spec, workload, tok, sweep, lambda tp: EngineBackend(device="cpu"),
                device="cpu (test)", idle_s=0.0,
            )  # fmt: skip

    first = energy(EnergySweep((2,), (8,)))
    with Store(path) as store:
        run = store.get_run(first.run.id)  # type: ignore[attr-defined]
        assert run.backend_info["prefill_attention"] == "explicit"
        # as if measured on a GPU with flex: its record says so
        store.update_run_backend(run.id, {**run.backend_info, "prefill_attention": "flex"})
    with pytest.raises(UserError, match="measured with prefill_attention flex, this process"):
        energy(EnergySweep((2, 4), (8,)))  # one more batch size: the same run, resumed
    with Store(path) as store:
        refused = store.get_run(run.id)
        assert refused.backend_info["prefill_attention"] == "flex"
        assert measured_anything(store, run.id)
        # refused before measuring: not cut short, so not "interrupted"
        assert refused.status == run.status == "complete"
    # cut inside its first configuration: its batches stored, its row not yet
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM energy_configs WHERE run_id = ?", (run.id,))
    with Store(path) as store:
        assert measured_anything(store, run.id)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET status = 'partial' WHERE id = ?", (run.id,))
    with pytest.raises(UserError, match="measured with prefill_attention flex, this process"):
        energy(EnergySweep((2,), (8,)))
    with Store(path) as store:
        assert store.get_run(run.id).status == "partial"  # the status it had
    # nothing measured left in it (its rows deleted): no path to keep
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM energy_batches WHERE run_id = ?", (run.id,))
        db.execute("DELETE FROM energy_responses WHERE run_id = ?", (run.id,))
    with Store(path) as store:
        assert not measured_anything(store, run.id)
    energy(EnergySweep((2,), (8,)))  # resumed, measured afresh on this process's path
    with Store(path) as store:
        assert store.get_run(run.id).backend_info["prefill_attention"] == "explicit"


@pytest.mark.parametrize(
    ("stored", "now", "refused"),
    [
        ({"prefill_attention": "explicit"}, {"prefill_attention": "explicit"}, False),
        ({"prefill_attention": "explicit"}, {"prefill_attention": "flex"}, True),
        ({}, {"prefill_attention": "flex"}, True),  # stored before the choice: explicit then
        ({}, {"prefill_attention": "explicit"}, False),
        ({"prefill_attention": None}, {"prefill_attention": None}, False),  # no capped layer
        ({}, {}, False),  # an API backend: no engine choices
        ({"one_token_gemv": "looped"}, {"one_token_gemv": "rows"}, True),
        ({"one_token_gemv": "rows"}, {"one_token_gemv": "rows"}, False),
        ({}, {"one_token_gemv": "rows"}, False),  # stored before it was recorded: not known
        ({"one_token_gemv": None}, {"one_token_gemv": None}, False),  # no Triton decode
        ({"one_token_gemv": None}, {"one_token_gemv": "looped"}, False),  # no value to name
        ({"moe_batch1_gemv": "sum"}, {"moe_batch1_gemv": "pairs"}, False),  # timed at start
    ],
)
def test_what_counts_as_a_changed_path(stored: dict, now: dict, refused: bool) -> None:
    assert (path_changed(stored, now) is not None) == refused


def test_a_refusal_names_the_switch_value_that_resumes_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The value named is one the switch takes and makes the engine record again
    (engine/select.one_token_rows)."""
    from infermeter.engine.select import one_token_rows

    for stored, now in (("rows", "looped"), ("looped", "rows")):
        refused = path_changed({"one_token_gemv": stored}, {"one_token_gemv": now})
        assert refused is not None and f"set INFERMETER_ONE_TOKEN_GEMV={stored} " in refused
        monkeypatch.setenv("INFERMETER_ONE_TOKEN_GEMV", stored)
        assert ("rows" if one_token_rows() else "looped") == stored


def test_a_carried_store_says_the_settings_to_resume_it_with(tmp_path: Path) -> None:
    """What scripts/device/h200_owed.sh reads from a store it carries to a GPU: real stores
    measured there (explicit, flex), one stored before the choice was recorded, and none
    where nothing was measured."""
    stores = REPO / "docs" / "benchmarks" / "stores"
    explicit = stores / "gpt-oss-20b_eager_92d784a" / "gpt-oss-20b.sqlite"
    flex = stores / "prefill_attention_9c5052d" / "gemma-2-9b_auto.sqlite"
    assert resume_settings(explicit) == [
        "INFERMETER_PREFILL_ATTENTION=explicit",
        "INFERMETER_ONE_TOKEN_GEMV=looped",
    ]
    assert resume_settings(flex) == [
        "INFERMETER_PREFILL_ATTENTION=flex",
        "INFERMETER_ONE_TOKEN_GEMV=looped",
    ]
    assert resume_settings(tmp_path / "absent.sqlite") == []
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run = run_profile(
            store, get_spec("tiny-llama"), {}, EngineBackend(device="cpu"), {},
            ProfileGrid((1, 9), (1, 3), (1,), 1),
        )  # fmt: skip
        info = {k: v for k, v in run.backend_info.items() if k != "prefill_attention"}
        store.update_run_backend(run.id, info)  # as recorded before the choice was
    assert resume_settings(path) == ["INFERMETER_PREFILL_ATTENTION=explicit"]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM points WHERE run_id = ?", (run.id,))
    assert resume_settings(path) == []


def test_a_store_with_no_runs_needs_no_settings(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store(path).close()  # a store as a first call makes it, before its profile records a run
    assert resume_settings(path) == []


def _newer_store(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda path: path.write_text("not a store\n"), "is not an infermeter store"),
        (_newer_store, f"newer than this infermeter's {SCHEMA_VERSION}"),
    ],
    ids=["a text file", "a newer store"],
)
def test_what_is_not_a_store_to_resume_is_refused_in_a_line_for_the_script(
    tmp_path: Path, make: Callable[[Path], object], says: str
) -> None:
    """h200_owed.sh hands over the store that PRIOR carried: the refusal names it and a fix
    the script's user can take, not the CLI's --store."""
    path = tmp_path / "gpt-oss-20b.sqlite"
    make(path)
    with pytest.raises(UserError) as refused:
        resume_settings(path)
    message = str(refused.value)
    assert str(path) in message and says in message and "\n" not in message
    assert message.endswith(RESUME_FIX) and "--store" not in message


def test_reading_a_wal_store_leaves_no_wal_or_shm_files(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as store:  # a store as a profile makes it: WAL mode
        run, _ = store.open_run(
            key="k", model="tiny-llama", spec={}, stack={}, backend="engine",
            backend_info={"prefill_attention": "flex"}, grid={}, device="cpu",
        )  # fmt: skip
        store.record_point(run.id, Point(9, 3, 1, 0), Measurement(0.5))
    assert path.read_bytes()[18:20] == b"\x02\x02"  # the file's header: WAL mode
    assert resume_settings(path) == ["INFERMETER_PREFILL_ATTENTION=flex"]
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
