"""Sharded training on the engines HF already drives: FSDP2 (``training.fsdp``) and DeepSpeed ZeRO
(``training.deepspeed``), under transformers' own key names, with the checks that keep it from failing silently.

``plan`` normalises and validates the ``training`` keys before ``SFTConfig`` is built; ``before_model_load``
makes ZeRO-3's ``zero.Init`` see the real world size; ``check_enabled`` refuses a run whose trainer did not
actually enable the engine asked for (accelerate never enables FSDP on the CPU, for one);
``unshard_output_embeddings`` is the FSDP2 fix for TRL's fused LM-head loss; ``save_merged`` merges a LoRA
adapter from the saved (whole) adapter and the base weights when the live weights may be sharded.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmtrain.errors import VlmtrainError

log = logging.getLogger("vlmtrain")

# Legacy ``training.fsdp`` strings (transformers' FSDPOption) that still mean something under FSDP2.
_FSDP2_OPTIONS = {"full_shard": ("reshard_after_forward", True), "shard_grad_op": ("reshard_after_forward", False),
                  "offload": ("cpu_offload", True), "auto_wrap": None}


class ShardingError(VlmtrainError):
    """A sharding setting vlmtrain refuses, or an engine that was asked for and not enabled."""


@dataclass(frozen=True)
class Sharding:
    """What the user asked for: ``engine`` is ``none``, ``fsdp`` (always FSDP2) or ``deepspeed``."""

    engine: str = "none"
    zero_stage: int | None = None

    @property
    def enabled(self) -> bool:
        return self.engine != "none"

    @property
    def zero3(self) -> bool:
        return self.engine == "deepspeed" and self.zero_stage == 3

    def __str__(self) -> str:
        return {"none": "none", "fsdp": "FSDP2"}.get(self.engine, f"DeepSpeed ZeRO-{self.zero_stage}")


def plan(training: dict[str, Any]) -> tuple[dict[str, Any], Sharding]:
    """The ``training`` mapping with ``fsdp``/``fsdp_config``/``deepspeed`` in the form TrainingArguments takes
    (``fsdp: true`` plus an FSDP2 ``fsdp_config``; ``deepspeed`` as a loaded, checked dict), and what was asked."""
    training = dict(training)
    fsdp = _fsdp_flag(training)
    deepspeed = training.get("deepspeed")
    if fsdp and deepspeed:
        raise ShardingError("training.fsdp and training.deepspeed are both set: choose one engine (remove the other)")
    if fsdp:
        training["fsdp"], training["fsdp_config"] = True, _fsdp2_config(fsdp, training.get("fsdp_config"))
        return training, Sharding("fsdp")
    training.pop("fsdp", None)
    if training.get("fsdp_config"):
        raise ShardingError("training.fsdp_config is set but training.fsdp is not: set training.fsdp: true to "
                            "shard with FSDP2, or remove training.fsdp_config")
    training.pop("fsdp_config", None)
    if deepspeed:
        ds_config = _deepspeed_config(deepspeed)
        training["deepspeed"] = ds_config
        return training, Sharding("deepspeed", int(ds_config.get("zero_optimization", {}).get("stage", 0)))
    training.pop("deepspeed", None)
    return training, Sharding()


def _fsdp_flag(training: dict[str, Any]) -> str | bool:
    """``training.fsdp`` as True or a legacy option string; False when unset. Lists become space-joined strings."""
    value = training.get("fsdp")
    if value is None or value is False or value == "" or value == []:
        return False
    if value is True:
        return True
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
        return False
    if not isinstance(value, str):
        raise ShardingError(f"training.fsdp: expected true or FSDP options like 'full_shard', got {value!r}")
    return value


def _fsdp2_config(fsdp: str | bool, raw: Any) -> dict[str, Any]:
    """An FSDP2 ``fsdp_config``: version forced to 2, a final state dict that ``from_pretrained`` can load."""
    if raw is None:
        config: dict[str, Any] = {}
    elif isinstance(raw, str):
        config = _read_json(raw, "training.fsdp_config")
    elif isinstance(raw, dict):
        config = dict(raw)
    else:
        raise ShardingError(f"training.fsdp_config: expected a mapping or a JSON file path, got {raw!r}")
    config = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in config.items()}
    version = int(config.get("version", 2))
    if version != 2:
        raise ShardingError(f"training.fsdp_config.version={version}: FSDP1 is deprecated and not supported by "
                            "vlmtrain (mixed frozen/trainable units, LoRA and the fused LM-head loss are only "
                            "handled under FSDP2); set training.fsdp_config.version: 2 or remove it")
    config["version"] = 2
    state_dict_type = str(config.get("state_dict_type", "FULL_STATE_DICT")).upper()
    if "SHARDED" in state_dict_type:
        raise ShardingError(f"training.fsdp_config.state_dict_type={config['state_dict_type']}: the final model "
                            "would be written as per-rank shards that from_pretrained cannot load; set "
                            "training.fsdp_config.state_dict_type: FULL_STATE_DICT (gathered on save) or remove it")
    if isinstance(fsdp, str):  # legacy option strings, translated as transformers would, minus its warning
        for option in fsdp.split():
            if option.lower() not in _FSDP2_OPTIONS:
                raise ShardingError(f"training.fsdp={fsdp!r}: '{option}' is not an FSDP2 option (FSDP2 knows "
                                    f"{', '.join(_FSDP2_OPTIONS)}); set training.fsdp: true and tune "
                                    "training.fsdp_config (e.g. reshard_after_forward)")
            if _FSDP2_OPTIONS[option.lower()]:
                key, value = _FSDP2_OPTIONS[option.lower()]
                config.setdefault(key, value)
    return config


def _deepspeed_config(raw: Any) -> dict[str, Any]:
    """The DeepSpeed config as a dict, refused when ZeRO-3 would save no weights or DeepSpeed is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ShardingError("training.deepspeed is set but DeepSpeed is not installed: pip install "
                            "'vlmtrain[deepspeed]' (or remove training.deepspeed)")
    if isinstance(raw, str):
        config = _read_json(raw, "training.deepspeed")
    elif isinstance(raw, dict):
        config = copy.deepcopy(raw)
    else:
        raise ShardingError(f"training.deepspeed: expected a JSON file path or a mapping, got {raw!r}")
    zero = config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ShardingError("training.deepspeed: ZeRO-3 without zero_optimization."
                            "stage3_gather_16bit_weights_on_model_save: true saves no usable weights (every rank "
                            "holds a shard); set it to true (configs/deepspeed/zero3.json does)")
    return config


def _read_json(path: str, key: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ShardingError(f"{key}: no such file '{path}' (relative paths are relative to the working directory "
                            f"{Path.cwd()}); give an existing JSON file, e.g. configs/deepspeed/zero3.json")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ShardingError(f"{key}: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ShardingError(f"{key}: {path} must hold a JSON object")
    return data


def before_model_load(args: Any, sharding: Sharding) -> None:
    """FSDP needs a distributed launch (Trainer refuses it otherwise, with a traceback). ZeRO-3 partitions weights
    while ``from_pretrained`` loads them (``zero.Init``), which needs DeepSpeed's process group up and HF's
    DeepSpeed config registered first; otherwise every rank loads for world size 1."""
    from transformers.training_args import ParallelMode

    if sharding.enabled and args.parallel_mode != ParallelMode.DISTRIBUTED:
        key = "training.fsdp" if sharding.engine == "fsdp" else "training.deepspeed"
        raise ShardingError(f"{key} needs a distributed launch, also on one GPU: run `vlmtrain fit CONFIG` "
                            "(it launches torchrun itself when sharding is set) or `torchrun --nproc-per-node N -m "
                            f"vlmtrain fit CONFIG`, or remove {key}")
    if not sharding.zero3:
        return
    import deepspeed
    from transformers.integrations import is_deepspeed_zero3_enabled

    args.device  # noqa: B018 - initialises torch.distributed (accelerate's PartialState) for this rank
    deepspeed.init_distributed(dist_backend="gloo" if args.device.type == "cpu" else None)
    if not is_deepspeed_zero3_enabled():
        raise ShardingError("training.deepspeed: ZeRO-3 was asked for but transformers did not register the "
                            "DeepSpeed config before loading the model; this is a vlmtrain bug, please report it")


def check_enabled(trainer: Any, sharding: Sharding) -> None:
    """Stop when the trainer did not enable the engine asked for: never train plain DDP in its place."""
    from accelerate.utils import DistributedType

    distributed_type = trainer.accelerator.distributed_type
    if sharding.engine == "fsdp":
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        if not trainer.is_fsdp_enabled or distributed_type != DistributedType.FSDP or plugin is None:
            raise ShardingError(
                f"training.fsdp is set but accelerate did not enable FSDP (it chose {distributed_type.value}): "
                "accelerate only enables FSDP on GPU/accelerator backends, never on the CPU; run on GPUs, or "
                "remove training.fsdp to train plain data-parallel")
        if plugin.fsdp_version != 2:
            raise ShardingError(f"training.fsdp: accelerate enabled FSDP{plugin.fsdp_version}, vlmtrain needs "
                                "FSDP2; unset FSDP_VERSION / the accelerate config's fsdp_version")
    elif sharding.engine == "deepspeed" and (not trainer.is_deepspeed_enabled
                                             or distributed_type != DistributedType.DEEPSPEED):
        raise ShardingError(f"training.deepspeed is set but accelerate did not enable DeepSpeed (it chose "
                            f"{distributed_type.value}); launch with torchrun (--nproc-per-node) or remove "
                            "training.deepspeed")


def unshard_output_embeddings(model: nn.Module) -> None:
    """FSDP2 fix for TRL's fused LM-head loss: TRL reads ``lm_head.weight`` without calling ``lm_head``, so the
    FSDP unit accelerate gave ``lm_head`` never runs its hooks, never unshards, and each rank keeps its own
    gradient (silently wrong, ~40% off). Unsharding it here makes the weight a plain, all-gathered tensor for
    the forward; the root's post-backward callback then reduce-scatters its gradient and reshards it."""
    from torch.distributed.fsdp import FSDPModule

    if not (model.training and torch.is_grad_enabled()):
        return  # without a backward, TRL's own DTensor gather is exact and nothing would reshard the unit
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, FSDPModule):
        head.unshard()


def save_merged(trainer: Any, sharding: Sharding, out_dir: Path, processor: Any, reload_base: Any) -> None:
    """Write merged weights to ``out_dir/merged``. Unsharded: merge the live model on rank 0. Sharded (the live
    weights are shards): every rank waits for the saved whole adapter, then rank 0 merges it into freshly loaded
    base weights (``reload_base()``), outside ZeRO-3's partitioned loading."""
    merged_dir = out_dir / "merged"
    if not sharding.enabled:
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(merged_dir)
            processor.save_pretrained(merged_dir)
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        from peft import PeftModel

        with _zero3_loading_disabled():
            base = reload_base()
        merged = PeftModel.from_pretrained(base, out_dir).merge_and_unload()
        merged.save_pretrained(merged_dir)
        processor.save_pretrained(merged_dir)
        log.info("merged the saved adapter into the base weights (%s run): %s", sharding, merged_dir)
    trainer.accelerator.wait_for_everyone()


class _zero3_loading_disabled:
    """Load a whole model in one process while a ZeRO-3 run's HF DeepSpeed config is registered."""

    def __enter__(self) -> None:
        from transformers.integrations import deepspeed as hf_ds

        self._saved = hf_ds._hf_deepspeed_config_weak_ref
        hf_ds.unset_hf_deepspeed_config()

    def __exit__(self, *exc: object) -> None:
        from transformers.integrations import deepspeed as hf_ds

        hf_ds._hf_deepspeed_config_weak_ref = self._saved
