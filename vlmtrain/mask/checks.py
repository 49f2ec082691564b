"""Masks never fail silently: rows with nothing to train and assistant turns whose stop is untrained."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmtrain.errors import Reason, VlmtrainError
from vlmtrain.render.row import MaskedRow


class EmptyMaskError(VlmtrainError):
    """A row whose loss mask trains zero tokens (a zero-gradient row is always a bug)."""

    def __init__(self, message: str, reason: Reason = Reason.EMPTY_MASK) -> None:
        super().__init__(message, reason)


@dataclass
class MaskIssues:
    """Per-row findings; summed over a dataset for start-up warnings and ``inspect-mask --summary``."""

    untrained_stop_turns: list[int] = field(default_factory=list)
    turns_without_stop: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.untrained_stop_turns or self.turns_without_stop)


def find_issues(row: MaskedRow, mask: np.ndarray) -> MaskIssues:
    """Assistant turns whose stop token exists but is not trained, and turns that have no stop token at all."""
    issues = MaskIssues()
    for k, role in enumerate(row.roles):
        if role != "assistant":
            continue
        stops = np.flatnonzero(row.ends_turn == k)
        if stops.size == 0:
            issues.turns_without_stop.append(k)
        elif not mask[stops].any():
            issues.untrained_stop_turns.append(k)
    return issues


def require_trained_tokens(mask: np.ndarray, where: str) -> None:
    if not mask.any():
        raise EmptyMaskError(
            f"{where}: the loss mask trains zero tokens (no assistant turn, or every assistant token masked). "
            "Fix the row, or set mask.on_empty: drop to drop such rows (the count is reported)."
        )


__all__ = ["EmptyMaskError", "MaskIssues", "find_issues", "require_trained_tokens"]
