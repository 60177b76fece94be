"""How a run ended: its measurements (a point's trials, a load's requests) taken, flagged and
failed by cause, and what is missing.

Every API command ends with `RunOutcome.line()`, e.g. "4/12 measurements failed: http_5xx
'model overloaded' (4); rerun the same command to retry them", and exits non-zero
(`INCOMPLETE_EXIT`) when any point of the grid has no usable measurement. The counts are of
measurements (rows of the store's points table), never of distinct (p, o) points.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from infermeter.backends.api.client import REPEATING
from infermeter.store.extra import parse_extra
from infermeter.units import plural

INCOMPLETE_EXIT = 3  # some point of the grid failed or was never measured
# Causes a rerun meets again as it is, for rows stored before each failure said so itself
# (extra "repeats", api/client.py RequestRecord.repeats): the client's own list.
REPEATS = REPEATING
# What to change before a rerun, for a repeating cause with a remedy of its own (any other
# needs the request or server fixed).
REMEDIES = {"too_large": "raise --max-body-mib"}


@dataclass
class RunOutcome:
    """Counts of one run's measurements against the `expected` number of its grid (its points
    times their trials, or a load's planned requests)."""

    expected: int
    ok: int = 0
    flagged: int = 0
    failed: int = 0
    causes: Counter[str] = field(default_factory=Counter)  # "cause 'first message'" -> n
    flags: Counter[str] = field(default_factory=Counter)  # flag detail -> n
    cause_names: Counter[str] = field(default_factory=Counter)  # cause -> n
    repeating: set[str] = field(default_factory=set)  # causes a rerun meets again
    measured_again: int = 0  # a profile's ok second-look trials, beyond its grid's (not above)
    again_failed: int = 0  # its second-look trials that failed or were flagged

    @property
    def missing(self) -> int:
        """Measurements of the grid with no row at all (never taken)."""
        return max(0, self.expected - self.ok - self.flagged - self.failed)

    @property
    def complete(self) -> bool:
        """True when no request failed and none is missing."""
        return self.failed == 0 and self.missing == 0

    def line(self) -> str:
        """One line for the end of a run: counts by cause and what to do."""
        parts = []
        if self.failed:
            causes = ", ".join(f"{c} ({n})" for c, n in self.causes.most_common(3))
            parts.append(f"{self.failed}/{plural(self.expected, 'measurement')} failed: {causes}")
        if self.missing:
            parts.append(f"{self.missing}/{plural(self.expected, 'measurement')} not taken")
        if self.flagged:
            flags = ", ".join(f"{d} ({n})" for d, n in self.flags.most_common(2))
            parts.append(f"{self.flagged} flagged and left out of fits: {flags}")
        if not parts:
            every = "its" if self.expected == 1 else "all"
            line = f"{every} {plural(self.expected, 'measurement')} taken"
            if self.measured_again:  # `show` counts them among the ok measurements below
                line += f", and {self.measured_again} more of points measured again"
            if self.again_failed:
                line += (
                    f" ({self.again_failed} more failed or flagged, left out of fits)"
                    if self.measured_again
                    else f", and {self.again_failed} of points measured again failed or were "
                    "flagged (left out of fits)"
                )
            return line
        if not self.complete:
            parts[-1] += self._advice()
        return "; ".join(parts)

    def _advice(self) -> str:
        repeating = sorted(c for c in self.cause_names if c in self.repeating)
        if not repeating:
            return "; rerun the same command to retry them"
        these = " and ".join(repeating)
        if len(repeating) == len(self.cause_names) and not self.missing:
            return f"; {these} will fail again as sent: {_remedy(repeating)}"
        if any(c in REMEDIES for c in repeating):
            return (
                f"; rerun the same command to retry them ({these} will fail again as sent: "
                f"{_remedy(repeating)})"
            )
        return f"; rerun the same command to retry them ({these} will fail again as sent)"


def _remedy(repeating: list[str]) -> str:
    """What to do before rerunning `repeating` causes: a cause's own remedy (REMEDIES), else
    fix the request or server."""
    own = [REMEDIES[c] for c in repeating if c in REMEDIES]
    others = [c for c in repeating if c not in REMEDIES]
    if not others:
        return " and ".join(own) + " first"
    if not own:
        return "fix the request or server first"
    named = " and ".join(f"{REMEDIES[c]} for {c}" for c in repeating if c in REMEDIES)
    return f"fix the request or server first, and {named}"


def run_outcome(points: pd.DataFrame, expected: int) -> RunOutcome:
    """The outcome of a run's stored points (Store.points) against its grid's size."""
    outcome = RunOutcome(expected)
    if points.empty:
        return outcome
    for row in points.itertuples(index=False):
        if row.status == "ok":
            outcome.ok += 1
        elif row.status == "flagged":
            outcome.flagged += 1
            outcome.flags[_short(row.detail)] += 1
        else:
            outcome.failed += 1
            extra = parse_extra(getattr(row, "extra_json", None))
            cause = extra.get("cause") or "error"
            message = (row.detail or "").removeprefix(f"{cause}: ").split(" (after ")[0]
            outcome.causes[f"{cause} {_short(message)!r}"] += 1
            outcome.cause_names[cause] += 1
            if extra.get("repeats", cause in REPEATS):
                outcome.repeating.add(cause)
    return outcome


def _short(text: object, width: int = 80) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"
