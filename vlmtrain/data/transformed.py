"""``data.image_transform`` applied to one example before it is rendered, and its labels kept out of the loss.

``render_example`` calls ``transform_example`` on every row, so the cached rows, the packing plan, streaming,
``inspect-mask`` and the collator (which loads the items the row stores) all see the same derived images.
Position labels are model input: their tokens are never trained, whatever the mask mode (pretraining rows
train every text token otherwise), and are shown as template scaffolding (``marker``) by ``inspect-mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vlmtrain.errors import DataError, Reason
from vlmtrain.media.item import MediaItem
from vlmtrain.media.kinds import PART_TYPES
from vlmtrain.media.tiling import KEY
from vlmtrain.media.transforms import Derived, TransformSpec, bind, expand_parts, expand_text
from vlmtrain.render.expand import _align
from vlmtrain.render.row import MARKER, MaskedRow


@dataclass(frozen=True)
class TransformedExample:
    """What the renderer gets: the (expanded) messages or text, the derived items and the labels written."""

    messages: list[dict]
    text: str
    media: tuple[MediaItem, ...]
    labels: tuple[str, ...] = ()
    where: str = ""

    def finish(self, row: MaskedRow, renderer: Any) -> MaskedRow:
        """The rendered row with every label token untrained (a no-op without labels)."""
        return untrain_labels(row, self.labels, renderer.chat, renderer.pretrain.token, self.where)


def derive(spec: TransformSpec | None, processing_class: Any, media: tuple[MediaItem, ...], where: str
           ) -> list[list[Derived]] | None:
    """Each probed item's replacements, or None when there is no transform (or no media)."""
    if spec is None or not media:
        return None
    transform = bind(spec, processing_class)
    return [transform.apply(item, where) for item in media]


def transform_example(renderer: Any, example: Any, media: tuple[MediaItem, ...], settings: Any,
                      placeholder: str | None) -> TransformedExample:
    """``example`` (its ``media`` probed) with ``settings.image_transform`` applied."""
    plain = TransformedExample(example.messages, example.text, media, (), example.where)
    derived = derive(getattr(settings, "image_transform", None), renderer.chat.processing_class, media,
                     example.where)
    if derived is None:
        return plain
    labels = tuple(label for items in derived for label, _ in items if label)
    items = tuple(item for group in derived for _, item in group)
    if example.format == "pretrain":
        pretrain = renderer.pretrain
        text = expand_text(example.text, [pretrain.snippet, placeholder or pretrain.token], derived)
        if text is None:  # placeholders and images differ: the attributor names the mismatch
            return plain
        return TransformedExample([], text, items, labels, example.where)
    return TransformedExample(expand_parts(example.messages, derived, tuple(PART_TYPES)), example.text, items,
                              labels, example.where)


def label_spans(text: str, labels: tuple[str, ...], image_token: str | None, where: str) -> list[tuple[int, int]]:
    """Character spans of the labels in the rendered text, in order, each followed by its image."""
    spans, pos = [], 0
    for label in labels:
        start = text.find(label, pos)
        if start < 0:
            raise DataError(f"{where}: the chat template dropped the tile label {label!r} from the text; set "
                            f"{KEY}.labels: false for this model", Reason.TEMPLATE_ERROR)
        spans.append((start, start + len(label)))
        pos = start + len(label)
    if image_token:
        bounds = [*(s for s, _ in spans[1:]), len(text)]
        for (_, end), stop, label in zip(spans, bounds, labels, strict=True):
            if image_token not in text[end:stop]:
                raise DataError(f"{where}: the chat template does not write the image after its tile label "
                                f"{label!r} (it groups images and text apart); set {KEY}.labels: false for this "
                                "model", Reason.TEMPLATE_ERROR)
    return spans


def untrain_labels(row: MaskedRow, labels: tuple[str, ...], chat: Any, image_token: str | None,
                   where: str) -> MaskedRow:
    """Label tokens: never sampled, never in the loss, shown as markers."""
    if not labels:
        return row
    spans = label_spans(row.text, labels, image_token, where)
    enc = chat.tokenizer(row.text, add_special_tokens=chat.adds_special_tokens(row.text),
                         return_offsets_mapping=True)
    plain = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    in_label = np.zeros(len(plain), dtype=bool)
    for start, end in spans:
        in_label |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    source = _align(plain, row.input_ids)
    hit = np.zeros(len(row.input_ids), dtype=bool)
    mapped = source >= 0
    hit[mapped] = in_label[source[mapped]]
    if not hit.any():
        raise DataError(f"{where}: the tile labels' tokens were not found in the encoded row; set {KEY}.labels: "
                        "false for this model", Reason.TEMPLATE_ERROR)
    kind = row.kind.copy()
    kind[hit] = MARKER
    mask = None if row.loss_mask is None else row.loss_mask & ~hit
    return replace(row, kind=kind, sampled=row.sampled & ~hit, loss_mask=mask)
