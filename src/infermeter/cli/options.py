"""Options several commands share, declared once, and the parsing of comma-separated lists."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from infermeter.backends.config import OpenAIConfig, help_of
from infermeter.errors import UserError
from infermeter.model.sources import DEFAULT_STORE
from infermeter.plans import parse_list

N = TypeVar("N", int, float)
F = TypeVar("F", bound=Callable[..., Any])


def parse_sizes(text: str | None, label: str) -> tuple[int, ...] | None:
    """Comma-separated whole numbers (token counts, batch sizes), or a UserError."""
    return parse_list(text, label)


def parse_rates(text: str | None, label: str) -> tuple[float, ...] | None:
    """Comma-separated positive numbers (requests per second), or a UserError."""
    if text is not None and text.replace(" ", "").replace(",", ""):
        rates = parse_list(text, label, float, "0.5,1,2", "numbers")
        if rates and min(rates) > 0:
            return rates
    if text is not None:
        raise UserError(f"{label} must be positive numbers, e.g. 0.5,1,2")
    return None


StoreOption = typer.Option(DEFAULT_STORE, "--store", help="SQLite store of runs and points.")
AcceptPoorFitOption = typer.Option(
    False, help="Keep a fit that prices its own points worse than their mean (R² < 0)."
)
HardwareConfigOption = typer.Option(
    None, "--hardware-config", help="TOML/JSON file overriding or adding accelerators."
)
SetOption = typer.Option(
    None, "--set",
    help="Override any accelerator value, e.g. --set memory_bandwidth=3.0e12 (repeatable).",
)  # fmt: skip
RunArgument = typer.Argument(None, help="Run id (default: the latest).")
DeviceOption = typer.Option("auto", help="auto, cuda, cuda:N or cpu.")
DtypeOption = typer.Option(None, help="float32, bfloat16 or float16.")
PriceOption = typer.Option(None, help="Override $/accelerator-hour.")
PowerOption = typer.Option(None, help="Override rated W/accelerator.")
IntervalOption = typer.Option(0.1, help="Power/utilisation sampling period (s).")
# OpenAI-compatible APIs (--backend openai, `load`): (field of OpenAIConfig, flag, type, more);
# defaults and help come from backends.config.OpenAIConfig.
API_OPTIONS: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("base_url", "--base-url", str | None, {}),
    ("api_model", "--api-model", str | None, {}),
    ("api_key", "--api-key", str | None, {"show_default": False}),
    ("endpoint", "--endpoint", str, {}),
    ("stream", "--stream/--no-stream", bool, {}),
    ("tokenizer", "--tokenizer", str | None, {}),
    ("identical_prompts", "--identical-prompts", bool, {}),
    ("timeout_s", "--timeout", float, {}),
    ("retries", "--retries", int, {}),
    ("stall_timeout_s", "--stall-timeout", float, {}),
]
API = OpenAIConfig()  # placeholder of the parameter `api_options` replaces


def api_options(size_option: str = "--prompt-sizes") -> Callable[[F], F]:
    """Give a command the API options in place of its parameter `api`, which it then receives
    as one OpenAIConfig (`size_option`: the option its messages name for sizes)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        fields = {f.name: f for f in dataclasses.fields(OpenAIConfig)}
        added = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                default=typer.Option(fields[name].default, flag, help=help_of(OpenAIConfig, name),
                                     **more),
            )
            for name, flag, kind, more in API_OPTIONS
        ]  # fmt: skip
        params = []
        for param in signature.parameters.values():
            params += added if param.name == "api" else [param.replace(kind=added[0].kind)]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name, *_ in API_OPTIONS}
            return func(*args, api=OpenAIConfig(**values, size_option=size_option), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{k: v for k, v in func.__annotations__.items() if k != "api"},
            **{name: kind for name, _, kind, _ in API_OPTIONS},
        }
        return wrapper  # type: ignore[return-value]

    return decorate
