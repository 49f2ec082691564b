"""Assemble a family's real processor class around the tiny tokenizer, with tiny image settings."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import transformers
from transformers import PreTrainedTokenizerFast, ProcessorMixin

from .schema import ProcessorSpec


def build_processor(
    spec: ProcessorSpec, tokenizer: PreTrainedTokenizerFast, chat_template: str
) -> ProcessorMixin:
    """Image (+video) processors and the processor; the sizes keep a 32-48 px image to a few tokens."""
    parts = {"image_processor": _instantiate(*spec.image)}
    if spec.video is not None:
        parts["video_processor"] = _instantiate(*spec.video)
    parts.update({name: _instantiate(*part) for name, part in spec.parts.items()})
    processor_cls = getattr(transformers, spec.cls)
    extra = copy.deepcopy(dict(spec.kwargs))
    return processor_cls(tokenizer=tokenizer, chat_template=chat_template, **parts, **extra)


def _instantiate(cls_name: str, kwargs: Mapping[str, Any]) -> Any:
    # Deep copy: processors may adjust their size dicts in place, and the spec table is shared.
    return getattr(transformers, cls_name)(**copy.deepcopy(dict(kwargs)))
