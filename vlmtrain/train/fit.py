"""``vlmtrain fit``: config -> family -> rendered, masked rows -> collator -> TRL trainer -> saved model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vlmtrain.collate import COLLATOR_COLUMNS, CompletionOnlyCollator
from vlmtrain.render.load import make_renderer
from vlmtrain.train.model import apply_freeze, attach_adapter, load_model, parameter_summary
from vlmtrain.train.trainer import VlmSFTTrainer, sft_config

log = logging.getLogger("vlmtrain")


@dataclass
class FitResult:
    steps: int
    first_loss: float
    final_loss: float
    trained_tokens_per_epoch: int
    output_dir: Path


def fit(cfg: Any) -> FitResult:
    from vlmtrain.data.datasets import load_split
    from vlmtrain.embedded import materialize

    materialize(cfg)
    renderer = make_renderer(cfg)
    train_rows = load_split(cfg, renderer, "train")
    trained_per_epoch = int(sum(train_rows["num_trained"]))
    # The trainer reads whole rows: hand it only what the collator uses, not the attribution columns.
    train_dataset = train_rows.select_columns(list(COLLATOR_COLUMNS))
    eval_dataset = (load_split(cfg, renderer, "eval").select_columns(list(COLLATOR_COLUMNS))
                    if cfg.data.eval else None)

    training = OmegaConf.to_container(cfg.training, resolve=True)
    args = sft_config(training)
    family = renderer.family.family if renderer.family else None
    model = load_model(cfg.model, cfg.adapter, family, bf16=bool(args.bf16))
    apply_freeze(model, cfg.model.freeze, family)
    model = attach_adapter(model, cfg.adapter, family)
    trainable, total = parameter_summary(model)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)

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
    # Logged losses (every logging_steps); the run's mean loss when no step was logged.
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [output.training_loss]
    result = FitResult(steps=output.global_step, first_loss=losses[0], final_loss=losses[-1],
                       trained_tokens_per_epoch=trained_per_epoch,
                       output_dir=out_dir)
    if trainer.is_world_process_zero():
        log.info("done: %d steps, loss %.4f -> %.4f, %d trained tokens per epoch, saved to %s", result.steps,
                 result.first_loss, result.final_loss, result.trained_tokens_per_epoch, out_dir)
    return result
