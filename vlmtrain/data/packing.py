"""The packing plan: whole cached rows grouped into sequences of at most ``data.max_length`` tokens.

A batching plan over cached rows, never a change to them (so ``data.packing`` is not part of the cache key):
rows are never split or truncated, only grouped, by best-fit-decreasing on the cached ``length`` column.
Ties between rows of equal length are broken by a permutation seeded with (seed, epoch), so each epoch groups
rows differently yet reproducibly; the pack *sizes* depend only on the multiset of lengths, so every epoch
has the same number of packs (the Trainer's sampler and step count stay fixed).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmtrain.errors import DataError, Reason


@dataclass(frozen=True)
class PackStats:
    """How well a plan fills its sequences: ``non_pad_share`` = tokens / (packs x max_length)."""

    rows: int
    packs: int
    tokens: int
    max_length: int

    @property
    def non_pad_share(self) -> float:
        return self.tokens / max(1, self.packs * self.max_length)

    @property
    def rows_per_pack(self) -> float:
        return self.rows / max(1, self.packs)

    def line(self) -> str:
        return (f"packing: {self.rows} rows into {self.packs} packs of <= {self.max_length} tokens; "
                f"non-pad share {100 * self.non_pad_share:.1f}%, {self.rows_per_pack:.2f} rows per pack")


def plan_packs(lengths: Sequence[int], max_length: int, *, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Row indices grouped into packs by best-fit-decreasing: each row, longest first, goes into the open pack
    it fills most tightly (a new one when none has room). Rows inside a pack keep their dataset order."""
    sizes = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(sizes > max_length)
    if too_long.size:
        raise DataError(f"row {int(too_long[0])} has {int(sizes[too_long[0]])} tokens, more than "
                        f"data.max_length={max_length}; rows are never split: rebuild the cache "
                        "(`vlmtrain preprocess`) with this max_length", Reason.TOO_LONG)
    rank = np.random.default_rng([int(seed), int(epoch)]).permutation(len(sizes))
    order = np.lexsort((rank, -sizes))  # longest first, ties in a seeded order
    free: list[tuple[int, int]] = []  # (room left, pack index), sorted: the tightest fit is a bisect away
    packs: list[list[int]] = []
    for index in order.tolist():
        need = int(sizes[index])
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, pack = free.pop(at)
        else:
            room, pack = max_length, len(packs)
            packs.append([])
        packs[pack].append(index)
        if room - need > 0:
            bisect.insort(free, (room - need, pack))
    return [sorted(p) for p in packs]


def pack_stats(plan: Sequence[Sequence[int]], lengths: Sequence[int], max_length: int) -> PackStats:
    sizes = np.asarray(lengths, dtype=np.int64)
    return PackStats(rows=sum(len(p) for p in plan), packs=len(plan),
                     tokens=int(sum(int(sizes[list(p)].sum()) for p in plan if p)), max_length=max_length)


__all__ = ["PackStats", "pack_stats", "plan_packs"]
