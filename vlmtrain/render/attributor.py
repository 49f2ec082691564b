"""The attributor protocol: one conversation (or pretraining text) in, one attributed ``MaskedRow`` out.

Three implementations, one per way of knowing where turns start and end:

- ``TemplateAttributor`` (``template.py``): prefix renders through the model's real chat template, with the
  family's stop tokens; the default for every registered family;
- ``BoundaryAttributor`` (``boundaries.py``): markers the user declared in ``mask.role_boundaries``;
- ``PretrainAttributor`` (``pretrain.py``): plain text with media placeholders, every text token trained.

Each returns the row unmasked (``loss_mask`` None); ``vlmtrain.mask`` applies the mask rules to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vlmtrain.media.item import MediaItem
from vlmtrain.render.row import MaskedRow


@dataclass(frozen=True)
class RenderInput:
    """A validated row as the renderer needs it. ``messages`` carry bare media parts (``{"type": "image"}``)
    that consume ``media`` in order; ``text`` and ``placeholder`` are the pretraining form."""

    messages: list[dict] = field(default_factory=list)
    media: tuple[MediaItem, ...] = ()
    tools: list[dict] | None = None
    text: str = ""
    placeholder: str | None = None
    where: str = ""


class Attributor(Protocol):
    name: str

    def attribute(self, sample: RenderInput) -> MaskedRow: ...


__all__ = ["Attributor", "RenderInput"]
