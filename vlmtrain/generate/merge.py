"""``vlmtrain merge``: fold a run's LoRA adapter into its base model and prove the merge changed nothing.

The adapter is applied to the base named in the run's ``vlmtrain_config.yaml`` (``model.name_or_path``),
in float32 so the merge itself adds no rounding; the merged weights are saved (in the base checkpoint's dtype
unless ``dtype`` says otherwise) with the processor and a ``vlmtrain_config.yaml`` naming them, so the output
is itself a run directory for ``generate``. The saved folder is then loaded back with ``from_pretrained`` and
its logits on one probe row are compared with the adapter model's:

    max |merged - adapter| <= tol * (1 + max |adapter|),  tol = 1e-4 (float32), 2e-2 (bfloat16/float16)

(16-bit saves round every weight to 8-11 mantissa bits, hence the looser bound).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmtrain.generate.errors import GenerateError
from vlmtrain.generate.prompt import Prompt, PromptEncoder
from vlmtrain.generate.rundir import CONFIG_FILE, Run, generative_auto_class, locate, read_run

log = logging.getLogger("vlmtrain")

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MergeResult:
    output: Path
    dtype: torch.dtype
    max_abs_diff: float
    tolerance: float  # the absolute bound the difference was checked against


def probe_prompt(encoder: PromptEncoder, folder: Path) -> tuple[Prompt, str]:
    """A fixed conversation (with a synthetic image for VLMs, so the vision path runs too) and its answer text."""
    images = []
    if encoder.is_processor:
        from PIL import Image

        path = folder / "probe.png"
        Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(path)
        images.append(str(path))
    user = {"role": "user", "content": [*({"type": "image"} for _ in images),
                                        {"type": "text", "text": "Describe the picture in one sentence."}]}
    return Prompt(messages=[user], images=images, where="merge probe"), "A grey gradient from dark to light."


@torch.no_grad()
def _logits(model: Any, inputs: Any) -> torch.Tensor:
    device = next(model.parameters()).device
    kwargs = {k: (v.to(device, torch.float32) if v.is_floating_point() else v.to(device))
              if torch.is_tensor(v) else v for k, v in inputs.items()}
    return model(**kwargs).logits.float().cpu()


def _saved_dtype(run: Run, requested: str) -> torch.dtype:
    if requested != "auto":
        if requested not in _DTYPES:
            raise GenerateError(f"--dtype {requested}: use auto, float32, bfloat16 or float16")
        return _DTYPES[requested]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(run.base, trust_remote_code=bool(run.cfg.model.trust_remote_code))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = _DTYPES.get(dtype)
    return dtype if dtype in TOLERANCE else torch.float32


def _write_config(run: Run, output: Path) -> None:
    from vlmtrain.config import to_yaml

    cfg = copy.deepcopy(run.cfg)
    cfg.model.name_or_path = str(output.resolve())
    cfg.adapter.type = "none"
    cfg.adapter.merge_on_save = False
    cfg.training.output_dir = str(output.resolve())
    (output / CONFIG_FILE).write_text(to_yaml(cfg))


def merge_run(target: str, output: str | None = None, *, dtype: str = "auto", device: str = "cpu") -> MergeResult:
    """Merge, save, reload and check; a mismatch beyond the tolerance is an error (the folder is kept to inspect)."""
    from peft import PeftModel

    run = read_run(locate(target))
    if not run.adapter:
        raise GenerateError(f"{run.path}: the run saved full weights, not a LoRA adapter (adapter.type: none); "
                            "there is nothing to merge — use the folder as it is")
    out = Path(output).expanduser() if output else run.path / "merged"
    if out.resolve() == run.path.resolve():
        raise GenerateError(f"--output {out}: is the run directory itself; merge into a new folder")
    save_dtype = _saved_dtype(run, dtype)
    trust = bool(run.cfg.model.trust_remote_code)
    auto = generative_auto_class(run.base, trust)
    base = auto.from_pretrained(run.base, dtype=torch.float32, trust_remote_code=trust)
    model = PeftModel.from_pretrained(base, str(run.path)).to(device).eval()
    encoder = PromptEncoder(run.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        prompt, answer = probe_prompt(encoder, Path(tmp))
        inputs = encoder.encode(prompt, completion=answer)
    expected = _logits(model, inputs)

    merged = model.merge_and_unload().to(save_dtype)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    encoder.processing_class.save_pretrained(out)
    _write_config(run, out)
    del model, merged, base

    reloaded = auto.from_pretrained(out, dtype=torch.float32, trust_remote_code=trust).to(device).eval()
    if any("lora_" in name for name, _ in reloaded.named_parameters()):
        raise GenerateError(f"{out}: the saved model still holds LoRA weights; the merge did not happen")
    got = _logits(reloaded, inputs)
    diff = float((got - expected).abs().max())
    bound = TOLERANCE[save_dtype] * (1.0 + float(expected.abs().max()))
    if diff > bound:
        raise GenerateError(f"{out}: the merged model's logits differ from the adapter model's by {diff:.3g} on the "
                            f"probe row (allowed {bound:.3g} for {str(save_dtype).removeprefix('torch.')}); the "
                            "merge is not faithful — do not use the folder")
    log.info("merged %s into %s -> %s (%s); probe logits max |diff| %.3g <= %.3g", run.path, run.base, out,
             save_dtype, diff, bound)
    return MergeResult(output=out, dtype=save_dtype, max_abs_diff=diff, tolerance=bound)
