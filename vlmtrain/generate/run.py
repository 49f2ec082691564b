"""Generation: the model's own ``generation_config`` with the family's stop ids, one prompt at a time.

Rows are generated one by one, so no padding side can shift a prompt (the collator's right padding is never
touched) and each answer's finish reason is exact: ``stop`` (a family stop id was sampled) or ``length``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmtrain.generate.prompt import Prompt, PromptEncoder

log = logging.getLogger("vlmtrain")

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class Answer:
    prompt: Prompt
    text: str
    tokens: int
    finish: str  # "stop" or "length"

    def record(self) -> dict[str, Any]:
        return {"where": self.prompt.where, "question": self.prompt.question, "answer": self.text,
                "reference": self.prompt.reference, "tokens": self.tokens, "finish": self.finish}


def generation_config(model: Any, encoder: PromptEncoder, max_new_tokens: int | None) -> Any:
    """A copy of the model's ``generation_config`` that stops on the family's stop ids."""
    config = copy.deepcopy(model.generation_config)
    if encoder.stop_ids:
        config.eos_token_id = list(encoder.stop_ids)
    elif config.eos_token_id is None:
        from vlmtrain.generate.errors import GenerateError

        raise GenerateError("the run has no registered family (mask.role_boundaries) and the model's "
                            "generation_config names no eos_token_id; set model.family so generation knows "
                            "when to stop")
    else:
        log.warning("no registered family: stopping on the model's generation_config eos_token_id %s",
                    config.eos_token_id)
    if config.pad_token_id is None:
        pad = encoder.tokenizer.pad_token_id
        config.pad_token_id = pad if pad is not None else list(encoder.stop_ids or [config.eos_token_id])[0]
    config.max_new_tokens = max_new_tokens or config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    config.max_length = None
    return config


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _on(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Inputs on the model's device; pixel-like float inputs in the model's dtype (ids stay integers)."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in inputs.items()}


@torch.no_grad()
def generate(model: Any, encoder: PromptEncoder, prompts: Sequence[Prompt], *, max_new_tokens: int | None = None,
             streamer: Callable[[], Any] | None = None) -> list[Answer]:
    """Answer each prompt; ``streamer()`` makes a transformers streamer per prompt (tokens printed as they come)."""
    config = generation_config(model, encoder, max_new_tokens)
    stops = set(encoder.stop_ids or ([config.eos_token_id] if isinstance(config.eos_token_id, int)
                                     else config.eos_token_id or []))
    was_training = model.training
    model.eval()
    device = _device_of(model)
    answers = []
    try:
        for prompt in prompts:
            inputs = _on(encoder.encode(prompt), device, model.dtype)
            start = inputs["input_ids"].shape[1]
            out = model.generate(**inputs, generation_config=config,
                                 streamer=streamer() if streamer is not None else None)
            new = out[0, start:].tolist()
            finish = "stop" if new and new[-1] in stops else "length"
            text = encoder.tokenizer.decode(new, skip_special_tokens=True)
            answers.append(Answer(prompt=prompt, text=text.strip(), tokens=len(new), finish=finish))
    finally:
        model.train(was_training)
    return answers


def text_streamer(encoder: PromptEncoder) -> Callable[[], Any]:
    """Prints new tokens to stdout as they are sampled (the prompt and special tokens are not shown)."""
    from transformers import TextStreamer

    return lambda: TextStreamer(encoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
