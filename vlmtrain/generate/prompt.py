"""Prompts to generate for: from the command line or from data rows, encoded through the run's render path.

Rows are read with the same readers ``fit`` uses (``iter_rows`` + ``example_from_raw``), so every format and
every image rule of training applies; a final assistant turn is the reference answer and is dropped, so the
model generates it instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtrain.generate.errors import GenerateError


@dataclass
class Prompt:
    """Messages up to the turn to generate, the local image files they consume, and the reference answer."""

    messages: list[dict]
    images: list[str] = field(default_factory=list)
    where: str = "prompt"
    reference: str | None = None
    tools: list[dict] | None = None
    transformed: bool = False  # data.image_transform already applied (eval builds its prompts that way)

    @property
    def question(self) -> str:
        """The last user text (what a log line shows)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return ""


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def _image_parts(messages: Iterable[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image")


def prompt_from_args(prompt: str, images: list[str], system: str | None = None) -> Prompt:
    """One user turn: the images (in order) then the text, after an optional system message."""
    if not prompt.strip():
        raise GenerateError("--prompt is empty; give the question to ask, e.g. --prompt 'What shape is this?'")
    paths = []
    for image in images:
        path = Path(image).expanduser()
        if not path.is_file():
            raise GenerateError(f"--image {image}: file not found; pass the path of an image file")
        paths.append(str(path.resolve()))
    user = {"role": "user", "content": [*({"type": "image"} for _ in paths), {"type": "text", "text": prompt}]}
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return Prompt(messages=[*messages, user], images=paths)


def _example_images(example: Any) -> list[str]:
    """Local image paths of a validated example, whichever row type the data layer hands out."""
    media = getattr(example, "media", None)
    if media is not None:
        return [item.path for item in media if getattr(item, "modality", "image") == "image"]
    return [str(p) for p in getattr(example, "images", [])]


def _to_prompt(example: Any) -> Prompt:
    if getattr(example, "format", "conversations") == "pretrain":
        raise GenerateError(f"{example.where}: a pretrain row (plain text) has no turn to answer; generate reads "
                            "conversation rows (messages)")
    messages = list(example.messages)
    reference = None
    if messages and messages[-1].get("role") == "assistant":
        reference = message_text(messages[-1])
        messages = messages[:-1]
    if not messages:
        raise GenerateError(f"{example.where}: nothing is left to prompt with once the final assistant turn is "
                            "dropped; give the row a user turn")
    images = _example_images(example)[:_image_parts(messages)]  # the dropped turn's images go with it
    return Prompt(messages=messages, images=images, where=example.where, reference=reference,
                  tools=getattr(example, "tools", None))


def read_prompts(cfg: Any, sources: list[Any], limit: int | None = None) -> list[Prompt]:
    """Prompts from data sources (``data.train``/``data.eval`` entries), in storage order, at most ``limit``.

    Rows need no assistant turn (the one to generate may be missing); any other bad row is its one-line error.
    """
    from vlmtrain.data.cache import cache_root
    from vlmtrain.data.examples import context_for, example_from_raw
    from vlmtrain.data.sources import iter_rows

    root = cache_root(cfg.data)
    prompts: list[Prompt] = []
    for index, source in enumerate(sources):
        ctx = dataclasses.replace(context_for(source, index, cfg, root / "media"), required_roles=())
        for raw in iter_rows(source, str(root / "hf")):
            if limit is not None and len(prompts) >= limit:
                return prompts
            prompts.append(_to_prompt(example_from_raw(raw, source, ctx)))
    return prompts


def prompts_from_file(cfg: Any, path: str, image_dir: str | None = None) -> list[Prompt]:
    """``--input`` rows in any format ``fit`` reads; images relative to ``image_dir`` (default: the file's folder)."""
    from omegaconf import OmegaConf

    from vlmtrain.config.schema import DataSource

    if not Path(path).exists():
        raise GenerateError(f"--input {path}: no such file or folder; pass a rows file (.jsonl, .json, .parquet) "
                            "or a datasets folder")
    source = OmegaConf.structured(DataSource(path=str(path), image_dir=image_dir))
    return read_prompts(cfg, [source])


class PromptEncoder:
    """The run's render path for generation: the only place that touches the render/mask internals.

    Text comes from the model's own chat template with the generation prompt (exactly what the loss masks
    assume an inference engine feeds), ids and pixels from the processor call training makes.
    """

    def __init__(self, cfg: Any, masked: Any = None) -> None:
        """``masked``: the run's ``make_renderer(cfg)`` when the caller already built it (fit)."""
        if masked is None:
            from vlmtrain.mask.pipeline import make_renderer

            masked = make_renderer(cfg)
        self._chat = masked.chat  # the template renderer
        self.processing_class = self._chat.processing_class
        self.tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.is_processor = self.processing_class is not self.tokenizer
        self._masked, self._cfg = masked, cfg
        family = masked.family
        self.family_name = family.name if family is not None else None
        self.stop_ids: tuple[int, ...] = tuple(int(i) for i in family.stop_ids) if family is not None else ()

    def text(self, prompt: Prompt) -> str:
        return self._chat.render(self._template_messages(prompt), add_generation_prompt=True, tools=prompt.tools)

    def transformed(self, prompt: Prompt) -> Prompt:
        """The prompt with the run's ``data.image_transform`` applied (tiles and their labels), as in training."""
        if prompt.transformed or not prompt.images or self._cfg is None:
            return prompt
        from vlmtrain.data.examples import Example
        from vlmtrain.data.policies import BuildSettings
        from vlmtrain.data.transformed import transform_example
        from vlmtrain.media.item import MediaItem
        from vlmtrain.media.kinds import kind_of

        settings = BuildSettings.from_config(self._cfg.data, self._cfg.mask)
        if getattr(settings, "image_transform", None) is None:
            return dataclasses.replace(prompt, transformed=True)
        items = tuple(kind_of("image").probe(MediaItem("image", path), prompt.where, settings.limits)
                      for path in prompt.images)
        example = Example(messages=prompt.messages, media=list(items), where=prompt.where)
        tiled = transform_example(self._masked, example, items, settings, None)
        return dataclasses.replace(prompt, messages=tiled.messages, images=[m.path for m in tiled.media],
                                   transformed=True)

    def encode(self, prompt: Prompt, *, completion: str | None = None) -> Any:
        """Model inputs (``return_tensors="pt"``) for the prompt, optionally followed by a completion's text."""
        prompt = self.transformed(prompt)
        text = self.text(prompt) + (completion or "")
        media = None
        if prompt.images:
            if not self.is_processor:
                raise GenerateError(f"{prompt.where}: the prompt has {len(prompt.images)} image(s) but the model is "
                                    "text-only (no processor); remove the images")
            from vlmtrain.media.item import MediaItem
            from vlmtrain.media.kinds import loaded

            media = loaded([[MediaItem("image", p) for p in prompt.images]], [prompt.where])
        return self._chat.encode([text], media, return_tensors="pt")

    def _template_messages(self, prompt: Prompt) -> list[dict]:
        """Each message in the content form the template was probed to show exactly, as in training."""
        from vlmtrain.render.messages import drop_nulls, in_forms

        return in_forms([drop_nulls(m) for m in prompt.messages], self._chat.content_forms)
