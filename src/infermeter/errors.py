"""User-facing errors: one line that names the problem and the fix, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad model name, bad file, bad grid).

    The CLI prints `str(error)` as one line and exits with code 2; nothing stored is touched.
    """

    exit_code = 2
