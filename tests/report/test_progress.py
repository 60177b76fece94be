"""The progress of long work where the console is no terminal (a log, CI, a pipe)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from infermeter.backends.base import Point
from infermeter.report.progress import PLAIN_EVERY_S, RunProgress


def console_into(terminal: bool) -> tuple[Console, io.StringIO]:
    """A console writing into a buffer, as a terminal or as a log."""
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=200), out


def test_a_log_gets_a_plain_line_every_interval_and_at_the_end() -> None:
    now = [0.0]
    console, out = console_into(terminal=False)
    step_s = PLAIN_EVERY_S / 3.5  # 4 items per line
    with RunProgress(console, "profiling x", clock=lambda: now[0]) as bar:
        bar.profile_start(SimpleNamespace(id=1), 0, 10)
        for i in range(10):
            now[0] += step_s
            status = "ok" if i != 7 else "oom [bold]x[/]"
            runtime_s = 0.5 if i != 7 else float("nan")  # a failed point has no runtime
            measured = SimpleNamespace(runtime_s=runtime_s, status=status)
            bar.on_point(Point(100 + i, 8, 1, 0), measured)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("profiling x:")]
    assert [line.split(",")[0] for line in lines] == [
        "profiling x: 4/10 done",
        "profiling x: 8/10 done",
        "profiling x: 10/10 done",
    ]
    assert "last p=107 o=8 oom [bold]x[/]," in lines[1]  # server text printed literally
    assert lines[-1].endswith(f"{10 * step_s:.0f} s")


def test_a_terminal_gets_the_bar_alone() -> None:
    console, out = console_into(terminal=True)
    with RunProgress(console, "profiling y", clock=lambda: 1e9) as bar:
        bar.profile_start(SimpleNamespace(id=1), 0, 2)
        for i in range(2):
            bar.on_point(Point(1, 2 + i, 1, 0), SimpleNamespace(runtime_s=0.1, status="ok"))
    assert "profiling y: " not in out.getvalue()


def test_points_measured_again_grow_the_total_so_the_log_ends_once_at_n_of_n() -> None:
    console, out = console_into(terminal=False)
    with RunProgress(console, "profiling z", clock=lambda: 0.0) as bar:
        bar.profile_start(SimpleNamespace(id=1), 0, 4)
        for i in range(4):
            if i == 2:
                bar.profile_more(3)  # a second look at one point, 3 trials
            bar.on_point(Point(1, 2 + i, 1, 0), SimpleNamespace(runtime_s=0.1, status="ok"))
        for trial in range(3, 6):
            bar.on_point(Point(1, 4, 1, trial), SimpleNamespace(runtime_s=0.1, status="ok"))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("profiling z:")]
    assert [line.split(",")[0] for line in lines] == ["profiling z: 7/7 done"]


def test_a_step_with_failed_requests_says_so_after_a_comma() -> None:
    # A user review: "2 requests 2 not ok" read as one number run into another.
    console, out = console_into(terminal=False)
    failed = SimpleNamespace(runtime_s=float("nan"), status="error")
    with RunProgress(console, "bursts", clock=lambda: 0.0) as bar:
        bar.load_start(SimpleNamespace(id=1), 0, 1)
        bar.on_step("o=2 c=2: 2 requests", [failed, failed])
    assert "bursts: 1/1 done, last o=2 c=2: 2 requests, 2 not ok, 0 s" in out.getvalue()
