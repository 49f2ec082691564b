"""Every raw row of a split, in storage order, kept in place whether it validates or not.

The same validation as training (``vlmtrain.data.prepare.validated_rows``), but a bad row stays at its index
with its ``DataError`` instead of being raised or dropped, so ``--rows N``
means the same row whatever is wrong with the others, and the summary can report every bad row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmtrain.data.examples import Example
from vlmtrain.data.split import split_sources, validated_rows
from vlmtrain.errors import DataError

SOURCE_PROBLEMS = ("config", "empty source")  # a whole source is unusable: raised, as fit would


@dataclass(frozen=True)
class SourceRow:
    where: str
    example: Example | None
    error: DataError | None = None


def read_split(cfg: Any, split: str) -> tuple[list[Any], list[SourceRow]]:
    """(the split's sources, every row of them); raises DataError when the split has no sources."""
    sources = split_sources(cfg, split)
    if not sources:
        raise DataError(f"data.{split} has no sources; configure data.{split} or use --split train", "config")
    rows: list[SourceRow] = []
    for where, item in validated_rows(cfg, sources):
        if isinstance(item, DataError):
            if item.reason in SOURCE_PROBLEMS:
                raise item
            rows.append(SourceRow(where, None, item))
        else:
            rows.append(SourceRow(where, item))
    return sources, rows
