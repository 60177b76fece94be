"""Prompts of exactly p tokens, as the served model counts them.

A prompt is *content* (text built here) plus whatever the server adds: a BOS token, a chat
template. So `reported = content tokens + offset` for a constant offset per endpoint and model.

- With the served model's tokenizer (a tokenizer.json, a SentencePiece .model, or `bytes`),
  content is random single-token words drawn from its vocabulary, re-encoded until the count is
  exact: n words, n tokens.
- Without one, the server's own counts teach which units it counts as one token each
  (`ExactPrompts.learn`): common English words first (one token with its leading space in the
  usual BPE and SentencePiece vocabularies), single letters next (byte-level tokenizers). Two
  nested draws show whether the family adds exactly one token a unit; then group tests (a
  group of k units is counted k only if every unit is one token) keep the units that are.
  Content of n such units is then n tokens for any tokenizer and template, prompt by prompt.

The calibration (offset, learned units, content size per p) is cached per server, model and
endpoint in a small JSON file (`default_cache_path()`), and every real request whose answer
reports usage is checked again (`check`); where it reports none the prompt is unverified.

Prompts differ between trials (seeded by point and trial), so no server-side prefix or
response cache can make a trial fast; `identical=True` asks for the same prompt every trial.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infermeter.errors import UserError
from infermeter.units import plural
from infermeter.workloads.tokenizer import Tokenizer

# Each is one LLaMA SentencePiece piece ("▁word") and one token in the larger BPE vocabularies.
COMMON_WORDS: tuple[str, ...] = tuple(
    """the of and to in is was for on as with by at from his her that this they are were have
    had not but all one two new first time year people work world life day way man made many used
    also would could should there their about other after before some when which where what who
    will more most such only over into than then them these very well back city state water house
    power music family school group river place game point film book team line light night land
    story field order money party health market church value voice paper heart class color level
    model space table change road science office plan rule town word north south east west great
    small young early large good high long right left home free open full part case list form area
    side door body name price ship king lord army war peace death blood fire earth stone wood iron
    gold silver sea sky star sun moon rain snow wind cloud tree flower grass leaf root seed fruit
    bird fish horse dog cat cow sheep food milk bread meat rice salt sugar wine tea coffee glass
    cup plate chair bed room wall floor roof window garden street bridge station train car bus
    plane boat map letter number bank shop store job trade law court police crime fight sport ball
    race club song dance art show picture image sound language idea reason fact truth mind thought
    memory dream hope fear love friend child mother father brother sister wife husband son
    daughter woman girl boy baby""".split()  # noqa: SIM905 - a paragraph reads better than 263 quoted words
)

MAX_PROBES_PER_SIZE = 6
# Unit families tried in turn when no tokenizer is given: (units, joiner).
FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "words": (COMMON_WORDS, " "),
    "letters": (tuple("abcdefghijklmnopqrstuvwxyz"), ""),
}
MIN_UNITS = 16
# Units tried, each repeated, for the offset when a mixed draw holds multi-token units.
ONE_UNIT_TRIES = 4
# Unframed probes, each with other first and last units, that must all count the same for a
# prompt to need no anchors (a template edge that merges with ~1 word in 5 shows in 24).
EDGE_PROBES = 24


def prompt_seed(
    seed: int,
    prompt_tokens: int,
    output_tokens: int,
    trial: int,
    identical: bool,
    concurrency: int = 1,
) -> int:
    """The seed of one trial's prompt: new per trial (and per concurrency level of a load
    sweep) unless prompts are to be identical."""
    parts: tuple[int, ...] = (
        (seed, prompt_tokens) if identical else (seed, prompt_tokens, output_tokens, trial)
    )
    if concurrency != 1:
        parts = (*parts, concurrency)
    return zlib.crc32(repr(parts).encode())


class PromptFactory:
    """Content text of n tokens: exact with a tokenizer, else n units of a learned family."""

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        units: tuple[str, ...] = COMMON_WORDS,
        joiner: str = " ",
        family: str = "words",
        anchors: tuple[str, ...] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.units, self.joiner, self.family = tuple(units), joiner, family
        # (head, tail): fixed units around the random ones, where a chat template's edges
        # tokenize with the first or last unit (no space between them): see ExactPrompts.
        self.anchors = tuple(anchors)
        self._ids: list[int] = []
        if tokenizer is not None:
            self._ids = tokenizer.word_ids()
            if len(self._ids) < 16:
                raise UserError(
                    f"tokenizer {tokenizer.name} has only "
                    f"{plural(len(self._ids), 'single-token word')}; pass the served model's "
                    "tokenizer.json or leave --tokenizer out"
                )
        self.name = tokenizer.name if tokenizer is not None else "server-counted"

    def with_units(
        self, family: str, units: tuple[str, ...], anchors: tuple[str, ...] = ()
    ) -> PromptFactory:
        """The same factory drawing from `units` of a family (see FAMILIES)."""
        return PromptFactory(self.tokenizer, units, FAMILIES[family][1], family, anchors)

    def join(self, units: list[str]) -> str:
        """The content of these units, between the anchors when there are any."""
        if self.anchors:
            units = [self.anchors[0], *units, self.anchors[1]]
        return self.joiner.join(units)

    def count(self, text: str) -> int | None:
        """Tokens in `text` by the local tokenizer (no special tokens); None without one."""
        return len(self.tokenizer.encode(text)) if self.tokenizer is not None else None

    def content(self, n: int, seed: int) -> str:
        """Text of exactly `n` tokens by the tokenizer (else `n` units of the family), drawn
        reproducibly from `seed`. Raises ValueError for n < 0, RuntimeError where 8
        retries do not hit n."""
        if n < 0:
            raise ValueError(f"content size must be >= 0, got {n}")
        rng = random.Random(seed)
        if self.tokenizer is None:
            return self.join(rng.choices(self.units, k=n))
        ids = rng.choices(self._ids, k=n)
        for _ in range(8):
            text = self.tokenizer.decode(ids)
            count = len(self.tokenizer.encode(text))
            if count == n:
                return text
            # Words merged or split at a boundary: trim or extend and look again.
            ids = (
                ids[: max(0, len(ids) - (count - n))]
                if count > n
                else ids + rng.choices(self._ids, k=n - count)
            )
        raise RuntimeError(f"{self.name}: could not build a text of exactly {n} tokens")


@dataclass
class PromptCalibration:
    """reported prompt tokens = content size + offset, with per-size corrections."""

    key: str
    offset: int | None = None
    sizes: dict[int, int] = field(default_factory=dict)  # target p -> content size
    probes: int = 0
    family: str | None = None  # the unit family learned from the server's counts
    units: list[str] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)  # fixed first and last unit, if needed


def default_cache_path() -> Path:
    """$INFERMETER_CACHE_DIR, else $XDG_CACHE_HOME/infermeter, else ~/.cache/infermeter."""
    root = os.environ.get("INFERMETER_CACHE_DIR")
    if root:
        return Path(root) / "prompt_calibration.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "infermeter" / "prompt_calibration.json"


class CalibrationCache:
    """A JSON file of calibrations keyed by endpoint, model and tokenizer."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, key: str) -> PromptCalibration:
        """The calibration stored under `key`; an empty one where there is none or the entry is
        malformed."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return PromptCalibration(key)
        try:
            sizes = {int(p): int(n) for p, n in dict(entry.get("sizes", {})).items()}
            offset = entry.get("offset")
            family = entry.get("family")
            units = [str(u) for u in entry.get("units") or []]
            anchors = [str(u) for u in entry.get("anchors") or []]
            if family is not None and (family not in FAMILIES or len(units) < MIN_UNITS):
                return PromptCalibration(key)
            if len(anchors) not in (0, 2):
                return PromptCalibration(key)
            return PromptCalibration(
                key, int(offset) if offset is not None else None, sizes, 0, family, units, anchors
            )
        except (TypeError, ValueError):
            return PromptCalibration(key)  # a damaged entry is measured again

    def save(self, calibration: PromptCalibration) -> None:
        """Store `calibration` under its key, replacing the file in one step; a file that
        cannot be written is left alone (it only costs probes next time)."""
        data = self._read()
        entry = asdict(calibration)
        entry.pop("key")
        entry.pop("probes")
        data[calibration.key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs probes next time


Probe = Callable[[str], int]  # send text as a prompt (max_tokens=1); return usage.prompt_tokens


class ExactPrompts:
    """Prompts that the server counts as exactly p tokens, calibrated from its usage reports.

    `size_option` names the option that sets prompt sizes in messages (--prompt-sizes for
    `profile`, --prompt-tokens for `load`).
    """

    def __init__(
        self,
        factory: PromptFactory,
        probe: Probe,
        key: str,
        cache: CalibrationCache | None = None,
        seed: int = 0,
        size_option: str = "--prompt-sizes",
    ) -> None:
        self.factory = factory
        self.probe = probe
        self.cache = cache
        self.seed = seed
        self.size_option = size_option
        self.note: str | None = None  # how exact the prompts can be, when not by construction
        self.calibration = cache.load(key) if cache is not None else PromptCalibration(key)
        cal = self.calibration
        if factory.tokenizer is None and cal.family is not None:
            self.factory = factory.with_units(cal.family, tuple(cal.units), tuple(cal.anchors))
        elif factory.tokenizer is None and cal.offset is not None:
            self.calibration = PromptCalibration(key)  # cached before units were learned

    def _ask(self, text: str) -> int:
        self.calibration.probes += 1
        return self.probe(text)

    def learn(self) -> PromptCalibration:
        """Learn, from the server's counts, units it counts as one token each, and its offset.

        For each family (FAMILIES) in turn, every probe framed by two fixed units (anchors):
        16 and then 48 units of one draw (the first 16 shared) must differ by exactly 32
        tokens; the 32 then fix the offset; group tests keep the family's units that are one
        token each. Then EDGE_PROBES unframed probes, each with other first and last
        units, show whether the frame is needed: where a
        template's edge tokenizes together with the first or last unit (llama-2's `[INST]`
        with no space), a prompt's count would depend on its words, so the anchors stay. When
        no family has at least MIN_UNITS such units, sizes are searched for with words and
        `note` says what the server counted.
        """
        cal = self.calibration
        observed, first = [], None
        for family, (pool, _) in FAMILIES.items():
            framed = self.factory.with_units(family, pool, (pool[0], pool[1]))
            draw = random.Random(self.seed).choices(pool, k=48)
            short, long = self._ask(framed.join(draw[:16])), self._ask(framed.join(draw))
            first = short if first is None else first
            if long - short == 32:
                offset = self._ask(framed.join(draw[16:])) - 32
            else:  # some drawn units are several tokens: one unit repeated fixes the offset
                offset = self._offset_by_one_unit(framed, pool)
                if offset is None:
                    observed.append(f"16 {family} counted {short}, 48 counted {long}")
                    continue
            units = self._singles(framed, list(dict.fromkeys(pool)), offset)
            if len(units) < MIN_UNITS:
                observed.append(f"only {len(units)} {family} count as one token")
                continue
            plain = framed.with_units(family, tuple(units))
            rng = random.Random(self.seed + 1)
            edges = rng.sample(units, len(units))[: 2 * EDGE_PROBES]  # distinct first, last
            counts = {
                self._ask(plain.join([edges[2 * i], *rng.choices(units, k=6), edges[2 * i + 1]]))
                - 8
                for i in range(len(edges) // 2)
            }
            if len(counts) == 1:  # the edges do not depend on the words: no anchors
                cal.offset, cal.anchors = counts.pop(), []
            else:
                cal.offset, cal.anchors = offset, [pool[0], pool[1]]
            cal.family, cal.units = family, units
            self.factory = plain.with_units(family, tuple(units), tuple(cal.anchors))
            return cal
        # No family counts one token a unit: sizes are searched for with words (below), and
        # a prompt of other words may count otherwise: the record says so.
        self.note = (
            "no text found that the server counts one token a unit ("
            + "; ".join(observed)
            + "): prompt sizes searched for with words; pass --tokenizer for exact prompts"
        )
        cal.offset, cal.family, cal.units = (first or 18) - 18, "words", list(COMMON_WORDS)
        cal.anchors = []
        self.factory = self.factory.with_units("words", COMMON_WORDS)
        return cal

    def _offset_by_one_unit(self, factory: PromptFactory, pool: tuple[str, ...]) -> int | None:
        """The offset from 16 and 48 copies of one unit that the server counts one token each
        (the first of ONE_UNIT_TRIES distinct units that is), or None. A server that counts
        long words as two tokens fails the mixed draw but not this."""
        for unit in list(dict.fromkeys(pool))[:ONE_UNIT_TRIES]:
            short = self._ask(factory.join([unit] * 16))
            if self._ask(factory.join([unit] * 48)) - short == 32:
                return short - 16
        return None

    def _singles(self, factory: PromptFactory, units: list[str], offset: int) -> list[str]:
        """The units counted as one token each: a group of k is counted k only if all are."""
        keep: list[str] = []
        groups = [units[i : i + 64] for i in range(0, len(units), 64)]
        while groups:
            group = groups.pop()
            if self._ask(factory.join(group)) - offset == len(group):
                keep += group
            elif len(group) > 1:
                half = len(group) // 2
                groups += [group[:half], group[half:]]
        return sorted(keep, key=units.index)

    def calibrate(self, sizes: Iterable[int]) -> PromptCalibration:
        """Find the content size for every p (cached ones are not asked again)."""
        cal = self.calibration
        if cal.offset is None:
            if self.factory.tokenizer is None:
                self.learn()
            else:
                text = self.factory.content(16, self.seed)
                counted = self.factory.count(text)
                cal.offset = self._ask(text) - (counted if counted is not None else 16)
        assert cal.offset is not None
        for p in sorted(set(sizes)):
            if p in cal.sizes:
                continue
            if p < cal.offset:
                raise UserError(
                    f"prompt size {p} is below the {cal.offset} tokens the server adds to every "
                    f"prompt (BOS, chat template: it counts {cal.offset + 16} for 16 tokens of "
                    f"text); use {self.size_option} of at least {cal.offset}, or the "
                    "completions endpoint"
                )
            n, last, tries = p - cal.offset, None, []
            for _ in range(MAX_PROBES_PER_SIZE):
                reported = self._ask(self.factory.content(n, self.seed + p))
                tries.append(f"{plural(n, 'unit')} counted {reported}")
                if reported == p:
                    break
                # Secant step: the server's tokens per content token, from the last two tries.
                slope = 1.0
                if last is not None and last[0] != n and last[1] != reported:
                    slope = min(4.0, max(0.25, (reported - last[1]) / (n - last[0])))
                last = (n, reported)
                n = max(0, n + round((p - reported) / slope))
            else:
                raise UserError(
                    f"could not build a prompt the server counts as {p} tokens (observed: "
                    f"{', '.join(tries)}); pass the served model's tokenizer with --tokenizer"
                )
            cal.sizes[p] = n
        if self.cache is not None:
            self.cache.save(cal)
        return cal

    def units(self, p: int) -> int:
        """How many content units make a prompt the server counts as `p` tokens, calibrating p
        first where it is new (requests to the server)."""
        if p not in self.calibration.sizes:
            self.calibrate([p])
        return self.calibration.sizes[p]

    def prompt(self, p: int, seed: int) -> str:
        """A prompt of p tokens (as calibrated), its words drawn with `seed`."""
        return self.factory.content(self.units(p), seed)

    def check(self, p: int, reported: int | None) -> str | None:
        """Compare the server's count with p; on a mismatch correct the calibration.

        Returns a note for the record when the count differs (None when it matches or the
        server reported nothing).
        """
        if reported is None or reported == p:
            return None
        cal = self.calibration
        cal.sizes[p] = max(0, cal.sizes.get(p, p) + p - reported)
        if self.cache is not None:
            self.cache.save(cal)
        return f"server counted {reported} prompt tokens, asked {p}"
