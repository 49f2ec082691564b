"""The declarative description of one model family: what ends a turn, what is media, where modules live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopPlacement = Literal["in_turn", "next_turn", "absent"]
# How packed rows are kept apart (``data.packing``, see ``vlmtrain/pack``): ``position_ids`` = per-row positions
# and no mask; ``mrope`` = the same with the 4-row (text, t, h, w) M-RoPE positions from the model's
# ``get_rope_index``; ``mask`` = an explicit block-diagonal mask per layer type (Gemma 3); ``no`` = refused.
PackingMode = Literal["position_ids", "mrope", "mask", "no"]


@dataclass(frozen=True)
class Family:
    """One registry entry. Everything here is data; the renderer and mask code read it, never branch on a name.

    ``stop_tokens`` are the tokens that end an assistant turn at inference (the inference engine's stop ids);
    the chat template alone cannot say which tokens those are, so the registry must.
    ``stop_placement`` says where the template writes them:

    - ``in_turn``: inside the assistant message (``answer<|im_end|>``);
    - ``next_turn``: at the start of the *next* message (GLM: ``<|user|>`` / ``<|observation|>``), so the
      template writes none after the final assistant turn;
    - ``absent``: the template writes none at all (LLaVA-1.5).

    For ``next_turn`` and ``absent`` vlmtrain appends ``stop_tokens[0]`` after the final assistant turn and
    trains it, so the model learns to stop on its last turn too.

    Every entry is checked at start-up against the model's template (``vlmtrain/mask/derive.py``): a template
    that writes the stop elsewhere is an error, unless ``template_varies`` says the model type covers several
    templates (``llava``: LLaVA-1.5 writes no stop, Pixtral writes ``</s>`` after every answer); then the
    placement the template shows is used.
    """

    name: str
    model_types: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    stop_placement: StopPlacement = "in_turn"
    is_vlm: bool = True
    media_tokens: tuple[str, ...] = ()
    media_token_patterns: tuple[str, ...] = ()
    image_placeholder: str | None = None
    vision_tower: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    language_model: tuple[str, ...] = ()
    verified: bool = True
    template_varies: bool = False
    quirks: tuple[str, ...] = ()
    packing: PackingMode = "no"  # set only for families whose packed forward is tested exact (test_packing.py)

    @property
    def appends_final_stop(self) -> bool:
        """True when the template leaves the final assistant turn without a stop token."""
        return self.stop_placement != "in_turn"
