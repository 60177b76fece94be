"""A command's arguments and options from its request dataclass (infermeter.requests)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import click
import typer

NOT_TYPER = ("help", "flag", "argument", "nested")


def _parameters(cls: type[Any], only_flagged: bool = False) -> list[inspect.Parameter]:
    """The typer parameters of the fields of dataclass `cls` (a nested dataclass's flagged
    fields in its place), in field order."""
    hints = typing.get_type_hints(cls)
    params: list[inspect.Parameter] = []
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, hints[f.name]
        if "nested" in meta:
            params += _parameters(kind, only_flagged=True)
            continue
        if only_flagged and "flag" not in meta:
            continue
        default = f.default if f.default is not dataclasses.MISSING else ...
        flags = [meta["flag"]] if "flag" in meta else []
        more = {k: v for k, v in meta.items() if k not in NOT_TYPER}
        make = typer.Argument if meta.get("argument") else typer.Option
        param = make(default, *flags, help=meta["help"], **more)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=param,
                                        annotation=kind))  # fmt: skip
    return params


def _build(cls: type[Any], values: dict[str, Any]) -> Any:
    """An instance of `cls` from the command's values (nested dataclasses built in turn)."""
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if "nested" in f.metadata:
            nested = hints[f.name]
            names = [g.name for g in dataclasses.fields(nested) if "flag" in g.metadata]
            kwargs[f.name] = nested(**{n: values[n] for n in names}, **f.metadata["nested"])
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def request(cls: type[Any]) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """Give a command the fields of request class `cls` as its arguments and options; it is
    called with one instance of `cls`."""

    def decorate(func: Callable[[Any], Any]) -> Callable[..., Any]:
        params = _parameters(cls)

        @functools.wraps(func)
        def wrapper(**values: Any) -> Any:
            return func(_build(cls, values))

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def options_of(group: click.Group, command: str) -> set[str]:
    """The long options (without dashes) of `command` in the click `group` its parser built."""
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {
        name.lstrip("-")
        for param in params
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]
        if name.startswith("--")
    }
