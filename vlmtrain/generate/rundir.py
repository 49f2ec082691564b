"""A finished run's output directory: its resolved config, and the trained model (or base + LoRA adapter).

``fit`` writes the model (or the PEFT adapter), the processor and ``vlmtrain_config.yaml`` to
``training.output_dir``; a trainer checkpoint (``checkpoint-N``) reads its run's config from the folder above.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtrain.generate.errors import GenerateError

CONFIG_FILE = "vlmtrain_config.yaml"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Run:
    """``path`` holds the weights; ``cfg`` is the run's resolved config; ``adapter`` says PEFT adapter or model."""

    path: Path
    cfg: Any
    adapter: bool

    @property
    def base(self) -> str:
        return str(self.cfg.model.name_or_path)

    def render_cfg(self) -> Any:
        """The config the prompt is rendered with: a full model's own folder holds its processor and config."""
        if self.adapter:
            return self.cfg
        cfg = copy.deepcopy(self.cfg)
        cfg.model.name_or_path = str(self.path)
        return cfg


def locate(target: str) -> Path:
    """A run directory, or a config file whose ``training.output_dir`` is one."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        from vlmtrain.config import load_config

        return Path(str(load_config(path).training.output_dir)).expanduser()
    raise GenerateError(f"{target}: no such run directory or config file; pass a fit run's training.output_dir "
                        "or the config it was trained with")


def read_run(run_dir: Path) -> Run:
    """The run in ``run_dir``; a folder without a vlmtrain config or without weights is an error."""
    from vlmtrain.config import load_config
    from vlmtrain.embedded import materialize

    config = next((d / CONFIG_FILE for d in (run_dir, run_dir.parent) if (d / CONFIG_FILE).is_file()), None)
    if config is None:
        raise GenerateError(f"{run_dir}: not a vlmtrain run directory (no {CONFIG_FILE}); pass the "
                            "training.output_dir of a finished `vlmtrain fit` run or its config")
    if (run_dir / "adapter_config.json").is_file():
        adapter = True
    elif (run_dir / "config.json").is_file() and any((run_dir / w).is_file() for w in _WEIGHTS):
        adapter = False
    else:
        raise GenerateError(f"{run_dir}: the run directory holds no model (no adapter_config.json, no config.json "
                            "with weights); did the run finish? Point at its training.output_dir or a checkpoint-N")
    cfg = load_config(config)
    materialize(cfg)  # a config naming tiny:<family> rebuilds the base if the cache was cleared
    return Run(path=run_dir, cfg=cfg, adapter=adapter)


def generative_auto_class(name_or_path: str, trust_remote_code: bool) -> Any:
    """The Auto class that gives this checkpoint a generation head, or a one-line error when it has none."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    )

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    auto_map = getattr(config, "auto_map", None) or {}
    for auto, mapping in ((AutoModelForImageTextToText, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING),
                          (AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING)):
        if type(config) in mapping or auto.__name__ in auto_map:
            return auto
    raise GenerateError(f"{name_or_path}: model_type {config.model_type!r} is not a generative model (no "
                        "image-text-to-text or causal-LM head); generate and merge need the model fit trained")


def load_model(run: Run, *, device: str = "cpu", dtype: Any = "auto") -> Any:
    """The trained model in eval mode: the saved model, or the base with the LoRA adapter applied (unmerged)."""
    from vlmtrain.devices import pick_attn_implementation

    name = run.base if run.adapter else str(run.path)
    trust = bool(run.cfg.model.trust_remote_code)
    auto = generative_auto_class(name, trust)
    if dtype == "auto" and str(run.cfg.model.dtype) != "auto":
        dtype = str(run.cfg.model.dtype)
    model = auto.from_pretrained(name, dtype=dtype, trust_remote_code=trust,
                                 attn_implementation=pick_attn_implementation(str(run.cfg.model.attn_implementation)))
    if run.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run.path))
    if not model.can_generate():
        raise GenerateError(f"{name}: {type(model).__name__} cannot generate; generate needs a model with a "
                            "language-model head")
    return model.to(device).eval()
