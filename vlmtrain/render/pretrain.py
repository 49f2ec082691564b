"""Multimodal continued pre-training rows: raw text with image placeholders, trained on every text token.

The placeholder is ``data.<split>[i].image_placeholder`` or the family's image token. Each placeholder is
replaced by what the family's chat template writes for one image part (Qwen2-VL:
``<|vision_start|><|image_pad|><|vision_end|>``), so the processor expands it exactly as in a conversation;
the number of images is then checked against the image token *ids* in the tokenized text (a substring count
would also match ``<image>`` inside ``<images>`` or split tokens). There are no turns: every non-media token
is ``sampled`` in a single pseudo-message of role ``text``, so the default mask mode trains them all, the
same as ``mask.mode: all`` (media and padding are never trained).
"""

from __future__ import annotations

import numpy as np

from vlmtrain.errors import DataError, Reason
from vlmtrain.families.resolve import ResolvedFamily
from vlmtrain.media.kinds import stand_ins
from vlmtrain.render.attributor import RenderInput
from vlmtrain.render.chat import TEMPLATE_ERRORS, ChatRenderer
from vlmtrain.render.expand import mark_media
from vlmtrain.render.row import CONTENT, MARKER, NO_MESSAGE, MaskedRow

PRETRAIN_ROLE = "text"
_OPEN, _CLOSE, _SLOT = "\ue000", "\ue001", "\ue002"  # private-use sentinels no template rewrites


def image_token_of(chat: ChatRenderer, family: ResolvedFamily | None) -> str | None:
    """The token the processor expands per image (``<|image_pad|>``, ``<image>``, ...)."""
    if family is not None and family.family.image_placeholder:
        return family.family.image_placeholder
    token = getattr(chat.processing_class, "image_token", None)
    return token if isinstance(token, str) else None


def _template_snippet(chat: ChatRenderer, token: str) -> str:
    """Render a lone user turn around an image part and cut the image out; the bare image token as fallback."""
    message = {"role": "user", "content": [{"type": "text", "text": _OPEN}, {"type": "image"},
                                           {"type": "text", "text": _CLOSE}]}
    try:
        text = chat.render([message])
    except TEMPLATE_ERRORS:  # a template that cannot render a lone user turn: use the token itself
        return token
    start, end = text.find(_OPEN), text.find(_CLOSE)
    snippet = text[start + 1:end].strip("\n ") if 0 <= start < end else ""
    return snippet if token and token in snippet else token


def expand_placeholders(text: str, placeholder: str, snippet: str) -> str:
    """Replace each placeholder by the template's image snippet; snippets already written stay as they are."""
    if not placeholder or placeholder == snippet:
        return text
    protected = text.replace(snippet, _SLOT) if snippet else text
    return protected.replace(placeholder, _SLOT).replace(_SLOT, snippet)


class PretrainAttributor:
    """Plain text with media placeholders: one pseudo-message, every text token trained."""

    name = "pretrain"

    def __init__(self, chat: ChatRenderer, family: ResolvedFamily | None, media_ids: np.ndarray) -> None:
        self.chat, self.media_ids = chat, media_ids
        self.token = image_token_of(chat, family)
        self.snippet = _template_snippet(chat, self.token) if chat.is_processor and self.token else ""

    def attribute(self, sample: RenderInput) -> MaskedRow:
        """Tokenize (and expand media of) a pretraining row; raises DataError when placeholders != images."""
        chat, token, text, where = self.chat, self.token, sample.text, sample.where
        images = [m for m in sample.media if m.modality == "image"]
        if len(images) != len(sample.media):
            raise DataError(f"{where}: pretraining rows take images only; move the other media to a "
                            "conversation row", Reason.MEDIA_NOT_SUPPORTED)
        if images and token is None:
            raise DataError("the pretrain format needs an image token: set data.<split>[i].image_placeholder",
                            Reason.CONFIG)
        if chat.is_processor and token is not None:
            text = expand_placeholders(text, sample.placeholder or token, self.snippet)
        ids, _ = chat.text_tokens(text)
        if token is not None and chat.is_processor:
            token_id = chat.tokenizer.convert_tokens_to_ids(token)
            found = int(np.count_nonzero(ids == token_id))
            if found != len(images):
                shown = sample.placeholder or token
                raise DataError(f"{where}: {found} image placeholder(s) {shown!r} in the text but {len(images)} "
                                "image(s) listed; make them equal (each placeholder consumes the next image)",
                                Reason.MEDIA_COUNT_MISMATCH)
        if images:
            ids = np.asarray(chat.encode([text], stand_ins([images]))["input_ids"][0], dtype=np.int64)
        n = len(ids)
        kind = np.where(np.isin(ids, self.media_ids), MARKER, CONTENT).astype(np.int8)
        message_index = np.zeros(n, dtype=np.int64)
        bos = chat.tokenizer.bos_token_id
        if n and chat.adds_special_tokens(text) and bos is not None and ids[0] == bos:
            message_index[0], kind[0] = NO_MESSAGE, MARKER
        row = MaskedRow(input_ids=ids, message_index=message_index, kind=kind, sampled=kind == CONTENT,
                        ends_turn=np.full(n, NO_MESSAGE, dtype=np.int64), roles=[PRETRAIN_ROLE], text=text,
                        media=tuple(images))
        return mark_media(row, self.media_ids)
