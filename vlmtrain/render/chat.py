"""Rendering through the model's own chat template and tokenizing exactly as ``apply_chat_template`` does.

vlmtrain keeps no copy of any template: text comes from the processor's / tokenizer's
``apply_chat_template(tokenize=False)`` and ids from the processor call that ``apply_chat_template(tokenize=True)``
makes, so the training stream is the inference stream.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jinja2
import numpy as np
from transformers.utils import chat_template_utils

from vlmtrain.errors import VlmtrainError
from vlmtrain.render.messages import PARTS, STRING, probe_content_forms

# What a template raises for a conversation it cannot render: jinja2's errors (``raise_exception``, an
# undefined ``messages[0]``) and the Python errors its filters raise on missing items.
TEMPLATE_ERRORS = (jinja2.TemplateError, TypeError, KeyError, IndexError)


class ChatRenderer:
    """Renders conversations to text and tokenizes them the way the processor's ``apply_chat_template`` does."""

    def __init__(self, processing_class: Any, template_date: str = "2024-07-26") -> None:
        self.processing_class = processing_class
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self.is_processor = processing_class is not self.tokenizer
        name = getattr(self.tokenizer, "name_or_path", "") or "the model"
        if not getattr(self.tokenizer, "is_fast", False):
            raise VlmtrainError(f"model.name_or_path {name}: vlmtrain needs a fast tokenizer (tokenizer.json; "
                                "offsets attribute tokens to messages); convert it with transformers or use the "
                                "hub's fast one")
        if not getattr(processing_class, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise VlmtrainError(f"model.name_or_path {name}: the processor/tokenizer has no chat_template, and "
                                "vlmtrain renders only with the model's own template; add chat_template.jinja to the "
                                "model folder (e.g. from its instruct release) or train with format: pretrain")
        self.date = _dt.datetime.fromisoformat(template_date)
        template = getattr(processing_class, "chat_template", None) or self.tokenizer.chat_template
        self.template_kwargs = pinned_date_kwargs(template if isinstance(template, str) else "", self.date)
        self.reads_clock = isinstance(template, str) and "strftime_now" in template

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False,
               tools: list[dict] | None = None) -> str:
        """The template's text for ``messages`` (the date pinned)."""
        with _pinned_clock(self.date) if self.reads_clock else contextlib.nullcontext():
            return self.processing_class.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, tools=tools,
                **self.template_kwargs,
            )

    @functools.cached_property
    def content_forms(self) -> dict[str, str]:
        """Per role, the content form this template shows exactly (probed once, see ``messages.py``)."""
        return probe_content_forms(self.render, PARTS if self.is_processor else STRING)

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

    def encode(self, texts: list[str], media: dict[str, list[list[Any]]] | None = None, **kwargs: Any) -> Any:
        """The processor call ``apply_chat_template(tokenize=True)`` makes: media expansion and every model input.

        ``media`` holds processor keywords per modality (``{"images": [[...], ...]}``, see
        ``vlmtrain.media.kinds.processor_inputs``).
        """
        add_special = self.adds_special_tokens(texts[0])
        if any(self.adds_special_tokens(t) != add_special for t in texts):
            raise ValueError("rows in one batch disagree on BOS handling; render them with the same template")
        if not self.is_processor:
            return self.tokenizer(texts, add_special_tokens=add_special, **kwargs)
        present = {k: v for k, v in (media or {}).items()  # per-row lists, plus plain settings (do_sample_frames)
                   if not isinstance(v, list) or any(len(row) for row in v)}
        return self.processing_class(text=texts, **present, add_special_tokens=add_special, **kwargs)


def pinned_date_kwargs(template: str, date: _dt.datetime) -> dict[str, Any]:
    """The template variable that pins the date for templates that take it (``date_string``: Llama 3.x).

    Only variables the template uses are passed: processors hand unknown keywords to their ``__call__``.
    """
    return {"date_string": date.strftime("%d %b %Y")} if "date_string" in template else {}


class _PinnedDatetime(_dt.datetime):
    pinned: _dt.datetime = _dt.datetime(2024, 7, 26)

    @classmethod
    def now(cls, tz: Any = None) -> _dt.datetime:  # noqa: D102
        return cls.pinned


@contextlib.contextmanager
def _pinned_clock(date: _dt.datetime) -> Iterator[None]:
    """Pin the clock transformers' ``strftime_now`` template global reads, for one render.

    Templates that call ``strftime_now`` (Mistral, Llama 3.2) cannot be given the date as a variable:
    transformers 5.24 turns a callable template keyword into its string form. So the ``datetime`` that
    global reads is swapped for the duration of the render and restored, and only for those templates.
    """
    original = chat_template_utils.datetime
    _PinnedDatetime.pinned = date
    chat_template_utils.datetime = _PinnedDatetime
    try:
        yield
    finally:
        chat_template_utils.datetime = original
