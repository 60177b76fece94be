"""Options several commands share, declared once, and the parsing of comma-separated lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

from infermeter.backends.config import OpenAIConfig, help_of
from infermeter.errors import UserError
from infermeter.model.sources import DEFAULT_STORE

N = TypeVar("N", int, float)


def parse_list(
    text: str | None,
    label: str,
    kind: Callable[[str], N] = int,
    example: str = "1,64,128",
    what: str = "whole numbers",
    empty: str | None = None,
) -> tuple[N, ...] | None:
    """Comma-separated values of `kind` (None stays None); UserError if malformed or empty."""
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"{label} must be comma-separated {what}, e.g. {example}") from None
    if not values:
        raise UserError(f"{label} is empty; give {empty or 'comma-separated ' + what}")
    return values


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


def _api(name: str, default: Any, flag: str, **more: Any) -> Any:
    return typer.Option(default, flag, help=help_of(OpenAIConfig, name), **more)


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
# OpenAI-compatible APIs (--backend openai, `load`): help from backends.config.OpenAIConfig.
BaseUrlOption = _api("base_url", None, "--base-url")
ApiModelOption = _api("api_model", None, "--api-model")
ApiKeyOption = _api("api_key", None, "--api-key", show_default=False)
EndpointOption = _api("endpoint", "completions", "--endpoint")
StreamOption = _api("stream", True, "--stream/--no-stream")
TokenizerOption = _api("tokenizer", None, "--tokenizer")
IdenticalPromptsOption = _api("identical_prompts", False, "--identical-prompts")
RequestTimeoutOption = _api("timeout_s", 600.0, "--timeout")
RetriesOption = _api("retries", 3, "--retries")
StallTimeoutOption = _api("stall_timeout_s", 120.0, "--stall-timeout")


def api_config(
    base_url: str | None, api_model: str | None, api_key: str | None, endpoint: str,
    stream: bool, tokenizer: str | None, identical_prompts: bool, timeout: float, retries: int,
    stall_timeout: float, size_option: str = "--prompt-sizes",
) -> OpenAIConfig:  # fmt: skip
    """The OpenAIConfig of the API options above."""
    return OpenAIConfig(
        base_url, api_model, api_key, endpoint, stream, tokenizer, identical_prompts,
        timeout_s=timeout, retries=retries, stall_timeout_s=stall_timeout, size_option=size_option,
    )  # fmt: skip
