"""The life of a resumable run, written once for every experiment.

    resume = resumable_run(store, identity, missing)   # claim the key, find the run, what is left
    if resume.existing and not resume.todo: ...         # (an experiment may stop here)
    with resume.open(on_start=..., cleanup=...) as active:
        ... measure resume.todo into active.run.id ...
        active.status = "partial"                       # (if it stopped early on purpose)

A run is identified by its key (infermeter.store.db.run_key over what the experiment
measures), so the same command finds the same run and measures only what is missing. The run is
claimed for this process first (Store.claim: a second identical command stops with one line
naming the owner), then recorded or reopened (Store.open_run, status "running"); when the body
ends its status is set: "complete" (or what the body chose) if it returned, "interrupted" if it
raised (Ctrl-C, SIGTERM, a crash). A new run that failed before anything was measured can be
deleted instead (`discard_if_empty`), so that a failed start-up leaves no empty run behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, TypeVar

from infermeter.errors import ResumeRefused, UserError
from infermeter.store.db import RunIdentity, RunRecord, Store

__all__ = [
    "ActiveRun",
    "PathChoice",
    "Resumable",
    "RunIdentity",
    "path_changed",
    "resumable_run",
    "resume_settings",
]

T = TypeVar("T")


@dataclass(frozen=True)
class PathChoice:
    """An engine choice a run's points depend on that its key does not hold (an environment
    switch or a default, not the experiment's options): a resume must make the same choice,
    or the run would mix two engines under one record. Its recorded values are the switch's
    own; a recorded None means it did not apply (no soft-capped layer, no Triton decode).

    `switch` sets it; `before` is its value in runs stored before it was recorded (None: not
    known, so such runs are never refused over it)."""

    switch: str
    before: str | None = None


PATH_CHOICES = {
    "prefill_attention": PathChoice("INFERMETER_PREFILL_ATTENTION", before="explicit"),
    # the dense layers' one-token GEMVs: whole rows were 4-16 % faster a step (README). Not
    # the experts' batch-1 path (moe_batch1_gemv): auto times it at each start, so the same
    # command would be refused whenever the timing went the other way.
    "one_token_gemv": PathChoice("INFERMETER_ONE_TOKEN_GEMV"),
}
# How resume_settings' errors end: its callers are scripts handed a store carried from an
# earlier device call (PRIOR in scripts/device/h200_owed.sh), not a verb with a --store option.
RESUME_FIX = "carry the a/ folder of an earlier device call as PRIOR, or leave PRIOR unset"


def _stored_choice(stored: dict, key: str) -> object:
    """The engine choice `key` of PATH_CHOICES in a run's backend record `stored`, or its
    `before` value where the run was stored before it was recorded; None where it did not
    apply or is not known (never compared, never named)."""
    return stored.get(key, PATH_CHOICES[key].before)


def path_changed(stored: dict, now: dict) -> str | None:
    """Why a run stored with backend record `stored` cannot be resumed by a backend that
    describes itself as `now` (Backend.describe()), in one line with the fix, or None (see
    PATH_CHOICES). Backends without these choices (APIs, HF) describe none: never refused."""
    for key, choice in PATH_CHOICES.items():
        if now.get(key) is None:
            continue
        new, old = now[key], _stored_choice(stored, key)
        # a stored choice that did not apply (no Triton decode then) has no switch value to
        # name: what differed is another choice
        if old is not None and old != new:
            why = now.get(f"{key}_note")
            return (
                f"this run's points were measured with {key} {old}, this process would use "
                f"{new}" + (f" ({why})" if why else "") + f": set {choice.switch}={old} to "
                "resume it where that path runs, or measure into another --store"
            )
    return None


def resume_settings(store_path: str | Path) -> list[str]:
    """The environment settings (NAME=value) under which the latest run of the store at
    `store_path` resumes on the engine path its points were measured with (PATH_CHOICES; for
    a run stored before a choice was recorded, its `before` value where known, else nothing
    for that choice); none where the store, a
    run or its points are absent (the latest run only: an energy run stores no points). For
    scripts that carry a store to another machine (scripts/device/h200_owed.sh). Read-only:
    the store is not changed, and no -wal or -shm file is left beside it (Store's read_only;
    those a killed writer left stay). Raises UserError, naming the store and ending with
    RESUME_FIX, for a file that is not an infermeter store or a store newer than this
    infermeter."""
    path = Path(store_path)
    if not path.is_file():
        return []
    with Store(path, read_only=True, fix=RESUME_FIX) as store:
        try:
            run_id = store.latest_run_id()
        except UserError:  # no runs
            return []
        if not store.holds("points", run_id):
            return []
        stored = store.get_run(run_id).backend_info
    settings = ((choice, _stored_choice(stored, key)) for key, choice in PATH_CHOICES.items())
    return [f"{choice.switch}={value}" for choice, value in settings if value is not None]


@dataclass
class ActiveRun:
    """The run being measured: its record as opened, whether it was resumed, and the status
    it gets if the body returns ("complete" unless the body says otherwise, e.g. "partial")."""

    run: RunRecord
    resumed: bool
    status: str = "complete"


@dataclass
class Resumable(Generic[T]):
    """A claimed run key: the run already stored under it (None if new) and what is left to
    measure (`todo`, whatever shape the experiment's `missing` gives)."""

    store: Store
    identity: RunIdentity
    existing: RunRecord | None
    todo: T

    def mark_complete(self) -> RunRecord:
        """For a stored run with nothing left: set it "complete" and return its record.
        Raises ValueError if there is no stored run."""
        if self.existing is None:
            raise ValueError("no stored run to mark complete")
        self.store.set_run_status(self.existing.id, "complete")
        return self.store.get_run(self.existing.id)

    @contextmanager
    def open(
        self,
        *,
        before: Callable[[], None] | None = None,
        on_start: Callable[[RunRecord], None] | None = None,
        cleanup: Callable[[], None] | None = None,
        discard_if_empty: bool = False,
    ) -> Iterator[ActiveRun]:
        """Record or reopen the run and yield it; set its status when the body ends.

        `before` runs first, before anything is recorded (start-up checks: a failure leaves no
        run behind); `on_start` gets the opened run; `cleanup` runs when the body ends, however
        it ends, before the status is set (close backends, stop meters). With
        `discard_if_empty`, a new run that ends incomplete with nothing measured is deleted
        (Store.discard_if_empty) rather than left "interrupted"; a resumed run whose body
        refuses it (ResumeRefused, before measuring) keeps the status it had. Errors of the
        body propagate.
        """
        if before is not None:
            before()
        run, resumed = self.store.open_run(**asdict(self.identity))
        active = ActiveRun(run, resumed)
        if on_start is not None:
            on_start(run)
        finished = refused = False
        try:
            yield active
            finished = True
        except ResumeRefused:
            refused = True
            raise
        finally:
            status = active.status if finished else "interrupted"
            if refused and self.existing is not None:
                status = self.existing.status
            try:
                if cleanup is not None:
                    cleanup()
            finally:
                keep = resumed or status == "complete" or not discard_if_empty
                if keep or not self.store.discard_if_empty(run.id):
                    self.store.set_run_status(run.id, status)


def resumable_run(
    store: Store, identity: RunIdentity, missing: Callable[[RunRecord | None], T]
) -> Resumable[T]:
    """Claim `identity.key` for this process (UserError naming the owner if another process
    measures it), find the run stored under it, and compute what is left with
    `missing(existing run or None)`. Nothing is recorded yet: see Resumable.open."""
    store.claim(identity.key)
    existing = store.find_run(identity.key)
    return Resumable(store, identity, existing, missing(existing))
