"""Rendering through the model's own chat template and tokenizing exactly as ``apply_chat_template`` does.

vlmtrain keeps no copy of any template: text comes from the processor's / tokenizer's
``apply_chat_template(tokenize=False)`` and ids from the processor call that ``apply_chat_template(tokenize=True)``
makes, so the training stream is the inference stream.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from transformers.utils import chat_template_utils


class _PinnedDatetime(_dt.datetime):
    """A ``datetime`` whose ``now()`` is fixed, so templates that read the clock render the same every day."""

    pinned: _dt.datetime = _dt.datetime(2024, 7, 26)

    @classmethod
    def now(cls, tz: Any = None) -> _dt.datetime:  # noqa: D102
        return cls.pinned


@contextlib.contextmanager
def pinned_clock(date: _dt.datetime) -> Iterator[None]:
    """Pin the clock transformers' ``strftime_now`` template global reads (it is not overridable by kwargs)."""
    original = chat_template_utils.datetime
    _PinnedDatetime.pinned = date
    chat_template_utils.datetime = _PinnedDatetime
    try:
        yield
    finally:
        chat_template_utils.datetime = original


class ChatRenderer:
    """Renders conversations to text and tokenizes them the way the processor's ``apply_chat_template`` does."""

    def __init__(self, processing_class: Any, template_date: str = "2024-07-26") -> None:
        self.processing_class = processing_class
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self.is_processor = processing_class is not self.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("vlmtrain needs a fast tokenizer (offsets are used to attribute tokens to messages)")
        if not getattr(processing_class, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the model's processor/tokenizer has no chat_template; vlmtrain renders with the model's "
                             "own template only")
        self.date = _dt.datetime.fromisoformat(template_date)
        template = getattr(processing_class, "chat_template", None) or self.tokenizer.chat_template
        # Only templates that read ``date_string`` get it: processors forward unknown kwargs to __call__.
        self.template_kwargs = ({"date_string": self.date.strftime("%d %b %Y")}
                                if isinstance(template, str) and "date_string" in template else {})

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False,
               tools: list[dict] | None = None) -> str:
        """The template's text for ``messages`` (the date pinned)."""
        with pinned_clock(self.date):
            return self.processing_class.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, tools=tools,
                **self.template_kwargs,
            )

    def adds_special_tokens(self, text: str) -> bool:
        """Mirror ``apply_chat_template(tokenize=True)``: tokenizers never add special tokens; processors do,
        unless the rendered text already starts with BOS."""
        if not self.is_processor:
            return False
        bos = self.tokenizer.bos_token
        return not (bos is not None and text.startswith(bos))

    def text_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Ids and character start offsets of ``text`` before any media expansion."""
        enc = self.tokenizer(text, add_special_tokens=self.adds_special_tokens(text), return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        return ids, offsets[:, 0]

    def encode(self, texts: list[str], images: list[list[Any]] | None, **kwargs: Any) -> Any:
        """The processor call ``apply_chat_template(tokenize=True)`` makes: media expansion and every model input."""
        add_special = self.adds_special_tokens(texts[0])
        if any(self.adds_special_tokens(t) != add_special for t in texts):
            raise ValueError("rows in one batch disagree on BOS handling; render them with the same template")
        if not self.is_processor:
            return self.tokenizer(texts, add_special_tokens=add_special, **kwargs)
        has_images = images is not None and any(len(row) for row in images)
        return self.processing_class(text=texts, images=images if has_images else None,
                                     add_special_tokens=add_special, **kwargs)
