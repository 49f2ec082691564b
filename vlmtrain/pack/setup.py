"""``data.packing: true`` in ``fit``: refuse what cannot be packed exactly, then build the pack datasets, the
collator and the guards."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from vlmtrain.collate import CompletionOnlyCollator
from vlmtrain.errors import Reason
from vlmtrain.families.family import Family
from vlmtrain.pack.collator import PackingCollator, PackingError
from vlmtrain.pack.dataset import PackedDataset
from vlmtrain.pack.guard import PackGuard, find_rope_index, install

log = logging.getLogger("vlmtrain")


def packable_families() -> list[str]:
    from vlmtrain.families import FAMILIES

    return [f.name for f in FAMILIES if f.packing != "no"]


def require_packable(family: Family | None, attn_implementation: str = "auto") -> str:
    """The family's packing mode, or a one-line error naming the packable families (at start-up)."""
    listing = ", ".join(packable_families())
    if family is None:
        raise PackingError("data.packing: true needs a registered model family (mask.role_boundaries models have "
                           f"no verified packed layout); packable families: {listing}", Reason.CONFIG)
    if family.packing == "no":
        raise PackingError(f"data.packing: true is not supported for family {family.name}: its packed forward is "
                           f"not proven equal to the unpacked one; packable families: {listing}; set "
                           "data.packing: false", Reason.CONFIG)
    if family.packing == "mask" and "flash" in str(attn_implementation):
        raise PackingError(f"data.packing: true with model.attn_implementation={attn_implementation}: family "
                           f"{family.name} packs with an explicit mask, which flash-attention cannot take; use sdpa "
                           "or eager", Reason.CONFIG)
    return family.packing


@dataclass
class Packed:
    train: PackedDataset | None  # None for a stream: vlmtrain.pack.stream packs it as it is read
    eval: PackedDataset | None
    collator: PackingCollator
    guard: PackGuard


def packed_training(cfg: Any, family: Family | None, model: Any, renderer: Any, train_rows: Any | None,
                    train_dataset: Any, eval_rows: Any | None, eval_dataset: Any | None, seed: int) -> Packed:
    """Pack-level datasets over the cached rows (no train one for a stream), the packing collator and the
    guards on ``model``."""
    attn = str(getattr(getattr(_base(model), "config", None), "_attn_implementation", "") or "")
    mode = require_packable(family, attn)  # again with the implementation the model was loaded with
    max_length = int(cfg.data.max_length)
    train = None
    if train_rows is not None:
        ranks, batch = _dealing(cfg, "train")
        train = PackedDataset(train_dataset, train_rows["length"], max_length, seed=seed, multiple=ranks * batch)
        log.info("train %s%s", train.stats.line(), train.filler_line(ranks, batch))
    evaluation = None
    if eval_dataset is not None and eval_rows is not None:
        ranks, batch = _dealing(cfg, "eval")
        evaluation = PackedDataset(eval_dataset, eval_rows["length"], max_length, seed=seed,
                                   multiple=ranks * batch)
        log.info("eval %s%s", evaluation.stats.line(), evaluation.filler_line(ranks, batch))
    collator, guard = packing_collator(model, renderer, mode, attn)
    return Packed(train, evaluation, collator, guard)


def packing_collator(model: Any, renderer: Any, mode: str, attn: str) -> tuple[PackingCollator, PackGuard]:
    """The packing collator over the row collator, and the guards installed on ``model`` (cached or streamed)."""
    tokenizer = renderer.chat.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PackingCollator(CompletionOnlyCollator(renderer.chat, renderer.media_ids), mode, pad,
                               rope_index=find_rope_index(model) if mode == "mrope" else None,
                               flat="flash" in attn)
    return collator, install(model, mode)


def _dealing(cfg: Any, split: str) -> tuple[int, int]:
    """(ranks, packs per rank per micro-batch) that accelerate deals ``split``'s packs out in; one process deals
    no repeats, so it needs no filler packs (``PackedDataset``)."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks <= 1:
        return 1, 1
    key = f"per_device_{split}_batch_size"
    batch = cfg.training.get(key)
    if batch is None:
        from trl import SFTConfig

        batch = SFTConfig.__dataclass_fields__[key].default
    return ranks, int(batch)


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model
