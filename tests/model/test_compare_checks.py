"""`compare` checks its queries as `estimate` does (a query past the model's context is refused
in one line, queries beyond the profile are priced with estimate's warnings), and its default
grid, like report's Fig. 8, stays within every stack's profile and the model's context.

The stores hold runs recorded from synthetic points (a line in p and o per stack), as
`profile` stores them, so nothing here depends on how fast this machine is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cli_runner import assert_one_line, invoke
from infermeter.backends.base import Measurement
from infermeter.experiments.profile import ProfileGrid
from infermeter.report.build import ReportInputs, build_report
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from report_store import cpu_stack

Runtime = Callable[[int, int], float]


def engine_time(p: int, o: int) -> float:
    return 0.001 + 2e-5 * p + 5e-4 * (o - 1)


def hf_time(p: int, o: int) -> float:
    return 2 * engine_time(p, o)


def record_run(
    store: Store,
    backend: str,
    prompts: Sequence[int],
    outputs: Sequence[int],
    runtime: Runtime,
    model: str = "tiny-gpt2",
) -> int:
    """A complete CPU run of `model` on `backend` whose every trial took runtime(p, o)."""
    grid = ProfileGrid(tuple(prompts), tuple(outputs), (1,), 2)
    run, _ = store.open_run(
        key=f"{model}-{backend}-{prompts}-{outputs}", model=model,
        spec=get_spec(model).to_dict(), stack=cpu_stack(backend), backend=backend,
        backend_info={"device": "cpu", "dtype": "float32"}, grid=grid.to_dict(),
        device="cpu: test machine", commit_sha=None, version="test",
    )  # fmt: skip
    for point in grid.points():
        seconds = runtime(point.prompt_tokens, point.output_tokens)
        store.record_point(run.id, point, Measurement(seconds, output_tokens_actual=None))
    store.set_run_status(run.id, "complete")
    return run.id


def two_stacks(
    path: Path,
    engine: tuple[Sequence[int], Sequence[int]] = ((1, 16), (1, 4, 8)),
    hf: tuple[Sequence[int], Sequence[int]] = ((1, 16), (1, 4, 8)),
) -> Path:
    """tiny-gpt2 (context 512) on the engine (run 1) and on hf (run 2), each profiled at
    `(prompt sizes, output lengths)`."""
    with Store(path) as store:
        record_run(store, "engine", *engine, engine_time)
        record_run(store, "hf", *hf, hf_time)
    return path


def queries(path: Path, *sizes: tuple[int, int]) -> Path:
    pd.DataFrame(sizes, columns=["prompt_tokens", "output_tokens"]).to_csv(path, index=False)
    return path


def said(stderr: str, kind: str) -> list[str]:
    """The `kind:` lines of a command's stderr, without the label."""
    return [line.split(": ", 1)[1] for line in stderr.splitlines() if line.startswith(f"{kind}:")]


def test_a_query_past_the_context_is_refused_as_estimate_refuses_it(tmp_path: Path) -> None:
    """The user's report: 1,000 prompt + 20 output tokens on tiny-gpt2 (context 512) was priced
    on both stacks with a verdict and no word."""
    store = two_stacks(tmp_path / "s.sqlite")
    big = queries(tmp_path / "big.csv", (8, 4), (1000, 20))
    result = invoke("compare", "--store", store, "1", "2", "--queries", big,
                    "--output", tmp_path / "big_cmp.csv")  # fmt: skip
    line = assert_one_line(
        result, "query 2: prompt 1000 + output 20 tokens", "exceeds tiny-gpt2's context of 512"
    )
    assert not (tmp_path / "big_cmp.csv").exists()
    # The very line `estimate` gives for the same query on the same run's fit.
    assert invoke("fit", "--store", store, "1", "--output", tmp_path / "m.json").exit_code == 0
    estimated = invoke("estimate", "--profile", tmp_path / "m.json", "--queries", big)
    assert assert_one_line(estimated) == line


def test_queries_beyond_the_profile_get_estimates_warnings(tmp_path: Path) -> None:
    store = two_stacks(tmp_path / "s.sqlite")
    beyond = queries(tmp_path / "q.csv", (100, 50), (8, 4))
    result = invoke("compare", "--store", store, "1", "2", "--queries", beyond)
    assert result.exit_code == 0, result.output
    warnings = said(result.stderr, "warning")
    assert any("longer than the profile's largest (16 tokens, up to 100" in w for w in warnings)
    longest = "more output tokens than the profile's longest (8 tokens, up to 50"
    assert any(longest in w for w in warnings)
    assert invoke("fit", "--store", store, "1", "--output", tmp_path / "m.json").exit_code == 0
    estimated = invoke("estimate", "--profile", tmp_path / "m.json", "--queries", beyond)
    assert estimated.exit_code == 0, estimated.output
    # The output warning holds for both stacks alike: said once, as estimate says it; the
    # prompt warning gives each stack's own slope, after its label (run 1 is the one fitted).
    engine = "engine on 1 × cpu (s.sqlite#1): "
    as_estimate = [w.removeprefix(engine) for w in warnings if not w.startswith("hf on ")]
    assert as_estimate == said(estimated.stderr, "warning")
    assert any(w.startswith("hf on 1 × cpu (s.sqlite#2): ") for w in warnings), warnings
    within = invoke("compare", "--store", store, "1", "2", "--queries",
                    queries(tmp_path / "in.csv", (16, 8), (1, 1)))  # fmt: skip
    assert within.exit_code == 0 and "warning" not in within.stderr, within.output


def test_a_warning_names_the_stacks_it_holds_for(tmp_path: Path) -> None:
    """Profiled to different prompt sizes, only the stack that stopped short extrapolates."""
    store = two_stacks(tmp_path / "s.sqlite", hf=((1, 64), (1, 4, 8)))
    result = invoke("compare", "--store", store, "1", "2", "--queries",
                    queries(tmp_path / "q.csv", (40, 8)))  # fmt: skip
    assert result.exit_code == 0, result.output
    (warning,) = said(result.stderr, "warning")
    assert warning.startswith("engine on 1 × cpu (s.sqlite#1): the query has a prompt "
                              "longer than the profile's largest (16 tokens"), warning  # fmt: skip


def test_the_default_grid_stays_within_every_profile(tmp_path: Path) -> None:
    """It priced o = 32 and 128 on profiles that stopped at o = 8, with no warning."""
    store = two_stacks(tmp_path / "s.sqlite", hf=((1, 16, 64), (1, 4, 8, 16)))
    result = invoke("compare", "--store", store, "1", "2", "--output", tmp_path / "q.csv")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, result.stderr
    per_query = pd.read_csv(tmp_path / "q.csv")
    assert set(per_query.output_tokens) == {1, 8}  # the engine run's longest is 8
    assert set(per_query.prompt_tokens) == {1, 16}  # the engine run's largest is 16


def test_the_default_grid_stays_within_the_context(tmp_path: Path) -> None:
    """A profile that reaches the context: no default query asks for more than it holds."""
    profile = ((1, 448), (1, 32, 128))
    store = two_stacks(tmp_path / "s.sqlite", engine=profile, hf=profile)
    result = invoke("compare", "--store", store, "1", "2", "--output", tmp_path / "q.csv")
    assert result.exit_code == 0, result.output
    per_query = pd.read_csv(tmp_path / "q.csv")
    assert (per_query.prompt_tokens + per_query.output_tokens <= 512).all()
    asked = set(zip(per_query.prompt_tokens, per_query.output_tokens, strict=True))
    assert {(448, 32), (1, 128)} <= asked and (448, 128) not in asked


def test_report_fig8_prices_within_the_profile_and_says_so(tmp_path: Path) -> None:
    store = two_stacks(tmp_path / "s.sqlite")
    report = build_report(ReportInputs(stores=[store]))
    (fig8,) = [s for s in report.sections if s.id.startswith("fig8")]
    assert fig8.plot is not None, fig8.missing
    assert "(the profiled prompt sizes × 1, 8 output tokens" in fig8.caption, fig8.caption
    assert "warning" not in (fig8.note or ""), fig8.note


def test_report_fig8_warns_where_the_stacks_share_no_prompt_range(tmp_path: Path) -> None:
    store = two_stacks(tmp_path / "s.sqlite", engine=((32, 64), (1, 4, 8)))
    report = build_report(ReportInputs(stores=[store]))
    (fig8,) = [s for s in report.sections if s.id.startswith("fig8")]
    assert fig8.plot is not None, fig8.missing
    assert "within every stack's profile" not in fig8.caption, fig8.caption
    warning = (
        "warning: hf on 1 × cpu (s.sqlite#2): all 4 queries have prompts longer than the "
        "profile's largest (16 tokens, up to 64 asked)"
    )
    assert warning in fig8.note, fig8.note
