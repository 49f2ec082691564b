"""`build_tiny`: write a tiny tokenizer/processor + config (+ random weights) for one family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from .specs import FAMILIES
from .templates import shared_special_tokens, spec_for, template_source

TINY_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
MARKER = "tiny_build.json"  # written last: its presence means the directory is complete
BUILD_VERSION = 2  # bump when a build's files change (2: generation_config.json with the stop ids)


def _is_complete(out_dir: Path, family: str, with_model: bool, seed: int) -> bool:
    """True if out_dir already holds what was asked for; refuses to overwrite another family's build."""
    try:
        done = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if done.get("family") != family:
        raise ValueError(f"{out_dir} already holds a tiny {done.get('family')!r} build, not {family!r}")
    if done.get("version") != BUILD_VERSION:
        return False
    return not with_model or (bool(done.get("with_model")) and done.get("seed") == seed)


def generation_config(tokenizer: Any, stops: tuple[str, ...]) -> Any:
    """``generation_config.json`` as a hub model ships it: ``eos_token_id`` lists the ids an engine stops on."""
    from transformers import GenerationConfig

    ids = [tokenizer.convert_tokens_to_ids(t) for t in stops]
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=ids if len(ids) > 1 else ids[0])


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
        # torch/transformers load here, not at package import: cached builds and the dataset stay cheap.
        from .tokenizer import build_tokenizer

        template = template_source(family, templates_root)
        tokenizer = build_tokenizer(spec.tokenizer, template, shared_special_tokens(family, templates_root))
        write_build(family, tokenizer, out_dir, with_model=with_model, seed=seed)
    return out_dir


def write_build(family: str, tokenizer: Any, out_dir: str | Path, *, with_model: bool = False, seed: int = 0
                ) -> Path:
    """Save the family's processor around ``tokenizer`` (which carries the template), config.json sized to it,
    generation_config.json and (if with_model) random weights: a tiny model on any vocabulary, a real one
    included (its embeddings then have the real vocabulary's rows, at the tiny hidden size)."""
    from .model import build_config, build_model
    from .processor import build_processor
    from .tokenizer import check_single_ids

    spec, out_dir = spec_for(family), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    if spec.processor is not None:
        build_processor(spec.processor, tokenizer, tokenizer.chat_template).save_pretrained(out_dir)
    else:
        tokenizer.save_pretrained(out_dir)
    config = build_config(spec, tokenizer)
    check_single_ids(tokenizer, list(spec.stops))
    generation = generation_config(tokenizer, spec.stops)
    if with_model:
        model = build_model(spec, config, seed)
        model.generation_config = generation
        model.save_pretrained(out_dir)
    else:
        config.save_pretrained(out_dir)
        generation.save_pretrained(out_dir)
    meta = {"family": family, "model_type": spec.model_type, "with_model": with_model, "seed": seed,
            "version": BUILD_VERSION}
    (out_dir / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
