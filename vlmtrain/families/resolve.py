"""Resolve a registry entry against the real tokenizer: marker strings become ids, or start-up fails loudly."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmtrain.errors import VlmtrainError
from vlmtrain.families.family import Family
from vlmtrain.families.registry import known_names, lookup

log = logging.getLogger(__name__)


class FamilyError(VlmtrainError):
    """A family cannot be used: unknown, or its markers do not exist in this tokenizer."""


@dataclass(frozen=True)
class ResolvedFamily:
    """A family entry with its marker strings turned into this tokenizer's ids."""

    family: Family
    stop_ids: tuple[int, ...]
    media_ids: np.ndarray
    final_stop: str

    @property
    def name(self) -> str:
        return self.family.name


def unknown_family_message(key: str) -> str:
    return (
        f"unknown model family {key!r}: vlmtrain refuses to guess a loss mask. Known families: "
        f"{', '.join(known_names())}. If the model uses one of these templates set model.family; otherwise "
        "declare the turn markers yourself with mask.role_boundaries (role/start/end strings, see README "
        "'Loss masks')."
    )


def find_family(requested: str, model_type: str | None) -> Family | None:
    """``model.family`` if set, else the config.json ``model_type``; None when unregistered."""
    key = model_type if requested == "auto" else requested
    if key is None:
        return None
    return lookup(key)


def media_token_ids(family: Family | None, tokenizer: Any, processing_class: Any = None) -> np.ndarray:
    """Every id that is media: the family's declared tokens and patterns, plus the processor's own media ids."""
    vocab = tokenizer.get_vocab()
    ids: set[int] = set()
    if family is not None:
        ids.update(vocab[t] for t in family.media_tokens if t in vocab)
        for pattern in family.media_token_patterns:
            regex = re.compile(pattern)
            ids.update(i for t, i in vocab.items() if regex.fullmatch(t))
    for source in (processing_class, tokenizer):
        for attr in ("image_token_id", "video_token_id", "boi_token_id", "eoi_token_id", "image_token_index"):
            value = getattr(source, attr, None)
            if isinstance(value, int):
                ids.add(value)
        for attr in ("image_token_ids", "video_token_ids"):  # all ids of an image (Pixtral's [IMG_BREAK])
            values = getattr(source, attr, None)
            if isinstance(values, (list, tuple)):
                ids.update(v for v in values if isinstance(v, int))
    return np.array(sorted(ids), dtype=np.int64)


def resolve(family: Family, tokenizer: Any, processing_class: Any = None) -> ResolvedFamily:
    """Encode the entry's markers with the real tokenizer; a missing stop or image marker fails at start-up."""
    vocab = tokenizer.get_vocab()
    missing_stops = [t for t in family.stop_tokens if t not in vocab]
    if family.stop_tokens[0] in missing_stops:
        raise FamilyError(
            f"family {family.name!r}: stop token {family.stop_tokens[0]!r} is not a token of this tokenizer; "
            "the model is not this family (set model.family) or its tokenizer is incomplete"
        )
    if missing_stops:
        log.info("family %s: optional stop tokens absent from this tokenizer: %s", family.name, missing_stops)
    if family.is_vlm and family.image_placeholder and family.image_placeholder not in vocab:
        raise FamilyError(
            f"family {family.name!r}: image token {family.image_placeholder!r} is not a token of this tokenizer"
        )
    if not family.verified:
        log.warning("family %s is UNVERIFIED: %s. Check masks with `vlmtrain inspect-mask` before training.",
                    family.name, "; ".join(family.quirks) or "no real template was available")
    stop_ids = tuple(vocab[t] for t in family.stop_tokens if t in vocab)
    return ResolvedFamily(family=family, stop_ids=stop_ids,
                          media_ids=media_token_ids(family, tokenizer, processing_class),
                          final_stop=family.stop_tokens[0])
