"""infermeter: what LLM inference really costs."""

from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec

__all__ = ["ModelSpec", "UserError"]
__version__ = "0.1.0"
