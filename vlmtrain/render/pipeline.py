"""The single render -> attribute -> mask path shared by ``fit``, ``preprocess`` and ``inspect-mask``."""

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
from vlmtrain.mask.boundaries import resolve_boundaries, scan_row
from vlmtrain.mask.rules import MaskRules, loss_mask
from vlmtrain.render.attribute import drop_nulls, render_row
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.rendered import RenderedRow

log = logging.getLogger(__name__)


class MaskedRenderer:
    """Renders rows with the family's real template and computes their loss masks.

    Built-in family rules attribute tokens by prefix rendering; a non-empty ``mask.role_boundaries`` replaces
    them wholesale with a marker scan (and makes an unregistered template usable).
    """

    def __init__(self, processing_class: Any, model_type: str | None, mask_cfg: Any, *,
                 family: str = "auto", template_date: str = "2024-07-26") -> None:
        self.renderer = ChatRenderer(processing_class, template_date=template_date)
        tokenizer = self.renderer.tokenizer
        entry = find_family(family, model_type)
        boundaries = list(mask_cfg.get("role_boundaries") or [])
        self.boundaries = resolve_boundaries(boundaries, tokenizer) if boundaries else None
        if entry is None and self.boundaries is None:
            raise FamilyError(unknown_family_message(model_type if family == "auto" else family))
        self.family: ResolvedFamily | None = resolve(entry, tokenizer, processing_class) if entry else None
        self.media_ids = (self.family.media_ids if self.family is not None
                          else media_token_ids(None, tokenizer, processing_class))
        self.rules = MaskRules.from_config(mask_cfg)
        if self.family is not None:
            names = dict(zip(self.family.family.stop_tokens, self.family.stop_ids, strict=False))
            log.info("family %s: stop tokens %s; %d media token ids", self.family.name, names, len(self.media_ids))

    @property
    def family_name(self) -> str:
        return self.family.name if self.family is not None else "role_boundaries"

    def render(self, messages: Sequence[dict], images: list[Any] | None = None,
               tools: list[dict] | None = None) -> RenderedRow:
        if self.boundaries is None:
            assert self.family is not None
            return render_row(self.renderer, self.family, messages, images=images, tools=tools)
        text = self.renderer.render([drop_nulls(m) for m in messages], tools=tools)
        if self.renderer.is_processor and images:
            ids = np.asarray(self.renderer.encode([text], [images])["input_ids"][0], dtype=np.int64)
        else:
            ids, _ = self.renderer.text_tokens(text)
        return scan_row(ids, self.boundaries, text, self.media_ids)

    def mask(self, row: RenderedRow) -> np.ndarray:
        return loss_mask(row, self.rules)
