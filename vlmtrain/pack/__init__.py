"""Packed training: whole cached rows laid out in shared sequences so the model computes, token for token,
what it computes for each row alone (see ``docs/packing.md``)."""

from vlmtrain.pack.collator import PACK_MARKER, PackInfo, PackingCollator, PackingError
from vlmtrain.pack.dataset import PackedDataset

__all__ = ["PACK_MARKER", "PackInfo", "PackedDataset", "PackingCollator", "PackingError"]
