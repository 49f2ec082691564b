"""Mask rules: which attributed tokens the loss trains, per ``mask.mode`` and ``mask.train_on_eos``.

- ``sampled`` (default): every token the model samples at inference (assistant content + its stop token,
  wherever the template puts it).
- ``all``: every non-media, non-pad token.
- ``roles``: tokens of messages whose role is in ``roles``: sampled tokens for assistant messages, message
  text for other roles; a stop token counts only if its own (structural) message's role is listed.
``train_on_eos`` selects which turn-ending tokens are trained: ``turn`` (those ending trained turns), ``all``
(every turn's), ``last`` (the final assistant turn's only), ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmtrain.config.schema import MODES, TRAIN_ON_EOS  # config owns the allowed values
from vlmtrain.render.row import CONTENT, MEDIA, NO_MESSAGE, MaskedRow


@dataclass(frozen=True)
class MaskRules:
    mode: str = "sampled"
    roles: tuple[str, ...] = ("assistant",)
    train_on_eos: str = "turn"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mask.mode must be one of {MODES}, got {self.mode!r}")
        if self.train_on_eos not in TRAIN_ON_EOS:
            raise ValueError(f"mask.train_on_eos must be one of {TRAIN_ON_EOS}, got {self.train_on_eos!r}")

    @classmethod
    def from_config(cls, mask_cfg: Any) -> MaskRules:
        return cls(mode=str(mask_cfg.mode), roles=tuple(mask_cfg.roles), train_on_eos=str(mask_cfg.train_on_eos))

    def trained_roles(self) -> set[str]:
        return set(self.roles) if self.mode == "roles" else {"assistant"}


def loss_mask(row: MaskedRow, rules: MaskRules) -> np.ndarray:
    """Boolean mask aligned with ``row.input_ids``: True where the loss trains the token."""
    not_media = row.kind != MEDIA
    if rules.mode == "all":
        return not_media.copy()

    roles = np.array([*row.roles, ""], dtype=object)
    token_role = row.token_roles()
    trained_roles = rules.trained_roles()
    is_stop = row.ends_turn != NO_MESSAGE

    if rules.mode == "sampled":
        mask = row.sampled & ~is_stop
    else:
        in_role = np.isin(token_role, list(trained_roles))
        text_of_role = (row.kind == CONTENT) & (token_role != "assistant")
        mask = in_role & (row.sampled | text_of_role) & ~is_stop

    stop_positions = np.flatnonzero(is_stop)
    if stop_positions.size and rules.train_on_eos != "none":
        turn_role = roles[row.ends_turn[stop_positions]]
        if rules.train_on_eos == "turn":
            eligible = np.isin(turn_role, list(trained_roles))
        elif rules.train_on_eos == "all":
            eligible = np.ones(stop_positions.size, dtype=bool)
        else:  # last
            assistant_turns = [k for k, r in enumerate(row.roles) if r == "assistant"]
            eligible = row.ends_turn[stop_positions] == (assistant_turns[-1] if assistant_turns else -2)
        if rules.mode == "roles":
            eligible &= np.isin(token_role[stop_positions], list(trained_roles))
        mask[stop_positions[eligible]] = True
    return mask & not_media
