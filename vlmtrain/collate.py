"""The completion-only multimodal collator: the processor makes every model input, the mask makes the labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlmtrain.data.images import open_image
from vlmtrain.render.chat import ChatRenderer

IGNORE = -100
COLLATOR_COLUMNS = ("where", "text", "images", "input_ids", "loss_mask")


class StaleRowError(RuntimeError):
    """The processor tokenized a row differently from when its mask was built (stale cache or changed model)."""


class CompletionOnlyCollator:
    """Pads a batch and builds ``labels`` = ids where the row's loss mask is on, -100 elsewhere.

    The processor is called on the rendered text and the row's images, so pixels, grid sizes and token-type
    ids are exactly what ``apply_chat_template(tokenize=True)`` produces; its ids are checked against the ids
    the mask was computed on, so a mask can never be applied to a different token stream. Pad, media and the
    first token of each row (nothing predicts it) are always -100.
    """

    def __init__(self, renderer: ChatRenderer, media_ids: np.ndarray) -> None:
        self.renderer = renderer
        self.renderer.tokenizer.padding_side = "right"
        self.media_ids = torch.as_tensor(np.asarray(media_ids, dtype=np.int64))

    def _images(self, features: list[dict[str, Any]]) -> list[list[Any]] | None:
        images = [[open_image(p, f.get("where", "")) for p in f.get("images") or []] for f in features]
        return images if any(images) else None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.renderer.encode([f["text"] for f in features], self._images(features),
                                     padding=True, return_tensors="pt")
        input_ids = batch["input_ids"]
        labels = torch.full_like(input_ids, IGNORE)
        for i, feature in enumerate(features):
            row_ids = torch.as_tensor(feature["input_ids"], dtype=input_ids.dtype)
            length = row_ids.shape[0]
            if not torch.equal(input_ids[i, :length], row_ids):
                raise StaleRowError(
                    f"{feature.get('where', f'row {i}')}: the processor's ids differ from the ids the loss mask was "
                    "built on; the cached dataset is stale for this model/processor — rerun `vlmtrain preprocess`"
                )
            mask = torch.as_tensor(np.asarray(feature["loss_mask"], dtype=bool))
            mask[0] = False
            labels[i, :length] = torch.where(mask, row_ids, IGNORE)
        labels[torch.isin(input_ids, self.media_ids)] = IGNORE
        out = dict(batch)
        out["labels"] = labels
        return out
