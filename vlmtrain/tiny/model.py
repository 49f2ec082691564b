"""Random-init tiny models from the family's transformers config class."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .schema import VOCAB, FamilySpec, Tok


def _resolve(value: Any, tokenizer: PreTrainedTokenizerFast) -> Any:
    """Replace Tok/VOCAB placeholders with the trained tokenizer's ids and length."""
    if isinstance(value, Tok):
        token_id = tokenizer.convert_tokens_to_ids(value.text)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"config token {value.text!r} is not in the tokenizer")
        return token_id
    if value == VOCAB:
        return len(tokenizer)
    if isinstance(value, dict):
        return {k: _resolve(v, tokenizer) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, tokenizer) for v in value]
    return value


def build_config(spec: FamilySpec, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """Config with ids matching the tokenizer, so generation/padding/image merging agree with it."""
    kwargs = _resolve(dict(spec.config), tokenizer)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    # Special ids live on the language model's config (v5 deprecates them on the composite config).
    kwargs.get("text_config", kwargs).update(ids)
    config = getattr(transformers, spec.config_cls)(**kwargs)
    if config.model_type != spec.model_type:
        raise ValueError(f"{spec.name}: config model_type {config.model_type!r} != {spec.model_type!r}")
    return config


def build_model(spec: FamilySpec, config: PretrainedConfig, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if spec.is_vlm else AutoModelForCausalLM
    model = auto.from_config(config)
    # A family whose processor emits bfloat16 pixels (Llama 4) ships bfloat16 weights, as the real model does.
    dtype = getattr(config, "dtype", None)
    return model.to(dtype) if isinstance(dtype, torch.dtype) else model
