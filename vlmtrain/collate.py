"""The completion-only multimodal collator: the processor makes every model input, the mask makes the labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlmtrain.errors import Reason, VlmtrainError
from vlmtrain.media.item import MediaItem
from vlmtrain.media.kinds import loaded
from vlmtrain.render.chat import ChatRenderer

IGNORE = -100
COLLATOR_COLUMNS = ("where", "text", "media", "input_ids", "loss_mask")


class StaleRowError(VlmtrainError):
    """The processor tokenized a row differently from when its mask was built (stale cache or changed model)."""

    def __init__(self, message: str, reason: Reason = Reason.STALE_ROW) -> None:
        super().__init__(message, reason)


class CompletionOnlyCollator:
    """Pads a batch and builds ``labels`` = ids where the row's loss mask is on, -100 elsewhere.

    The processor is called on the rendered text and the row's media (each decoded by its modality), so
    pixels, grid sizes and token-type ids are exactly what ``apply_chat_template(tokenize=True)`` produces; its
    ids are checked against the ids the mask was computed on, so a mask can never be applied to a different
    token stream. Pad, media and the first token of each row (nothing predicts it) are always -100. Rows are
    padded on the right by the processor call itself (``padding_side``), leaving the tokenizer as it was: the
    tokenizer saved with the model keeps the side it came with.
    """

    def __init__(self, renderer: ChatRenderer, media_ids: np.ndarray) -> None:
        self.renderer = renderer
        self.media_ids = torch.as_tensor(np.asarray(media_ids, dtype=np.int64))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [[MediaItem.from_record(m) for m in f.get("media") or []] for f in features]
        media = loaded(rows, [f.get("where", f"row {i}") for i, f in enumerate(features)])
        batch = self.renderer.encode([f["text"] for f in features], media, padding=True, padding_side="right",
                                     return_tensors="pt")
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
