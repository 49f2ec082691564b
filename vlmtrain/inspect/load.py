"""Every raw row of a split, in storage order, kept in place whether it validates or not.

The same steps as ``vlmtrain.data.prepare.read_examples`` (``iter_rows`` -> ``example_from_raw`` per source),
but a bad row stays at its index with its ``DataError`` instead of being raised or dropped, so ``--rows N``
means the same row whatever is wrong with the others, and the summary can report every bad row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmtrain.data.cache import cache_root
from vlmtrain.data.errors import DataError
from vlmtrain.data.examples import Example, context_for, example_from_raw
from vlmtrain.data.prepare import split_sources
from vlmtrain.data.sources import iter_rows

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
    root = cache_root(cfg.data)
    rows: list[SourceRow] = []
    for index, source in enumerate(sources):
        ctx = context_for(source, index, cfg, root / "media")
        for raw in iter_rows(source, str(root / "hf")):
            try:
                rows.append(SourceRow(raw.where, example_from_raw(raw, source, ctx)))
            except DataError as err:
                if err.reason in SOURCE_PROBLEMS:
                    raise
                rows.append(SourceRow(raw.where, None, err))
    return sources, rows
