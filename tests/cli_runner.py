"""Invoke the CLI in-process as a user would type it, and check a user error's one line."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: Any):
    """`infermeter ARGS...`, every argument as the string a shell would pass."""
    from infermeter.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(result, *fragments: str) -> str:
    """A user error: exit status 2, one line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output, message
    for fragment in fragments:
        assert fragment in message, message
    return message
