"""The report as a person meets it: built by the CLI from a real CPU store, opened in headless
Chromium (every figure drawn, no console errors, a screenshot), and the commands around it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from browser import check_page, find_chromium
from cli_runner import invoke
from infermeter.model.fitted import load_runs
from infermeter.report.build import ReportInputs, build_report
from infermeter.report.energy import power_cap_changes
from infermeter.report.runtime_figs import raw_denoised_idealized, trials_at_one_prompt
from infermeter.store.db import Store
from infermeter.store.energy import read_energy_configs
from report_store import build_store, energy_rows, write_inputs

FIGURES = {
    "fig3", "fig4", "fig5", "table3", "fig7", "fig8-0", "fig9", "fig10", "w2w-fig2", "w2w-fig3",
    "w2w-watts", "w2w-j_per_token", "w2w-j_per_response", "w2w-table3", "w2w-util",
    "power-timeline",
}  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list[str]]:
    folder = tmp_path_factory.mktemp("report")
    store = build_store(folder / "store.sqlite")
    capabilities, queries = write_inputs(folder)
    page = folder / "report.html"
    query_args = [arg for q in queries for arg in ("--queries", q)]
    result = invoke(
        "report", "--store", store, "--output", page, "--capabilities", capabilities,
        *query_args, "--objective", "acc/cost=accuracy / idealized_cost_usd",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "16 figure(s)" in result.stdout
    return {"store": store, "page": page, "capabilities": capabilities, "queries": query_args}


def test_every_figure_is_drawn_with_caption_and_numbers(built) -> None:
    html = Path(built["page"]).read_text()
    for figure in FIGURES:
        section = re.search(rf'<section id="{figure}">(.*?)</section>', html, re.S)
        assert section, figure
        body = section.group(1)
        assert 'src="data:image/png;base64,' in body, figure
        assert "numbers behind this" in body and "download CSV" in body, figure
        assert "No data yet" not in body, figure
    # Captions say what was measured, on what device, when.
    assert "on cpu: test machine, 20" in html
    assert "fits of runs" in html and "raw ≥ denoised for" in html


def test_page_is_self_contained(built) -> None:
    html = Path(built["page"]).read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert re.search(r"<script[^>]*\ssrc=", html) is None


@pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed (scripts/setup.sh installs it)"
)
def test_report_in_headless_chromium(built) -> None:
    page = Path(built["page"])
    shot = page.with_suffix(".png")
    check = check_page(page, screenshot=shot)
    assert check.title == "infermeter report"
    drawn = {f["section"] for f in check.figures}
    assert drawn == FIGURES, FIGURES ^ drawn
    assert not check.empty_figures, check.empty_figures
    for figure in check.figures:
        assert figure["width"] > 200 and figure["height"] > 100, figure
    assert check.console_errors == []
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {shot}")


def test_empty_store_names_the_commands(tmp_path: Path) -> None:
    store = tmp_path / "empty.sqlite"
    Store(store).close()
    report = build_report(ReportInputs([store]))
    assert all(s.plot is None for s in report.sections)
    html = report.html
    assert "<img" not in html
    for command in (
        "infermeter profile MODEL --backend engine",
        "--backend openai --base-url",
        "infermeter report --capabilities",
        "infermeter energy MODEL",
        "on a GPU with NVML",
    ):
        assert command in html, command


def test_fig7_numbers_come_from_the_api_and_reference_runs(built) -> None:
    runs = load_runs([Path(built["store"])], with_samples=False)
    api = next(r for r in runs if r.is_api)
    reference = next(r for r in runs if r.model == "tiny-llama" and r.record.backend == "engine")
    data = raw_denoised_idealized([(api, reference)])
    points = api.ok_points.groupby(["prompt_tokens", "output_tokens"]).runtime_s
    assert data.raw_s.tolist() == pytest.approx(points.mean().tolist())
    assert data.min_s.tolist() == pytest.approx(points.min().tolist())
    denoised = api.fit()
    assert denoised.overhead >= 0 and denoised.fit["denoise"] == "min"
    assert data.idealized_s.tolist() == pytest.approx(
        reference.fit().predict(data.prompt_tokens, data.output_tokens).tolist()
    )


def test_fig5_draws_every_trial_of_the_api_run(built) -> None:
    # A fresh-eyes check: `variance` named its output "Figs. 5 and 7" and the report had no
    # Fig. 5, nor said why.
    runs = load_runs([Path(built["store"])], with_samples=False)
    api = next(r for r in runs if r.is_api)
    data = trials_at_one_prompt(api)
    sizes = sorted(set(api.ok_points.prompt_tokens))
    nearest = min(sizes, key=lambda p: abs(p - 512))
    want = api.ok_points[api.ok_points.prompt_tokens == nearest]
    assert set(data.prompt_tokens) == {nearest} and len(data) == len(want)
    assert sorted(data.runtime_s) == pytest.approx(sorted(want.runtime_s))
    spread = want.groupby("output_tokens").runtime_s.agg(["std", "mean"])
    cv = data.groupby("output_tokens").cv.first()
    assert cv.tolist() == pytest.approx((spread["std"] / spread["mean"]).tolist(), nan_ok=True)
    html = Path(built["page"]).read_text()
    assert "at the profiled prompt size closest to 512" in html


def test_fig5_takes_the_size_nearest_512_at_the_smallest_batch() -> None:
    # A review: the store above profiles p = 1, 32, 64 at one batch size, where "nearest
    # 512" and "largest" agree; here they do not, and two batch sizes are stored.
    rows = [
        {"prompt_tokens": p, "output_tokens": o, "batch_size": b, "trial": t,
         "runtime_s": 0.01 * p + o + b + 0.1 * t}
        for p in (256, 600, 1024) for o in (1, 8) for b in (1, 2) for t in range(3)
    ]  # fmt: skip
    run = SimpleNamespace(ok_points=pd.DataFrame(rows), label="s.sqlite#7", model="m")
    data = trials_at_one_prompt(run)  # type: ignore[arg-type]
    assert set(data.prompt_tokens) == {600} and set(data.batch_size) == {1}
    assert len(data) == 2 * 3 and set(data.run) == {"s.sqlite#7"}


def test_energy_rows_round_trip_and_power_caps(built) -> None:
    frame = read_energy_configs(Path(built["store"]))
    assert set(frame.model) == {"tiny-opt"} and (frame.device == "cpu: test machine").all()
    assert len(frame) == len(energy_rows()) and (frame.status == "oom").sum() == 1
    changes = power_cap_changes(frame)
    assert set(changes.power_cap_w) == {175.0} and set(changes.reference_cap_w) == {250.0}
    assert (changes.time_pct > 0).all() and (changes.energy_pct < 0).all()
    # A store without the table (from before the energy tables) reads as empty, unchanged.
    bare = Path(built["store"]).with_name("bare.sqlite")
    Store(bare).close()
    with sqlite3.connect(bare) as db:
        db.execute("DROP TABLE energy_configs")
        db.execute("PRAGMA user_version = 3")  # before migration 4 made the energy tables
    db.close()
    before = bare.read_bytes()
    assert read_energy_configs(bare).empty
    assert bare.read_bytes() == before
    tables = {r[0] for r in sqlite3.connect(bare).execute("SELECT name FROM sqlite_master")}
    assert "energy_configs" not in tables


def test_cli_tradeoffs_writes_table_ranks_and_figures(built, tmp_path: Path) -> None:
    result = invoke(
        "tradeoffs", "--store", built["store"], "--capabilities", built["capabilities"],
        *built["queries"], "--objective", "speed=1 / idealized_runtime_s",
        "--output", tmp_path / "t.csv", "--ranks-output", tmp_path / "r.json",
        "--figures", tmp_path / "figs", "--format", "svg",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t.csv")
    assert set(table.model) == {"tiny-llama", "tiny-gpt2", "tiny-opt"}
    assert table.loc[table.model == "tiny-llama", "denoised_runtime_s"].notna().all()
    assert table.loc[table.model == "tiny-opt", "measured_energy_j"].notna().all()
    ranks = pd.read_json(tmp_path / "r.json")
    objectives = {"accuracy / runtime in s", "accuracy / log(1 + runtime in ms)", "speed"}
    assert set(ranks.objective) == objectives
    assert (tmp_path / "figs" / "fig9_pareto.svg").read_text().startswith("<?xml")


def test_cli_compare(built, tmp_path: Path) -> None:
    result = invoke(
        "compare", "--store", built["store"], "--model", "tiny-llama", "--output",
        tmp_path / "q.csv", "--figure", tmp_path / "fig8.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout
    per_query = pd.read_csv(tmp_path / "q.csv")
    assert per_query["stack"].nunique() == 2
    assert (tmp_path / "fig8.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["compare", "--model", "tiny-gpt2"], "no model with runs on two stacks"),
        (["compare", "99"], "run(s) 99 not found"),
        (["report", "--format", "gif"], "--format must be png or svg"),
        (["report", "--capabilities", "x.csv"], "need both --capabilities"),
        (["tradeoffs", "--capabilities", "missing.csv", "--queries", "a=b.jsonl"], "does not"),
    ],
)
def test_cli_bad_input_is_one_line(built, args: list[str], fragment: str) -> None:
    result = invoke(*args, "--store", built["store"])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert fragment in message and len(message.splitlines()) == 1, message


def test_cli_bad_objective_is_one_line(built) -> None:
    result = invoke(
        "tradeoffs", "--store", built["store"], "--capabilities", built["capabilities"],
        *built["queries"], "--objective", "x=accuracy.__class__",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "uses Attribute" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_run_stored_without_a_device_is_labelled_by_its_backend(tmp_path: Path) -> None:
    from infermeter.backends.base import Measurement, Point
    from infermeter.model.fitted import describe_runs, load_runs
    from infermeter.spec.catalog import get_spec
    from infermeter.store.db import Store

    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run, _ = store.open_run(
            key="k", model="tiny-llama", spec=get_spec("tiny-llama").to_dict(), stack={},
            backend="engine", backend_info={"device": "NVIDIA H200"}, grid={}, device="",
        )  # fmt: skip
        for o in (1, 8):
            store.record_point(run.id, Point(4, o), Measurement(runtime_s=0.01 * o))
    (stored,) = load_runs([path])
    assert stored.device == "NVIDIA H200"
    assert describe_runs([stored]).startswith("on NVIDIA H200, ")
    assert stored.stack_label == "engine on 1 × h200-sxm"  # the catalog part of that GPU


def test_energy_figure_draws_every_configuration_with_one_colour_per_batch() -> None:
    """Seven (model, dataset, length) panels, some with batch 128 alone: none is dropped, and
    a batch size keeps its colour from panel to panel."""
    from matplotlib.colors import to_hex

    from infermeter.report.energy import ENERGY_COLUMNS, fig_energy_by_batch_shards

    panels = [
        ("llama-7b", "gsm8k", 256, (64, 128, 256)), ("llama-7b", "gsm8k", 512, (64, 128)),
        ("llama-7b", "gsm8k", 1024, (128,)), ("llama-7b", "alpaca", 256, (64,)),
        ("llama-7b", "alpaca", 512, (64,)), ("llama-7b", "alpaca", 1024, (64,)),
        ("llama-13b", "gsm8k", 256, (64,)),
    ]  # fmt: skip
    blank = {**dict.fromkeys(ENERGY_COLUMNS, 1.0), "shards": 1, "power_cap_w": None}
    rows = [
        {**blank, "model": m, "dataset": d, "max_len": n, "batch": b, "watts": 600.0 + b}
        for m, d, n, batches in panels
        for b in batches
    ]
    plot = fig_energy_by_batch_shards(pd.DataFrame(rows), "watts")
    drawn = [ax for ax in plot.figure.axes if ax.get_visible() and ax.patches]
    assert len(drawn) == 7
    # llama-13b ran at length 256 only: its other two panels say so rather than vanish.
    said = [t.get_text() for ax in plot.figure.axes for t in ax.texts]
    assert sum("llama-13b" in t and "not run" in t for t in said) == 2
    titles = {ax.get_title() for ax in drawn}
    assert "llama-7b · gsm8k · max length 1024" in titles
    colours: dict[float, set[str]] = {}
    for ax in drawn:
        for bar in ax.patches:
            colours.setdefault(round(bar.get_height()), set()).add(to_hex(bar.get_facecolor()))
    assert all(len(c) == 1 for c in colours.values()), colours  # height = 600 + batch
    assert len({next(iter(c)) for c in colours.values()}) == 3
    legend = plot.figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["64", "128", "256"]


def test_fig9_says_which_scenarios_it_did_not_draw(built, tmp_path: Path) -> None:
    """Fig. 9 has a column per scenario up to five; a sixth and seventh are named in its note
    (their numbers stay in the table), never dropped without a word."""
    extra = [f"extra{i}" for i in range(4)]
    caps = pd.read_csv(built["capabilities"])
    caps = pd.concat(
        [caps, *[caps[caps.scenario == caps.scenario.iloc[0]].assign(scenario=s) for s in extra]]
    )
    capabilities = tmp_path / "accuracy.csv"
    caps.to_csv(capabilities, index=False)
    queries = [q for q in built["queries"] if q != "--queries"]
    first = queries[0].split("=", 1)[1]
    queries += [f"{s}={first}" for s in extra]
    report = build_report(
        ReportInputs(stores=[built["store"]], capabilities=capabilities, queries=queries)
    )
    fig9 = next(s for s in report.sections if s.id == "fig9")
    assert fig9.plot is not None
    assert "2 more scenario(s)" in fig9.note and "extra2, extra3" in fig9.note
    assert set(extra) <= set(fig9.table.scenario)
    # tiny-llama has an engine and an hf run: the note says which prices it, as tradeoffs does.
    assert "tiny-llama: priced with run " in fig9.note and "left out: " in fig9.note
    assert "priced as 1 × cpu (nominal: $" in fig9.note  # what its pricing assumed


def _engine_run(
    store: Store, key: str, stack: dict, device: str, g: float, info: dict | None = None
) -> None:
    from infermeter.backends.base import Measurement
    from infermeter.spec.catalog import get_spec
    from report_store import GRID

    run, _ = store.open_run(
        key=key, model="tiny-llama", spec=get_spec("tiny-llama").to_dict(), stack=stack,
        backend="engine", backend_info=info or {}, grid=GRID.to_dict(), device=device,
        commit_sha=None,
        version="test",
    )  # fmt: skip
    for point in GRID.points():
        runtime = 0.01 + 1e-4 * point.prompt_tokens + g * (point.output_tokens - 1)
        store.record_point(run.id, point, Measurement(runtime, output_tokens_actual=None))
    store.set_run_status(run.id, "complete")


def test_a_run_without_an_accelerator_is_priced_as_the_gpu_it_ran_on(tmp_path: Path) -> None:
    """A record whose stack names no accelerator (as profile_bench wrote before) is priced as
    the GPU in its device field, not as the A100 fallback; and one stack profiled twice is one
    stack in Fig. 8, not a comparison of a stack with itself."""
    from infermeter.model.sources import stack_profiles
    from infermeter.spec.hardware import Stack, get_accelerator

    path = tmp_path / "store.sqlite"
    h200 = Stack("engine", get_accelerator("h200-sxm"), dtype="bfloat16").to_dict()
    a100 = Stack("engine", get_accelerator("a100"), dtype="bfloat16").to_dict()
    with Store(path) as store:
        # profile_bench's records: the stack named the backend only; the dtype is in the info.
        old_stack, bf16 = {"backend": "engine"}, {"dtype": "bfloat16"}
        _engine_run(store, "old", old_stack, "NVIDIA H200", 0.004, bf16)
        _engine_run(store, "new", h200, "NVIDIA H200", 0.003)
    old, new = load_runs([path])
    pricing, note = old.pricing()
    assert note is None and pricing == new.pricing()[0]
    assert old.stack_label == new.stack_label == "engine on 1 × h200-sxm"
    assert stack_profiles([old, new]) == {}

    with Store(path) as store:
        _engine_run(store, "a100", a100, "NVIDIA A100-SXM4-80GB", 0.006)
    runs = load_runs([path])
    (profiles,) = stack_profiles(runs).values()
    assert len(profiles) == 2
    h200_profile = next(p for p in profiles if "h200" in p.label)
    assert h200_profile.runtime.per_output_token == pytest.approx(0.003, rel=1e-6)  # the newer


def test_fig8_keeps_apart_what_differs_in_dtype_or_machine(tmp_path: Path) -> None:
    """bf16 and fp32 on one GPU are two stacks; so are two different CPUs, which share the
    catalog's generic `cpu` entry."""
    from infermeter.model.sources import stack_profiles
    from infermeter.spec.hardware import Stack, get_accelerator

    path = tmp_path / "store.sqlite"
    h200 = get_accelerator("h200-sxm")
    cpu = Stack("engine", get_accelerator("cpu"), dtype="float32").to_dict()
    with Store(path) as store:
        _engine_run(store, "bf16", Stack("engine", h200, dtype="bfloat16").to_dict(),
                    "NVIDIA H200", 0.003)  # fmt: skip
        _engine_run(store, "fp32", Stack("engine", h200, dtype="float32").to_dict(),
                    "NVIDIA H200", 0.009)  # fmt: skip
    (profiles,) = stack_profiles(load_runs([path])).values()
    assert sorted(p.label.split(" (")[0] for p in profiles) == [
        "engine on 1 × h200-sxm bfloat16", "engine on 1 × h200-sxm float32"
    ]  # fmt: skip

    path = tmp_path / "cpus.sqlite"
    with Store(path) as store:
        _engine_run(store, "laptop", cpu, "cpu: Apple M3", 0.02)
        _engine_run(store, "server", cpu, "cpu: AMD EPYC 9654", 0.01)
    (profiles,) = stack_profiles(load_runs([path])).values()
    assert {p.device for p in profiles} == {"cpu: Apple M3", "cpu: AMD EPYC 9654"}


def test_the_provenance_table_gives_each_validated_runs_error(built) -> None:
    """Issue 15: the report gives the validation figures beside each run that has them."""
    html = Path(built["page"]).read_text()
    for column in ("runtime_validated_on", "runtime_mape_pct", "runtime_bias_pct"):
        assert column in html
    assert "how far to trust it" in html
