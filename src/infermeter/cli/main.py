"""The `infermeter` command: the app, its own options, and every command group registered.

Each group lives in its own module (profile, fit, api, energy, report, sweep) and adds its
verbs with `register(app)`; what they print with and how they fail is infermeter.cli.console.
"""

from __future__ import annotations

import sys

import typer

from infermeter.cli import api, energy, fit, profile, report, sweep
from infermeter.cli.console import console, user_errors

__all__ = ["app", "main", "user_errors"]

app = typer.Typer(
    help="What LLM inference really costs: profile a model on a stack, fit the runtime model of "
    "the idealized-runtime paper, and price any query in seconds, dollars and joules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    """--version: the package version and, in a checkout, its commit."""
    if value:
        from infermeter.store.provenance import version_line

        console.print(version_line(), markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Options of the command itself (before the verb)."""


for _group in (profile, fit, api, energy, report, sweep):
    _group.register(app)


def main() -> None:  # pragma: no cover - console entry point alias
    """Run the command line (sys.argv)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
