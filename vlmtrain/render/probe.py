"""Read what a chat template and its processor do, by running them: where the stop token is written, which ids
an inference engine stops on, and which tokens a processor's media expansion emits.

Registry entries are checked against these facts, and a model type the registry does not know gets its family
derived from them (``vlmtrain/mask/derive.py``). Every probe renders through the model's own template; none
reads the template's source.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtrain.render.chat import TEMPLATE_ERRORS, ChatRenderer
from vlmtrain.render.messages import in_forms

FIRST, SECOND = "Hello there.", "Bye now."
_PROBE_CHAT = [("user", "Say hello."), ("assistant", FIRST), ("user", "Say bye."), ("assistant", SECOND)]
# Tokenizer/processor attributes that name special tokens but are never media.
_NOT_MEDIA = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
              "end_of_utterance_token"}


def engine_stop_ids(model_path: str | Path | None, tokenizer: Any) -> tuple[tuple[int, ...], bool]:
    """The ids an inference engine stops on: ``generation_config.json`` ``eos_token_id``, then the tokenizer's
    eos; and whether a generation_config was found (a model without one stops on its tokenizer's eos only)."""
    ids: list[int] = []
    found = False
    if model_path is not None:
        from transformers import GenerationConfig

        try:
            eos = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
            found = True
        except (OSError, ValueError, json.JSONDecodeError):
            eos = None
        ids += [eos] if isinstance(eos, int) else [int(i) for i in (eos or [])]
    if isinstance(tokenizer.eos_token_id, int):
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(ids)), found


@dataclass(frozen=True)
class StopProbe:
    """Where the template writes a stop token after an answer.

    ``placement`` is None when the template does not say clearly, and ``problem`` says why. ``final_stop`` is
    the stop that ends an answer (the one vlmtrain appends after a final answer the template leaves open).
    """

    placement: str | None
    final_stop: str | None = None
    problem: str | None = None
    text: str = ""  # the probe conversation as rendered, for messages


def _first_stop(text: str, start: int, end: int | None, stops: Sequence[str]) -> tuple[int, str] | None:
    found = [(i, s) for s in stops if (i := text.find(s, start, end)) >= 0]
    return min(found) if found else None


def probe_stop_placement(chat: ChatRenderer, stops: Sequence[str], eos: str | None) -> StopProbe:
    """Render a two-turn probe chat and find the first of ``stops`` after each answer.

    ``in_turn``: the chat ending with the first answer already holds a stop after it, and so does the answer
    inside the longer chat; ``next_turn``: only the next message writes one, before its text (GLM's
    ``<|user|>``); ``absent``: neither does, and the engine stops on the tokenizer's ``eos`` (LLaVA-1.5).
    Anything else (the template refuses the probe, writes a stop after a final answer but none between turns,
    writes none while the engine does not stop on eos) is unclear.
    """
    messages = in_forms([{"role": r, "content": c} for r, c in _PROBE_CHAT], chat.content_forms)
    try:
        alone, full = chat.render(messages[:2]), chat.render(messages)
    except (*TEMPLATE_ERRORS, ValueError) as err:
        return StopProbe(None, problem=f"the template cannot render a plain user/assistant chat ({err})")
    if alone.count(FIRST) != 1 or full.count(FIRST) != 1 or "Say bye." not in full:
        return StopProbe(None, problem="the template does not show each probe answer exactly once", text=full)
    after_alone = alone.index(FIRST) + len(FIRST)
    after_first = full.index(FIRST) + len(FIRST)
    next_text = full.index("Say bye.", after_first)
    at_end = _first_stop(alone, after_alone, None, stops)
    between = _first_stop(full, after_first, next_text, stops)
    if at_end and between:
        return StopProbe("in_turn", at_end[1], text=full)
    if between:
        return StopProbe("next_turn", between[1], text=full)
    if at_end:
        return StopProbe(None, problem=f"the template writes {at_end[1]!r} after a final answer but no stop "
                         "between turns", text=full)
    if eos is not None and eos in stops:
        return StopProbe("absent", eos, text=full)
    return StopProbe(None, problem=f"the template writes none of the stop tokens {list(stops)} after an answer, "
                     f"and the tokenizer's eos {eos!r} is not among them", text=full)


def processor_media_tokens(chat: ChatRenderer) -> tuple[str, ...]:
    """The tokens a processor treats as media, in the order found: its named media tokens (``image_token``,
    ``video_token``, ``boi_token``, ...), the special tokens the template writes for an image part (Qwen's
    ``<|vision_start|>``), and those the processor's expansion of one blank image emits more often than the
    plain tokenization of the same text holds them. Empty for a tokenizer."""
    if not chat.is_processor:
        return ()
    tokenizer = chat.tokenizer
    vocab = tokenizer.get_vocab()
    named: list[str] = [v for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items()
                        if k not in _NOT_MEDIA and isinstance(v, str)]
    for attr in dir(chat.processing_class):
        if attr.endswith("_token") and not attr.startswith("_") and attr not in _NOT_MEDIA:
            try:
                value = getattr(chat.processing_class, attr)
            except Exception:  # noqa: BLE001 - a property that cannot be read names no token
                continue
            if isinstance(value, str):
                named.append(value)
    found = [t for t in (*named, *_image_markup_tokens(chat), *_expansion_tokens(chat)) if t in vocab]
    return tuple(dict.fromkeys(found))


def _image_message(with_image: bool) -> list[dict]:
    image = [{"type": "image"}] if with_image else []
    return [{"role": "user", "content": [*image, {"type": "text", "text": "What is it?"}]}]


def _special(chat: ChatRenderer) -> set[int]:
    return set(chat.tokenizer.get_added_vocab().values()) | set(chat.tokenizer.all_special_ids)


def _image_markup_tokens(chat: ChatRenderer) -> list[str]:
    """Special tokens in the text the template writes for an image part (the render with it minus without)."""
    try:
        with_image = chat.render(_image_message(True), add_generation_prompt=True)
        without = chat.render(_image_message(False), add_generation_prompt=True)
    except (*TEMPLATE_ERRORS, ValueError):
        return []
    head = len(os.path.commonprefix([with_image, without]))
    tail = len(os.path.commonprefix([with_image[head:][::-1], without[head:][::-1]]))
    inserted = with_image[head:len(with_image) - tail]
    ids = chat.tokenizer(inserted, add_special_tokens=False)["input_ids"]
    special = _special(chat)
    return [chat.tokenizer.convert_ids_to_tokens(i) for i in ids if i in special]


def _expansion_tokens(chat: ChatRenderer) -> list[str]:
    from PIL import Image

    try:
        text = chat.render(_image_message(True), add_generation_prompt=True)
        out = chat.encode([text], {"images": [[Image.new("RGB", (224, 224), "white")]]})
    except (*TEMPLATE_ERRORS, ValueError, AttributeError):
        return []
    ids = out["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    ids = ids[0] if ids and isinstance(ids[0], list) else ids
    plain = chat.tokenizer(text, add_special_tokens=chat.adds_special_tokens(text))["input_ids"]
    more = Counter(int(i) for i in ids) - Counter(int(i) for i in plain)
    special = _special(chat)
    return [chat.tokenizer.convert_ids_to_tokens(i) for i in sorted(more) if i in special]
