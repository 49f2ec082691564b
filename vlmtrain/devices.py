"""What the machine offers, decided once for training and generation alike: attention kernel and dtype."""

from __future__ import annotations

import importlib.util

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_attn_implementation(requested: str) -> str:
    """``auto`` -> flash_attention_2 on CUDA when flash-attn is installed, else sdpa."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def pick_dtype(requested: str, bf16: bool) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    return torch.bfloat16 if bf16 else torch.float32
