"""A pack-level dataset: item i is pack i of the plan (a list of rows), so the Trainer's sampler shuffles and,
under torchrun, shards whole packs (each rank gets its own).

accelerate evens the ranks out by repeating items from the start of the epoch when the number of items is not
a multiple of ranks x per-device batch; a repeated pack would train its rows twice in that step. So the
dataset is filled up to that multiple with *filler* packs: a copy of the shortest pack whose rows carry
``FILLER``, which the packing collator turns into labels that train nothing (the forward still runs, so every
rank takes part in the step, and the token count, which is what the loss is divided by, stays exact)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmtrain.data.packing import PackStats, pack_stats, plan_packs

FILLER = "vlmtrain_filler"  # row key: this row is part of a filler pack and trains nothing


class PackedDataset(torch.utils.data.Dataset):
    """Rows grouped by ``plan_packs`` for (seed, epoch); ``set_epoch`` (called by accelerate's data loader at
    each epoch) regroups them, keeping the number of packs."""

    def __init__(self, rows: Any, lengths: Sequence[int], max_length: int, seed: int = 0, multiple: int = 1
                 ) -> None:
        self.rows = rows
        self.lengths = [int(n) for n in lengths]
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.epoch = 0
        self.plan = plan_packs(self.lengths, self.max_length, seed=self.seed, epoch=0)
        self.fillers = -len(self.plan) % max(1, int(multiple))  # packs added so ranks x batch divides the items

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) == self.epoch:
            return
        plan = plan_packs(self.lengths, self.max_length, seed=self.seed, epoch=int(epoch))
        if len(plan) != len(self.plan):  # BFD's pack sizes depend only on the lengths; a change would be a bug
            raise RuntimeError(f"packing plan for epoch {epoch} has {len(plan)} packs, epoch {self.epoch} had "
                               f"{len(self.plan)}")
        self.plan, self.epoch = plan, int(epoch)

    @property
    def stats(self) -> PackStats:
        return pack_stats(self.plan, self.lengths, self.max_length)

    def filler_line(self, ranks: int, batch: int) -> str:
        """The counted report of the filler packs ('' when there are none)."""
        if not self.fillers:
            return ""
        return (f"; {self.fillers} filler pack{'s' if self.fillers > 1 else ''} (no trained tokens) so that "
                f"{ranks} ranks x batch {batch} divide the {len(self.plan)} packs evenly")

    def __len__(self) -> int:
        return len(self.plan) + self.fillers

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        index = int(index)
        if index < len(self.plan):
            return [self.rows[int(i)] for i in self.plan[index]]
        if not 0 <= index < len(self):
            raise IndexError(f"pack {index} of {len(self)}")
        shortest = min(self.plan, key=lambda pack: sum(self.lengths[i] for i in pack))
        return [{**self.rows[int(i)], FILLER: True} for i in shortest]
