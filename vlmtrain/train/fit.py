"""``vlmtrain fit``: config -> family -> rendered, masked rows -> collator -> TRL trainer -> saved model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vlmtrain.collate import COLLATOR_COLUMNS, CompletionOnlyCollator
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.train import sharding
from vlmtrain.train.model import apply_freeze, attach_adapter, load_model, parameter_summary, require_trainable
from vlmtrain.train.record import is_rank0, write_config, write_run
from vlmtrain.train.resume import CheckpointMarker, start_run
from vlmtrain.train.samples import attach_eval_samples
from vlmtrain.train.signals import Preempted, PreemptionCallback, preempted_message, resume_command
from vlmtrain.train.streaming import open_stream
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
    from vlmtrain.data.split import load_split
    from vlmtrain.embedded import materialize

    materialize(cfg)
    run = start_run(OmegaConf.to_container(cfg.training, resolve=True), is_rank0())  # resume / overwrite checks
    write_config(cfg, cfg.training.output_dir)  # at the start, so a crashed run leaves a record
    renderer = make_renderer(cfg)
    packing = bool(cfg.data.get("packing", False))
    if packing:  # refused at start-up, before any data or weights are loaded
        from vlmtrain.pack.setup import require_packable

        require_packable(renderer.family.family if renderer.family else None, str(cfg.model.attn_implementation))
    stream = open_stream(cfg, renderer, run.training, run.checkpoint) if cfg.data.streaming else None
    train_rows = load_split(cfg, renderer, "train") if stream is None else None  # a stream renders as it trains
    trained_per_epoch = int(sum(train_rows["num_trained"])) if train_rows is not None else 0
    # The trainer reads whole rows: hand it only what the collator uses, not the attribution columns.
    train_dataset = train_rows.select_columns(list(COLLATOR_COLUMNS)) if train_rows is not None else stream.stand_in
    eval_rows = load_split(cfg, renderer, "eval") if cfg.data.eval else None
    eval_dataset = eval_rows.select_columns(list(COLLATOR_COLUMNS)) if eval_rows is not None else None

    splits = {**({"train": train_rows} if train_rows is not None else {}),
              **({"eval": eval_dataset} if eval_dataset is not None else {})}
    write_run(cfg.training.output_dir, splits, run.checkpoint)  # the data cache keys, before training starts
    training = run.training  # the training section less vlmtrain's own keys (resume_from_checkpoint, overwrite_...)
    training, shard = sharding.plan(training)  # FSDP2 / DeepSpeed settings, checked and normalised
    args = sft_config(training)
    sharding.before_model_load(args, shard)
    from transformers import set_seed

    set_seed(args.seed)  # before anything initialises weights (LoRA's lora_A, new heads): same seed, same start
    family = renderer.family.family if renderer.family else None
    model = load_model(cfg.model, cfg.adapter, family, bf16=bool(args.bf16))
    apply_freeze(model, cfg.model.freeze, family)
    model = attach_adapter(model, cfg.adapter, family)
    trainable, total = parameter_summary(model)
    require_trainable(trainable)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)

    collator: Any = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    if packing:  # pack-level datasets (the sampler shards packs), the packing collator and its guards
        from vlmtrain.pack.setup import packed_training

        packed = packed_training(cfg, family, model, renderer, train_rows, train_dataset, eval_rows, eval_dataset,
                                 seed=int(cfg.data.seed))
        collator = packed.collator
    trainer = VlmSFTTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=renderer.chat.processing_class,
        callbacks=[CheckpointMarker(), preemption := PreemptionCallback()],
    )
    if packing:  # TRL's constructor takes only row datasets; the Trainer itself iterates any sized dataset
        # (a stream's train packs are None here: stream.attach puts the packed stream in below)
        trainer.train_dataset, trainer.eval_dataset = packed.train, packed.eval
    if stream is not None:  # its collator wrapper, loader and state callback (vlmtrain/train/streaming.py)
        stream.attach(trainer)
    sharding.check_enabled(trainer, shard)
    attach_eval_samples(trainer, cfg, renderer)  # eval.samples: answers to fixed eval prompts at each evaluation
    processes = trainer.accelerator.num_processes
    log.info("processes: %d (%s), effective batch: %d rows", processes, trainer.accelerator.distributed_type,
             args.per_device_train_batch_size * args.gradient_accumulation_steps * processes)
    output = trainer.train(resume_from_checkpoint=run.checkpoint)
    if preemption.stopped is not None:
        raise Preempted(preempted_message(preemption.stopped, preemption.step or 0,
                                          str(Path(args.output_dir) / f"checkpoint-{preemption.step}"),
                                          resume_command()))
    out_dir = Path(args.output_dir)
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        renderer.chat.processing_class.save_pretrained(out_dir)
        from vlmtrain.config import to_yaml

        (out_dir / "vlmtrain_config.yaml").write_text(to_yaml(cfg))
    if cfg.adapter.type != "none" and cfg.adapter.merge_on_save:  # every rank: sharded merges synchronise
        sharding.save_merged(trainer, shard, out_dir, renderer.chat.processing_class,
                             lambda: load_model(cfg.model, cfg.adapter, family, bf16=bool(args.bf16)))
    # Logged losses (every logging_steps); the run's mean loss when no step was logged.
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [output.training_loss]
    result = FitResult(steps=output.global_step, first_loss=losses[0], final_loss=losses[-1],
                       trained_tokens_per_epoch=trained_per_epoch,
                       output_dir=out_dir)
    if trainer.is_world_process_zero():
        log.info("done: %d steps, loss %.4f -> %.4f, %d trained tokens per epoch, saved to %s", result.steps,
                 result.first_loss, result.final_loss, result.trained_tokens_per_epoch, out_dir)
    return result
