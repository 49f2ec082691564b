"""``vlmtrain fit``: config -> family -> rendered, masked rows -> collator -> TRL trainer -> saved model."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vlmtrain.collate import CompletionOnlyCollator
from vlmtrain.render.pipeline import MaskedRenderer
from vlmtrain.train.model import apply_freeze, attach_adapter, load_model, parameter_summary
from vlmtrain.train.trainer import VlmSFTTrainer, sft_config

log = logging.getLogger("vlmtrain")


@dataclass
class FitResult:
    steps: int
    first_loss: float
    final_loss: float
    trained_tokens: int
    output_dir: Path


def load_processing_class(model_cfg: Any, is_vlm: bool) -> Any:
    """The processor for VLMs (it expands media), the tokenizer for text models — from the model's own path."""
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


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def fit(cfg: Any) -> FitResult:
    from vlmtrain.data.datasets import load_split
    from vlmtrain.embedded import materialize

    materialize(cfg)
    renderer = make_renderer(cfg)
    train_dataset = load_split(cfg, renderer, "train")
    eval_dataset = load_split(cfg, renderer, "eval") if cfg.data.eval else None

    training = OmegaConf.to_container(cfg.training, resolve=True)
    args = sft_config(training)
    family = renderer.family.family if renderer.family else None
    model = load_model(cfg.model, cfg.adapter, family, bf16=bool(args.bf16))
    apply_freeze(model, cfg.model.freeze, family)
    model = attach_adapter(model, cfg.adapter, family)
    trainable, total = parameter_summary(model)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    trainer = VlmSFTTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=CompletionOnlyCollator(renderer.renderer, renderer.media_ids),
        processing_class=renderer.renderer.processing_class,
    )
    processes = trainer.accelerator.num_processes
    log.info("processes: %d (%s), effective batch: %d rows", processes, trainer.accelerator.distributed_type,
             args.per_device_train_batch_size * args.gradient_accumulation_steps * processes)
    output = trainer.train()
    out_dir = Path(args.output_dir)
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        renderer.renderer.processing_class.save_pretrained(out_dir)
        from vlmtrain.config import to_yaml

        (out_dir / "vlmtrain_config.yaml").write_text(to_yaml(cfg))
        if cfg.adapter.type != "none" and cfg.adapter.merge_on_save:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(out_dir / "merged")
            renderer.renderer.processing_class.save_pretrained(out_dir / "merged")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = FitResult(steps=output.global_step, first_loss=losses[0] if losses else math.nan,
                       final_loss=losses[-1] if losses else math.nan,
                       trained_tokens=int(sum(train_dataset["num_trained"])) * math.ceil(args.num_train_epochs)
                       if args.max_steps <= 0 else int(sum(train_dataset["num_trained"])),
                       output_dir=out_dir)
    if trainer.is_world_process_zero():
        log.info("done: %d steps, loss %.4f -> %.4f, saved to %s", result.steps, result.first_loss,
                 result.final_loss, out_dir)
    return result
