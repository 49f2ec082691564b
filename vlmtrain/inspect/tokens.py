"""Token pieces for display: each id's literal text, whitespace made visible, media runs collapsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmtrain.render.row import MEDIA, NO_MESSAGE, MaskedRow

REPLACEMENT = "\ufffd"
MAX_BYTES = 8  # longest run of byte tokens merged back into characters
VISIBLE = {" ": "·", "\t": "→", "\r": "␍", "\n": "↵\n"}


class Pieces:
    """Decodes ids one at a time so that the pieces of a row concatenate to its text.

    Each id is decoded after a fixed one-token anchor and the anchor's text is cut off again: decoding an id
    alone drops the leading space of SentencePiece pieces (``▁Hello`` -> ``Hello``). Special tokens decode to
    their literal text (``<|im_end|>``). Results are cached per id.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        anchor = tokenizer.encode("a", add_special_tokens=False)
        self.anchor = anchor[:1] if len(anchor) == 1 else []
        self.anchor_text = self._decode(self.anchor) if self.anchor else ""
        self.specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.specials.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
        self._cache: dict[int, str] = {}

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _after_anchor(self, ids: list[int]) -> str:
        if self.anchor:
            joined = self._decode([*self.anchor, *ids])
            if joined.startswith(self.anchor_text):
                return joined[len(self.anchor_text):]
        return self._decode(ids)

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        piece = self._cache.get(token_id)
        if piece is None:
            piece = self._decode([token_id]) if token_id in self.specials else self._after_anchor([token_id])
            self._cache[token_id] = piece
        return piece

    def row(self, ids: Any) -> list[str]:
        """Pieces for display: a character split over several byte tokens (each alone decodes to U+FFFD) is
        shown on the token that completes it, the tokens before it show nothing."""
        out = [self(i) for i in ids]
        pending: list[int] = []
        for k, piece in enumerate(out):
            if REPLACEMENT not in piece or self.is_special(ids[k]):
                pending = []
                continue
            pending.append(k)
            text = self._after_anchor([int(ids[j]) for j in pending])
            if REPLACEMENT not in text:
                for j in pending[:-1]:
                    out[j] = ""
                out[k] = text
                pending = []
            elif len(pending) >= MAX_BYTES:
                pending = []
        return out

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self.specials


def visible(text: str) -> str:
    """Whitespace as glyphs (``·`` space, ``→`` tab, ``↵`` newline, the line break kept after it)."""
    return "".join(VISIBLE.get(ch, ch) for ch in text)


@dataclass
class Segment:
    """One displayed unit: a token, or a run of ``count`` identical media tokens shown once (``×count``)."""

    start: int
    count: int
    token_id: int
    text: str
    trained: bool
    kind: int
    message_index: int
    role: str
    special: bool
    ends_turn: int

    @property
    def is_media(self) -> bool:
        return self.kind == MEDIA


def segments(row: MaskedRow, pieces: Pieces) -> list[Segment]:
    """The row's tokens as display segments, runs of one repeated media id collapsed into one segment."""
    ids, kind, message, ends, roles = row.input_ids, row.kind, row.message_index, row.ends_turn, row.roles
    mask = np.asarray(row.loss_mask, dtype=bool)
    texts = pieces.row(ids)
    out: list[Segment] = []
    i, n = 0, len(ids)
    while i < n:
        j = i + 1
        if kind[i] == MEDIA:
            same = (ids == ids[i]) & (kind == MEDIA) & (message == message[i]) & (mask == mask[i])
            while j < n and same[j]:
                j += 1
        k = int(message[i])
        out.append(Segment(start=i, count=j - i, token_id=int(ids[i]), text=texts[i],
                           trained=bool(mask[i]), kind=int(kind[i]), message_index=k,
                           role=roles[k] if k != NO_MESSAGE else "", special=pieces.is_special(ids[i]),
                           ends_turn=int(ends[i])))
        i = j
    return out
