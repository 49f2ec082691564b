"""Build the render/mask path from a config: the model's processor (or tokenizer) and family, no weights.

Kept apart from ``vlmtrain.train`` so ``inspect-mask`` and ``preprocess`` start without importing TRL/PEFT.
"""

from __future__ import annotations

from typing import Any

from vlmtrain.render.pipeline import MaskedRenderer


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


def make_renderer(cfg: Any) -> MaskedRenderer:
    """The one render/mask path for this config (fit, preprocess and inspect-mask all start here)."""
    from vlmtrain.families.resolve import find_family

    model_type = model_type_of(cfg.model)
    entry = find_family(cfg.model.family, model_type)
    processing_class = load_processing_class(cfg.model, entry.is_vlm if entry else True)
    return MaskedRenderer(processing_class, model_type, cfg.mask, family=cfg.model.family,
                          template_date=cfg.data.template_date)
