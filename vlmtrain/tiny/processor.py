"""Assemble a family's real processor class around the tiny tokenizer, with tiny image settings."""

from __future__ import annotations

import transformers
from transformers import PreTrainedTokenizerFast, ProcessorMixin

from .specs import ProcessorSpec


def build_processor(spec: ProcessorSpec, tokenizer: PreTrainedTokenizerFast, chat_template: str) -> ProcessorMixin:
    """Instantiate image (+video) processors and the processor; sizes keep a 32-48 px image to a few tokens."""
    image_cls, image_kwargs = spec.image
    parts = {"image_processor": getattr(transformers, image_cls)(**image_kwargs)}
    if spec.video is not None:
        video_cls, video_kwargs = spec.video
        parts["video_processor"] = getattr(transformers, video_cls)(**video_kwargs)
    processor_cls = getattr(transformers, spec.cls)
    return processor_cls(tokenizer=tokenizer, chat_template=chat_template, **parts, **spec.kwargs)
