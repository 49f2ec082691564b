"""TRL's SFTTrainer with vlmtrain's collator and a loss that is the true token mean of the effective batch."""

from __future__ import annotations

from typing import Any

from trl import SFTConfig, SFTTrainer


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


def sft_config(training: dict[str, Any]) -> SFTConfig:
    """The user's ``training`` section under TRL's own names, plus what vlmtrain's data path requires."""
    forced = {
        "remove_unused_columns": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "max_length": None,
        "packing": False,
    }
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
