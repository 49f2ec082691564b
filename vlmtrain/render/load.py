"""Load what rendering needs from a model folder: its processor (or tokenizer) and model type, no weights."""

from __future__ import annotations

from typing import Any


def load_processing_class(model_cfg: Any, is_vlm: bool) -> Any:
    """The processor for VLMs (it expands media), else the tokenizer — from the model's own path."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs = {"trust_remote_code": model_cfg.trust_remote_code}
    if is_vlm:
        processor = AutoProcessor.from_pretrained(model_cfg.name_or_path, **kwargs)
        if hasattr(processor, "tokenizer"):
            return processor
    return AutoTokenizer.from_pretrained(model_cfg.name_or_path, **kwargs)


def model_type_of(model_cfg: Any) -> str | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code)
    return getattr(config, "model_type", None)

