"""`build_tiny`: write a tiny tokenizer/processor + config (+ random weights) for one family."""

from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

from .specs import FAMILIES
from .templates import shared_special_tokens, spec_for, template_source

TINY_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
MARKER = "tiny_build.json"  # written last: its presence means the directory is complete


def _is_complete(out_dir: Path, family: str, with_model: bool, seed: int) -> bool:
    """True if out_dir already holds what was asked for; refuses to overwrite another family's build."""
    try:
        done = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if done.get("family") != family:
        raise ValueError(f"{out_dir} already holds a tiny {done.get('family')!r} build, not {family!r}")
    return not with_model or (bool(done.get("with_model")) and done.get("seed") == seed)


def build_tiny(
    family: str,
    out_dir: str | Path,
    *,
    with_model: bool = False,
    templates_root: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Save a tiny tokenizer/processor, config.json and (if with_model) random weights to out_dir.

    Loadable offline with AutoProcessor/AutoTokenizer/AutoConfig and AutoModelForImageTextToText (VLMs) or
    AutoModelForCausalLM (text). Needs no network. Idempotent and safe across processes: a completed
    build is reused (a tokenizer-only build is upgraded in place when weights are asked for).
    """
    spec = spec_for(family)
    out_dir = Path(out_dir)
    if _is_complete(out_dir, family, with_model, seed):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / ".tiny_build.lock")):
        if _is_complete(out_dir, family, with_model, seed):
            return out_dir
        (out_dir / MARKER).unlink(missing_ok=True)
        # torch/transformers load here, not at package import: cached builds and the dataset stay cheap.
        from .model import build_config, build_model
        from .processor import build_processor
        from .tokenizer import build_tokenizer

        template = template_source(family, templates_root)
        tokenizer = build_tokenizer(spec.tokenizer, template, shared_special_tokens(family, templates_root))
        if spec.processor is not None:
            build_processor(spec.processor, tokenizer, template).save_pretrained(out_dir)
        else:
            tokenizer.save_pretrained(out_dir)
        config = build_config(spec, tokenizer)
        if with_model:
            build_model(spec, config, seed).save_pretrained(out_dir)
        else:
            config.save_pretrained(out_dir)
        meta = {"family": family, "model_type": spec.model_type, "with_model": with_model, "seed": seed}
        (out_dir / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
