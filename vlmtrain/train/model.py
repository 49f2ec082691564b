"""Load the model with the right Auto class, freeze what the config says, and attach LoRA/QLoRA."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from vlmtrain.devices import pick_attn_implementation, pick_dtype
from vlmtrain.errors import ConfigError
from vlmtrain.families.family import Family

log = logging.getLogger(__name__)

def load_model(model_cfg: Any, adapter_cfg: Any, family: Family | None, bf16: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    is_vlm = family.is_vlm if family is not None else True
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(model_cfg.dtype, bf16),
        "attn_implementation": pick_attn_implementation(model_cfg.attn_implementation),
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if adapter_cfg.type == "qlora":
        from transformers import BitsAndBytesConfig

        if not torch.cuda.is_available():
            raise RuntimeError("adapter.type=qlora needs a CUDA GPU and bitsandbytes (pip install 'vlmtrain[gpu]')")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"] if kwargs["dtype"] != torch.float32 else torch.bfloat16,
        )
    model = auto.from_pretrained(model_cfg.name_or_path, **kwargs)
    _keep_used_weight_conversions(model)
    return model


def _keep_used_weight_conversions(model: nn.Module) -> None:
    """Under ZeRO-3, transformers keeps *every* key renaming of the family for saving, also those the checkpoint
    never used, and reverting them writes ``model.model.layers...`` instead of the checkpoint's own names. Keep
    only the renamings that matched, as the ordinary load path does."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not hasattr(c, "was_used") or c.was_used()]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_groups(family: Family | None) -> dict[str, tuple[str, ...]]:
    if family is None:
        return {"vision_tower": (), "projector": (), "language_model": ()}
    return {"vision_tower": family.vision_tower, "projector": family.projector,
            "language_model": family.language_model}


def apply_freeze(model: nn.Module, freeze_cfg: Any, family: Family | None) -> None:
    """Freeze the configured parts. The projector is excluded from the vision tower even when nested in it."""
    groups = module_groups(family)
    for part in ("vision_tower", "projector", "language_model"):
        if not freeze_cfg.get(part):
            continue
        if not groups[part]:
            raise ConfigError(f"model.freeze.{part}: the family declares no {part} modules for this model; "
                              f"remove model.freeze.{part}, or freeze by training a LoRA adapter instead")
        others = tuple(p for g, ps in groups.items() if g != part for p in ps if p not in groups[part])
        count = 0
        for name, param in model.named_parameters():
            if _under(name, groups[part]) and not (_under(name, others) and part == "vision_tower"):
                param.requires_grad_(False)
                count += 1
        if count == 0:
            raise ConfigError(f"model.freeze.{part}: no parameters found under {list(groups[part])} in this "
                              f"model; its module names differ from the family's: remove model.freeze.{part} "
                              "or set model.family to the right family")
        log.info("froze %s (%d tensors)", part, count)


def language_linear_names(model: nn.Module, family: Family | None) -> list[str]:
    """Every nn.Linear inside the language model (never the vision tower, projector or lm_head)."""
    groups = module_groups(family)
    language = groups["language_model"] or ("model",)
    excluded = groups["vision_tower"] + groups["projector"]
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and _under(name, language) and not _under(name, excluded)]


def attach_adapter(model: nn.Module, adapter_cfg: Any, family: Family | None) -> nn.Module:
    if adapter_cfg.type == "none":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if adapter_cfg.type == "qlora":
        model = prepare_model_for_kbit_training(model)
    targets = adapter_cfg.target_modules
    if targets == "auto":
        targets = language_linear_names(model, family)
        if not targets:
            raise ConfigError("adapter.target_modules=auto found no linear layers in the language model; "
                              "list them explicitly (adapter.target_modules: [q_proj, v_proj, ...])")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | {n for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"adapter.target_modules: {missing} match no module of this model; use module names "
                          "it has (e.g. q_proj, v_proj) or adapter.target_modules: auto")
    config = LoraConfig(r=adapter_cfg.r, lora_alpha=adapter_cfg.alpha, lora_dropout=adapter_cfg.dropout,
                        target_modules=list(targets), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def require_trainable(trainable: int) -> None:
    """A run whose every parameter is frozen would 'succeed' without learning anything."""
    if trainable == 0:
        raise ConfigError("model.freeze: every parameter is frozen, so training would change nothing; unfreeze a "
                          "part (model.freeze.language_model: false) or attach an adapter (adapter.type: lora)")


def _numel(param: nn.Parameter) -> int:
    """The parameter's full size: under ZeRO-3 the local tensor is an empty placeholder, ``ds_numel`` is real."""
    return int(getattr(param, "ds_numel", 0) or param.numel())


def parameter_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of the whole model, also when ZeRO-3 has partitioned it."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total
