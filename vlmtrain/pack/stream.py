"""``data.packing`` with ``data.streaming``: the rendered stream grouped into packs, window by window.

A stream has no length table to plan over, so each dataloader worker packs a bounded *window* of its own
rendered rows: it collects ``data.pack_buffer`` kept rows (fewer at the end of an epoch: a window never spans
two epochs), groups them by the same best-fit-decreasing plan as the cached path (``plan_packs``: whole rows,
never split, at most ``data.max_length`` tokens per pack), emits the packs in a seeded order, then starts the
next window right after the window's last row.

Why windows: a window is a pure function of where it starts, so the stream state needs only, per worker, the
``(epoch, position)`` the current window starts at and how many of its packs the trainer took. A resumed worker
skips the raw rows before that position without rendering them (as the unpacked stream does), re-renders at most
one window, re-plans it identically and drops the packs already trained on: no row repeated, none skipped.
Rows dropped under the row policies travel with the next kept row (``vlmtrain.data.stream``), so they are
counted with the pack that row lands in, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vlmtrain.data.packing import plan_packs
from vlmtrain.data.stream import ERROR_KEY, STREAM_KEY, StreamDataset

PACK_KEY = "_pack"  # (worker, window epoch, window start position, packs of the window emitted so far) on each row


class PackedStream(torch.utils.data.IterableDataset):
    """Packs (lists of rendered rows) from ``stream``, one window of ``size`` kept rows at a time.

    ``skip`` maps a worker id to the number of packs of its first window (the one starting at ``stream.start``)
    that were already consumed before the checkpoint.
    """

    def __init__(self, stream: StreamDataset, size: int, max_length: int, skip: dict[int, int] | None = None) -> None:
        self.stream, self.size, self.max_length = stream, int(size), int(max_length)
        self.skip = dict(skip or {})

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        worker, slot, _ = self.stream.slot()
        start = tuple(self.stream.start.get(worker, (0, 0)))
        skip = self.skip.get(worker, 0)
        window: list[dict[str, Any]] = []
        for item in self.stream:
            if ERROR_KEY in item:  # a fatal row: the collator turns it into the one-line error
                yield [item]
                return
            _, epoch, position = item[STREAM_KEY]
            if window and epoch != window[-1][STREAM_KEY][1]:  # never pack across an epoch boundary
                yield from self._emit(window, start, skip, worker, slot)
                start, skip, window = tuple(window[-1][STREAM_KEY][1:]), 0, []
            window.append(item)
            if len(window) >= self.size:
                yield from self._emit(window, start, skip, worker, slot)
                start, skip, window = (epoch, position), 0, []

    def _emit(self, window: list[dict[str, Any]], start: tuple[int, ...], skip: int, worker: int,
              slot: int) -> Iterator[list[dict[str, Any]]]:
        """The window's packs in a seeded order (so a batch is not all long rows), minus the first ``skip``."""
        epoch, position = int(start[0]), int(start[1])
        plan = plan_packs([len(r["input_ids"]) for r in window], self.max_length, seed=self.stream.seed,
                          epoch=epoch)
        order = np.random.default_rng([self.stream.seed, epoch, position, slot, 2]).permutation(len(plan))
        for done, index in enumerate(order.tolist(), start=1):
            if done <= skip:
                continue
            pack = [window[i] for i in plan[index]]
            for row in pack:
                row[PACK_KEY] = (worker, epoch, position, done)
            yield pack


__all__ = ["PACK_KEY", "PackedStream"]
