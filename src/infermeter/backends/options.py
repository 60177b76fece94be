"""Backends built from a command's options: the config made, the backend built, and the
options stored with its run (never an API key).
"""

from __future__ import annotations

from typing import Any

from infermeter.backends.config import (
    EngineConfig,
    Generates,
    HFConfig,
    OpenAIConfig,
    build_backend,
)
from infermeter.errors import UserError

CREDENTIALS_WARNING = (
    "--base-url holds credentials (user:key@): they are sent as Basic auth and left out of "
    "everything stored and printed; prefer --api-key or OPENAI_API_KEY"
)


def openai_backend(config: OpenAIConfig) -> tuple[dict[str, Any], Any, str | None]:
    """(the options stored with the run, the backend, a warning or None) for `config`.

    The key goes to the backend only; a URL with user:key@ in it gets CREDENTIALS_WARNING.
    Raises UserError when no URL is given (nor OPENAI_BASE_URL set).
    """
    runner = build_backend(config)
    options = {
        "base_url": runner.config.base_url,
        "api_model": runner.api_model,
        "endpoint": config.endpoint,
        "stream": config.stream,
        "tokenizer": config.tokenizer,
        "identical_prompts": config.identical_prompts,
    }
    return options, runner, CREDENTIALS_WARNING if runner.url_had_credentials else None


def generating_backend(config: EngineConfig | HFConfig, name: str) -> Any:
    """The backend of `config`, refused with a UserError unless it runs dataset prompts."""
    made = build_backend(config)
    if not isinstance(made, Generates):
        raise UserError(
            f"the {name} backend cannot run dataset prompts yet (it has no generate()); "
            "use --backend engine"
        )
    return made
