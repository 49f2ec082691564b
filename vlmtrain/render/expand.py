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


def _diff(plain: np.ndarray, expanded: np.ndarray, source: np.ndarray, i: int, j: int) -> None:
    """Map ``expanded`` onto ``plain`` (two short windows starting at plain index ``i``, expanded index ``j``)
    by a diff of their run-length encodings: an image's repeated media ids are one element."""
    a_vals, a_starts, a_lens = _runs(plain)
    b_vals, b_starts, b_lens = _runs(expanded)
    blocks = [m for m in SequenceMatcher(None, a_vals.tolist(), b_vals.tolist(), autojunk=False)
              .get_matching_blocks() if m.size]
    if blocks:
        ra = np.concatenate([np.arange(m.a, m.a + m.size) for m in blocks])
        rb = np.concatenate([np.arange(m.b, m.b + m.size) for m in blocks])
        count = np.minimum(a_lens[ra], b_lens[rb])  # a matched run keeps its shorter length; the rest is inserted
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        source[j + np.repeat(b_starts[rb], count) + within] = i + np.repeat(a_starts[ra], count) + within


class _Positions:
    """Where each id occurs in ``ids``, ascending: the candidates for re-synchronising after an insertion."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def at_or_after(self, value: int, start: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.sorted, value, "left"), np.searchsorted(self.sorted, value, "right")
        found = self.order[lo:hi]
        return found[np.searchsorted(found, start):]


_ANCHOR = 4  # tokens that must agree for plain and expanded to be back in step
_LOOKAHEAD = 32  # plain tokens an expansion may re-tokenize around it


def _resync(plain: np.ndarray, expanded: np.ndarray, where: _Positions, i: int, j: int) -> tuple[int, int] | None:
    """The nearest (i2 >= i, j2 >= j) where ``_ANCHOR`` tokens of plain reappear in expanded, i.e. where the
    processor's insertion (and any text it re-tokenized) ends."""
    best: tuple[int, int] | None = None
    for i2 in range(i, min(i + _LOOKAHEAD, len(plain))):
        if best is not None and i2 - i >= best[0] - i + best[1] - j:
            break
        width = min(_ANCHOR, len(plain) - i2)
        for j2 in where.at_or_after(int(plain[i2]), j):
            j2 = int(j2)
            if best is not None and (i2 - i) + (j2 - j) >= (best[0] - i) + (best[1] - j):
                break
            if np.array_equal(plain[i2:i2 + width], expanded[j2:j2 + width]):
                best = (i2, j2)
                break
    return best


def _align(plain: np.ndarray, expanded: np.ndarray) -> np.ndarray:
    """For each expanded id, the index of the plain id it is (-1 where the processor inserted it).

    Stretches where both agree are matched with numpy; at each place they stop agreeing (a media expansion),
    the nearest point where they agree again bounds a small window that is diffed run-length encoded. So the
    cost is linear in the row's length and in its number of media items.
    """
    source = np.full(len(expanded), -1, dtype=np.int64)
    where = _Positions(expanded)
    i = j = 0
    while i < len(plain) and j < len(expanded):
        k = min(len(plain) - i, len(expanded) - j)
        differs = np.flatnonzero(plain[i:i + k] != expanded[j:j + k])
        run = int(differs[0]) if differs.size else k
        source[j:j + run] = np.arange(i, i + run)
        i, j = i + run, j + run
        if i >= len(plain) or j >= len(expanded):
            break
        found = _resync(plain, expanded, where, i, j)
        i2, j2 = found if found is not None else (len(plain), len(expanded))
        _diff(plain[i:i2], expanded[j:j2], source, i, j)
        i, j = i2, j2
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
