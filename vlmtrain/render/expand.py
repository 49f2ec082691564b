"""Media expansion: the processor turns each placeholder into its media tokens; attribution follows.

Aligning the plain ids with the expanded ones is a diff of run-length-encoded ids, so it stays linear in the
number of media items however many tokens each expands to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from difflib import SequenceMatcher

import numpy as np

from vlmtrain.media.item import MediaItem
from vlmtrain.media.kinds import stand_ins
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.row import MARKER, MEDIA, NO_MESSAGE, MaskedRow


def mark_media(row: MaskedRow, media_ids: np.ndarray) -> MaskedRow:
    """Media tokens are MEDIA and never sampled, whatever attributed them."""
    is_media = np.isin(row.input_ids, media_ids)
    kind = row.kind.copy()
    kind[is_media] = MEDIA
    return replace(row, kind=kind, sampled=row.sampled & ~is_media)


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encoding: (value, start, length) of each run of equal ids."""
    if not len(ids):
        return ids, ids, ids
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], starts, np.diff(np.r_[starts, len(ids)])


def _align(plain: np.ndarray, expanded: np.ndarray) -> np.ndarray:
    """For each expanded id, the index of the plain id it is (-1 where the processor inserted it).

    The common prefix and suffix are matched with numpy. The stretch between the first and the last image is
    diffed run-length encoded, so an image's hundreds of repeated media ids are one element and the diff stays
    linear in the number of images.
    """
    source = np.full(len(expanded), -1, dtype=np.int64)
    n = min(len(plain), len(expanded))
    differs = np.flatnonzero(plain[:n] != expanded[:n])
    head = int(differs[0]) if differs.size else n
    differs = np.flatnonzero(plain[::-1][:n - head] != expanded[::-1][:n - head])
    tail = int(differs[0]) if differs.size else n - head
    source[:head] = np.arange(head)
    if tail:
        source[len(expanded) - tail:] = np.arange(len(plain) - tail, len(plain))
    a_vals, a_starts, a_lens = _runs(plain[head:len(plain) - tail])
    b_vals, b_starts, b_lens = _runs(expanded[head:len(expanded) - tail])
    blocks = [m for m in SequenceMatcher(None, a_vals.tolist(), b_vals.tolist(), autojunk=False)
              .get_matching_blocks() if m.size]
    if blocks:
        ra = np.concatenate([np.arange(m.a, m.a + m.size) for m in blocks])
        rb = np.concatenate([np.arange(m.b, m.b + m.size) for m in blocks])
        count = np.minimum(a_lens[ra], b_lens[rb])  # a matched run keeps its shorter length; the rest is inserted
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        source[head + np.repeat(b_starts[rb], count) + within] = head + np.repeat(a_starts[ra], count) + within
    return source


def expand_media(row: MaskedRow, chat: ChatRenderer, media: Sequence[MediaItem]) -> MaskedRow:
    """Run the processor (which expands each media placeholder) and carry attribution over to its ids.

    The processor gets stand-ins of the media (same size, so the same token count, nothing decoded). Tokens
    it inserts take the message of the token before them and are never sampled; they are media or
    scaffolding around media (Gemma 3 wraps images in blank lines).
    """
    row = replace(row, media=tuple(media))
    if not media:
        return row
    encoded = chat.encode([row.text], stand_ins([media]))
    expanded = np.asarray(encoded["input_ids"][0], dtype=np.int64)
    if np.array_equal(expanded, row.input_ids):
        return row
    source = _align(row.input_ids, expanded)
    # Inserted tokens inherit the message of the nearest preceding mapped token.
    filled = np.maximum.accumulate(np.where(source >= 0, np.arange(len(source)), -1))
    anchor = np.where(filled >= 0, source[np.maximum(filled, 0)], -1)
    inserted = source < 0
    message_index = np.where(anchor >= 0, row.message_index[np.maximum(anchor, 0)], NO_MESSAGE)
    kind = np.where(inserted, MARKER, row.kind[np.maximum(source, 0)]).astype(np.int8)
    sampled = np.where(inserted, False, row.sampled[np.maximum(source, 0)])
    ends_turn = np.where(inserted, NO_MESSAGE, row.ends_turn[np.maximum(source, 0)])
    return replace(row, input_ids=expanded, message_index=message_index, kind=kind, sampled=sampled,
                   ends_turn=ends_turn)
