"""A healthy API server with a cost per output token, for tests that fit what they measure.

FaultServer answers at once, so a profile of it fits noise (a slope of microseconds that comes
out negative about half the time); this one takes `per_token_s` per output token asked, so the
fitted time per output token is that, well above any scheduler's jitter.
"""

from __future__ import annotations

import asyncio
import json

from api_servers import FaultServer


class TimedServer(FaultServer):
    """FaultServer whose generations take `per_token_s` × max_tokens before answering."""

    def __init__(self, per_token_s: float = 0.01, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.per_token_s = per_token_s

    async def _answer(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if not path.endswith("/models"):
            try:
                tokens = int(json.loads(body).get("max_tokens") or 16)
            except (ValueError, AttributeError):
                tokens = 0
            await asyncio.sleep(self.per_token_s * tokens)
        return await super()._answer(path, body, writer)
