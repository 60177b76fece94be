"""What every verb prints with and how it fails: consoles, literal lines, notes, the progress
bar, and `user_errors` (a UserError is one red line and exit code 2, Ctrl-C 130, SIGTERM 143).

It imports nothing else from infermeter.cli, so every command module can import it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from infermeter.errors import Terminated, UserError, sigterm_unwinds
from infermeter.model.cost_model import CostModel
from infermeter.model.runfit import fit_lines
from infermeter.report.tables import fit_table, frame_table

# Piped output keeps whole tables and lines: without a terminal rich would wrap at 80 columns,
# and at any fixed width cut the headers of a table wider than it (load's, with --output, is
# about 260). On a terminal, its width.
PIPED_WIDTH = 1000
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])


RESUMABLE = {"profile", "load", "energy", "sweep"}  # the verbs that measure into a store


def user_errors(func: F) -> F:
    """Turn a UserError into one red line and exit code 2, never a traceback; Ctrl-C and
    SIGTERM into one line and exit code 130 / 143 (once everything measured is stored, for
    the verbs in RESUMABLE, which say so and how to resume)."""
    resumable = func.__name__ in RESUMABLE

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_unwinds():
                return func(*args, **kwargs)
        except UserError as exc:
            say(f"{exc}", "error:", "bold red")  # printed literally: it may quote a server
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            err_console.print(
                f"[yellow]{how}:[/] everything measured so far is stored; rerun the same "
                "command to resume"
                if resumable
                else f"[yellow]{how}[/]"
            )
            raise typer.Exit(code=143 if isinstance(exc, Terminated) else 130) from None

    return wrapper  # type: ignore[return-value]


def say(text: str, label: str = "", style: str = "", err: bool = True) -> None:
    """Print `text` literally (never as rich markup: it may quote a server or a path), after
    an optional styled `label` such as "error:" or "note:"; on stderr unless `err` is False."""
    line = Text.assemble((label, style), " ", text) if label else Text(text)
    (err_console if err else console).print(line, highlight=False, soft_wrap=True)


def outcome_label(outcome: Any) -> tuple[str, str]:
    """The label and style `say` gives an API run's outcome line: none when complete."""
    return ("", "") if outcome.complete else ("incomplete:", "yellow")


def out(text: str) -> None:
    """Print a result line on stdout, literally."""
    console.print(text, markup=False, highlight=False)


def show(frame: Any, title: str | None = None, digits: int = 5) -> None:
    """Print a DataFrame as a table on stdout (infermeter.report.tables.frame_table)."""
    console.print(frame_table(frame, title, digits))


def print_notes(notes: list[str], kind: str = "note") -> None:
    """Notes and warnings on stderr, each one line, their text printed literally."""
    for note in notes:
        say(note, f"{kind}:", "yellow")


def print_fit(model: CostModel) -> None:
    """A fit's table, its summary and validation lines, its warning and notes."""
    from infermeter.experiments.profile import trust_warning

    console.print(fit_table(model))
    for kind, text in fit_lines(model, trust_warning(model)):
        if kind == "warning":
            print_notes([text], "warning")
        elif kind == "note":
            err_console.print(f"note: {text}", markup=False, highlight=False)
        else:
            out(text)


def progress(description: str) -> Any:
    """A progress bar on the console for an experiment's callbacks (infermeter.report.progress)."""
    from infermeter.report.progress import RunProgress

    return RunProgress(console, description)
