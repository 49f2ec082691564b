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

import weakref
from typing import Any

import numpy as np

from vlmtrain.data.errors import DataError
from vlmtrain.data.examples import Example
from vlmtrain.render.pipeline import MaskedRenderer
from vlmtrain.render.rendered import CONTENT, MARKER, MEDIA, NO_MESSAGE, RenderedRow

PRETRAIN_ROLE = "text"
_OPEN, _CLOSE, _SLOT = "\ue000", "\ue001", "\ue002"  # private-use sentinels no template rewrites


def family_image_token(renderer: MaskedRenderer) -> str | None:
    """The token the processor expands per image (``<|image_pad|>``, ``<image>``, ...)."""
    if renderer.family is not None and renderer.family.family.image_placeholder:
        return renderer.family.family.image_placeholder
    token = getattr(renderer.renderer.processing_class, "image_token", None)
    return token if isinstance(token, str) else None


_SNIPPETS: weakref.WeakKeyDictionary[MaskedRenderer, str] = weakref.WeakKeyDictionary()


def image_snippet(renderer: MaskedRenderer) -> str:
    """What the chat template writes for one ``{"type": "image"}`` part (computed once per renderer)."""
    if renderer not in _SNIPPETS:
        _SNIPPETS[renderer] = _template_snippet(renderer)
    return _SNIPPETS[renderer]


def _template_snippet(renderer: MaskedRenderer) -> str:
    """Render a lone user turn around an image part and cut the image out; the bare image token as fallback."""
    token = family_image_token(renderer) or ""
    message = {"role": "user", "content": [{"type": "text", "text": _OPEN}, {"type": "image"},
                                           {"type": "text", "text": _CLOSE}]}
    try:
        text = renderer.renderer.render([message])
    except Exception:  # a template that cannot render a lone user turn: use the token itself
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


def render_pretrain(renderer: MaskedRenderer, example: Example, images: list[Any], placeholder: str | None
                    ) -> RenderedRow:
    """Tokenize (and expand media of) a pretraining row; raises DataError when placeholders != images."""
    chat = renderer.renderer
    token = family_image_token(renderer)
    text = example.text
    if images and not chat.is_processor:
        raise DataError(f"{example.where}: the row has {len(images)} image(s) but the model is text-only; "
                        "remove the images or use a vision-language model", "image count mismatch")
    if images and token is None:
        raise DataError("the pretrain format needs an image token: set data.<split>[i].image_placeholder",
                        "config")
    if chat.is_processor and token is not None:
        text = expand_placeholders(text, placeholder or token, image_snippet(renderer))
    ids, _ = chat.text_tokens(text)
    if token is not None and chat.is_processor:
        token_id = chat.tokenizer.convert_tokens_to_ids(token)
        found = int(np.count_nonzero(ids == token_id))
        if found != len(images):
            shown = placeholder or token
            raise DataError(f"{example.where}: {found} image placeholder(s) {shown!r} in the text but "
                            f"{len(images)} image(s) listed; make them equal (each placeholder consumes the "
                            "next image)", "image count mismatch")
    if images:
        ids = np.asarray(chat.encode([text], [images])["input_ids"][0], dtype=np.int64)
    n = len(ids)
    kind = np.where(np.isin(ids, renderer.media_ids), MEDIA, CONTENT).astype(np.int8)
    message_index = np.zeros(n, dtype=np.int64)
    bos = chat.tokenizer.bos_token_id
    if n and chat.adds_special_tokens(text) and bos is not None and ids[0] == bos:
        message_index[0], kind[0] = NO_MESSAGE, MARKER
    return RenderedRow(input_ids=ids, message_index=message_index, kind=kind, sampled=kind == CONTENT,
                       ends_turn=np.full(n, NO_MESSAGE, dtype=np.int64), roles=[PRETRAIN_ROLE], text=text)
