"""A pack-level dataset: item i is pack i of the plan (a list of rows), so the Trainer's sampler shuffles and,
under torchrun, shards whole packs (each rank gets its own)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmtrain.data.packing import PackStats, pack_stats, plan_packs


class PackedDataset(torch.utils.data.Dataset):
    """Rows grouped by ``plan_packs`` for (seed, epoch); ``set_epoch`` (called by accelerate's data loader at
    each epoch) regroups them, keeping the number of packs."""

    def __init__(self, rows: Any, lengths: Sequence[int], max_length: int, seed: int = 0) -> None:
        self.rows = rows
        self.lengths = [int(n) for n in lengths]
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.epoch = 0
        self.plan = plan_packs(self.lengths, self.max_length, seed=self.seed, epoch=0)

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

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.rows[int(i)] for i in self.plan[index]]
