"""The single render -> attribute -> mask path shared by ``fit``, ``preprocess``, ``inspect-mask`` and ``generate``.

``make_renderer(cfg)`` builds it from a config (processor or tokenizer and family; no weights), so
``inspect-mask`` and ``preprocess`` start without importing TRL/PEFT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmtrain.families.resolve import (
    FamilyError,
    ResolvedFamily,
    find_family,
    media_token_ids,
    resolve,
    unknown_family_message,
)
from vlmtrain.mask.derive import Derivation, check_registered, derive_family, model_dir, warn_derived
from vlmtrain.mask.rules import MaskRules, loss_mask
from vlmtrain.media.item import MediaItem
from vlmtrain.render.attributor import Attributor, RenderInput
from vlmtrain.render.boundaries import BoundaryAttributor, resolve_boundaries
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.pretrain import PretrainAttributor
from vlmtrain.render.row import MaskedRow
from vlmtrain.render.template import TemplateAttributor

log = logging.getLogger(__name__)


class MaskedRenderer:
    """Renders rows with the model's real template and masks them.

    Conversations go through the family's template attributor; a non-empty ``mask.role_boundaries`` replaces
    it wholesale with a marker scan (and makes an unregistered template usable). Pretraining rows always go
    through the pretraining attributor.
    """

    def __init__(self, processing_class: Any, model_type: str | None, mask_cfg: Any, *,
                 family: str = "auto", template_date: str = "2024-07-26", model_path: str | None = None) -> None:
        self.chat = ChatRenderer(processing_class, template_date=template_date)
        tokenizer = self.chat.tokenizer
        entry = find_family(family, model_type)
        declared = list(mask_cfg.get("role_boundaries") or [])
        boundaries = resolve_boundaries(declared, tokenizer) if declared else None
        self.derivation: Derivation | None = None
        where = model_dir(processing_class, model_path)
        if entry is None and boundaries is None:
            if family != "auto":
                raise FamilyError(unknown_family_message(family))
            self.derivation = derive_family(self.chat, model_type, where)  # a FamilyError where ambiguous
            entry = self.derivation.family
            warn_derived(self.derivation)
        elif entry is not None and boundaries is None:
            entry = check_registered(entry, self.chat, where)
        self.family: ResolvedFamily | None = resolve(entry, tokenizer, processing_class) if entry else None
        self.media_ids: np.ndarray = (self.family.media_ids if self.family is not None
                                      else media_token_ids(None, tokenizer, processing_class))
        self.rules = MaskRules.from_config(mask_cfg)
        if boundaries is not None:
            self.conversations: Attributor = BoundaryAttributor(self.chat, boundaries, self.media_ids)
        else:
            assert self.family is not None
            self.conversations = TemplateAttributor(self.chat, self.family)
        self.pretrain = PretrainAttributor(self.chat, self.family, self.media_ids)
        if self.family is not None:
            names = dict(zip(self.family.family.stop_tokens, self.family.stop_ids, strict=False))
            log.info("family %s: stop tokens %s; %d media token ids", self.family.name, names, len(self.media_ids))

    @property
    def family_name(self) -> str:
        return self.family.name if self.family is not None else "role_boundaries"

    @property
    def boundaries(self) -> list[Any] | None:
        """The declared ``mask.role_boundaries`` markers, when they replace the family's attribution."""
        return getattr(self.conversations, "boundaries", None)

    @property
    def attribution(self) -> str:
        """Which attributor conversations go through: ``family`` or ``role_boundaries``."""
        return self.conversations.name

    def build(self, sample: RenderInput, *, pretrain: bool = False) -> MaskedRow:
        """The row attributed (template, declared boundaries, or pretraining text) and masked."""
        row = (self.pretrain if pretrain else self.conversations).attribute(sample)
        return row.with_mask(self.mask(row))

    def render(self, messages: Sequence[dict], media: Sequence[MediaItem] = (), tools: list[dict] | None = None
               ) -> MaskedRow:
        """A conversation (media items probed) -> its masked row."""
        return self.build(RenderInput(messages=list(messages), media=tuple(media), tools=tools))

    def mask(self, row: MaskedRow) -> np.ndarray:
        return loss_mask(row, self.rules)


def make_renderer(cfg: Any) -> MaskedRenderer:
    """The one render/mask path for this config (fit, preprocess, inspect-mask and generate all start here)."""
    from vlmtrain.render.load import load_processing_class, model_type_of

    model_type = model_type_of(cfg.model)
    entry = find_family(cfg.model.family, model_type)
    processing_class = load_processing_class(cfg.model, entry.is_vlm if entry else True)
    return MaskedRenderer(processing_class, model_type, cfg.mask, family=cfg.model.family,
                          template_date=cfg.data.template_date, model_path=str(cfg.model.name_or_path))
