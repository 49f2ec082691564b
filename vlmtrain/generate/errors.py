"""The one error of generate/merge: a bad run directory, prompt or model, printed by the CLI as one line."""

from __future__ import annotations

from vlmtrain.errors import VlmtrainError


class GenerateError(VlmtrainError):
    """A run directory, prompt or model that ``generate`` / ``merge`` cannot use; the message says how to fix it."""
