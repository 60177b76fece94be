"""A rich progress bar driven by an experiment's callbacks (profile, load, energy): each method
is the callback of that experiment, so a caller passes `bar.on_point` and the like."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from infermeter.units import plural

# Where the console is no terminal (a log file, CI, a pipe), the bar is not drawn until the
# end: a plain line says how far the work is at most this often instead.
PLAIN_EVERY_S = 15.0


def progress_bar(console: Console) -> Progress:
    """The bar every long verb shows: description, bar, done/total, last item, time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeRemainingColumn(),
        console=console,
    )


# said where a resumed run has nothing left to measure: its stored results are shown again
AFRESH = "; nothing left to measure: the stored results follow (another --store measures afresh)"


class RunProgress:
    """A progress bar with one task, `description`, open while used as a context manager."""

    def __init__(
        self, console: Console, description: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bar = progress_bar(console)
        self.task = self.bar.add_task(description, total=None, last="")
        self._left: dict[str, int] = {}  # energy: batches each configuration had left
        self._ran: dict[str, int] = {}
        self._plain = not console.is_terminal
        self._clock = clock
        self._start = self._said = clock()
        self._description = description

    def _advance(self, last: str) -> None:
        """One item done, `last` naming it (rich markup); on a console that is no terminal, a
        plain line every PLAIN_EVERY_S seconds and at the last item."""
        self.bar.update(self.task, advance=1, last=last)
        if not self._plain:
            return
        task = self.bar.tasks[0]
        now = self._clock()
        finished = task.total is not None and task.completed >= task.total
        if now - self._said >= PLAIN_EVERY_S or finished:
            self._said = now
            of = f"/{task.total:.0f}" if task.total is not None else ""
            line = f"{self._description}: {task.completed:.0f}{of} done, last "
            line += f"{Text.from_markup(last).plain}, {now - self._start:.0f} s"
            self.bar.console.print(Text(line))

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.bar.console.print(text)

    # ---- profile (experiments.profile.run_profile) ------------------------------------------
    def profile_start(self, run: Any, done: int, total: int) -> None:
        """Measurements done and in all; a resumed run says so."""
        self.bar.update(self.task, total=total, completed=done)
        if done:
            self._say(
                f"resuming run {run.id}: {done}/{plural(total, 'measurement')} already stored "
                f"(grid and validation){AFRESH if done >= total else ''}"
            )

    def profile_more(self, trials: int) -> None:
        """The profile added `trials` to its total (a second look at suspect points)."""
        task = self.bar.tasks[0]
        if task.total is not None:
            self.bar.update(self.task, total=task.total + trials)

    def on_point(self, point: Any, m: Any) -> None:
        """One point measured: its sizes, runtime (s) and any status but ok."""
        last = f"p={point.prompt_tokens} o={point.output_tokens}"
        if m.runtime_s == m.runtime_s:  # a failed request has no runtime (NaN)
            last += f" {m.runtime_s:.3f}s"
        self._advance(last + (f" {escape(m.status)}" if m.status != "ok" else ""))

    # ---- load (plans.run_load) ----------------------------------------------------------------
    def load_start(self, run: Any, done: int, total: int) -> None:
        """Steps done and in all; a resumed run says so."""
        self.bar.update(self.task, total=total, completed=done)
        if done:
            again = AFRESH if done >= total else ""
            steps = plural(total, "step")
            self._say(f"resuming run {run.id}: {done}/{steps} already stored{again}")

    def on_step(self, label: str, ms: list[Any], total: int | None = None, warmup: int = 0) -> None:
        """A burst or level done (`label`, its measured requests; a timed level's `warmup`
        requests sent before them said apart), or a timed load's levels (`total`)."""
        if total is not None:
            self.bar.update(self.task, total=total)
            return
        bad = sum(m.status != "ok" for m in ms)
        warm = f" (warm-up: {plural(warmup, 'request')})" if warmup else ""
        self._advance(label + warm + (f", [red]{bad} not ok[/]" if bad else ""))

    # ---- energy (experiments.energy.run_energy) -----------------------------------------------
    def energy_start(self, db: Any, prompts: int) -> Any:
        """The on_start callback of an energy run of `prompts` prompts into store `db`."""
        from infermeter.experiments.energy import batches_left, batches_of

        def on_start(run: Any, todo: list[Any], total: int) -> None:
            left = self._left
            left.update({c.key: batches_left(db, run.id, c, prompts) for c in todo})
            self.bar.update(self.task, total=sum(left.values()))
            if len(todo) < total:
                stored = total - len(todo)
                self._say(
                    f"resuming run {run.id}: {stored}/{plural(total, 'configuration')} stored"
                )
            for c in todo:
                if 0 < left[c.key] < (whole := batches_of(prompts, c.batch)):
                    self._say(
                        f"resuming {c.key}: {whole - left[c.key]}/{plural(whole, 'batch')} stored"
                    )

        return on_start

    def on_batch(self, result: Any) -> None:
        """A batch done: its configuration and throughput (tokens/s)."""
        c = result.config
        self._ran[c.key] = self._ran.get(c.key, 0) + 1
        self._advance(
            f"b={c.batch} len={c.max_len} shards={c.shards}"
            + (f" cap={c.power_cap_w:g}W" if c.power_cap_w else "")
            + f" {result.output_tokens / result.runtime_s:.0f} tok/s"
        )

    def on_config(self, config: Any, row: dict[str, Any]) -> None:
        """A configuration done; one that failed says why and leaves the bar's total."""
        if row["status"] != "ok":
            self._say(f"[yellow]{config.key} {row['status']}:[/] {row['detail']}")
            # The batches it would have run never will: keep the bar's total honest.
            never = self._left.get(config.key, 0) - self._ran.get(config.key, 0)
            self.bar.update(self.task, total=(self.bar.tasks[0].total or 0) - never)
