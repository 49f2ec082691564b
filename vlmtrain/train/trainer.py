"""TRL's SFTTrainer with vlmtrain's collator and a loss that is the true token mean of the effective batch."""

from __future__ import annotations

import copy
from typing import Any

from trl import SFTConfig, SFTTrainer

from vlmtrain.config import MANAGED_TRAINING_KEYS


class VlmSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is always (sum of token losses) / (trained tokens in the whole effective batch).

    Trainer only counts ``num_items_in_batch`` across gradient-accumulation micro-batches (and ranks) when it
    believes the model takes loss kwargs; without that count the loss becomes a mean of per-micro-batch means,
    which weights short rows more under accumulation. TRL's fused loss divides by the count when given, so
    we force the count and tell Trainer the loss is already scaled for accumulation.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True
        self._eval_totals = [0.0, 0]  # (sum of token losses, trained tokens) of the running evaluation

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        """TRL's loss, with the FSDP2 LM-head unit unsharded first (see ``sharding.unshard_output_embeddings``)."""
        if self.is_fsdp_enabled:
            from vlmtrain.train.sharding import unshard_output_embeddings

            unshard_output_embeddings(model)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
        """Also accumulate this batch's token-loss sum: TRL's eval loss is the batch's own token mean."""
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if loss is not None and inputs.get("labels") is not None:
            count = int(inputs["labels"][..., 1:].ne(-100).sum())
            self._eval_totals[0] += float(loss) * count
            self._eval_totals[1] += count
        return loss, logits, labels

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        """``<prefix>_loss`` is the exact token mean over every eval row (on every rank), like training's loss;
        Trainer's own is a mean of per-batch means, which weights the tokens of short batches more."""
        import torch

        self._eval_totals = [0.0, 0]
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        dtype = torch.float32 if self.args.device.type == "mps" else torch.float64
        totals = self.accelerator.reduce(torch.tensor(self._eval_totals, dtype=dtype, device=self.args.device),
                                         reduction="sum")
        key = f"{metric_key_prefix}_loss"
        if key in output.metrics and float(totals[1]) > 0:
            output.metrics[key] = float(totals[0] / totals[1])
        return output

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Full-model weights are loaded strictly with the model's key renamings (transformers issue 43701)."""
        from transformers.trainer import _is_peft_model

        from vlmtrain.train.resume import load_full_weights

        plain = model is None and not (_is_peft_model(self.model) or self.is_fsdp_enabled
                                       or self.is_deepspeed_enabled)
        if not (plain and load_full_weights(self.model, resume_from_checkpoint)):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


def sft_config(training: dict[str, Any]) -> SFTConfig:
    """The user's ``training`` section under TRL's own names, plus what vlmtrain's data path requires."""
    forced = copy.deepcopy(MANAGED_TRAINING_KEYS)  # load_config already refused user values that differ
    clashes = {k for k in forced if k in training and training[k] != forced[k]}
    if clashes:
        raise ValueError(f"training.{sorted(clashes)[0]} is managed by vlmtrain (rows are pre-rendered, masked and "
                         "never truncated); remove it from the config")
    defaults = {"use_cpu": not _has_accelerator()}  # without it, torchrun on the CPU trains N unrelated copies
    return SFTConfig(**{**defaults, **training, **forced})


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()
