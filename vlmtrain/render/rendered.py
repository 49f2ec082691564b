"""The one per-row record that training, preprocessing and ``inspect-mask`` all read."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Token kinds (``RenderedRow.kind``). PAD only appears after collation.
CONTENT, MARKER, MEDIA, PAD = 0, 1, 2, 3
KIND_NAMES = {CONTENT: "content", MARKER: "marker", MEDIA: "media", PAD: "pad"}
NO_MESSAGE = -1


@dataclass
class RenderedRow:
    """A conversation rendered through the family's real chat template, attributed token by token.

    Every array is aligned with ``input_ids`` (the exact ids the model receives, after media expansion):

    - ``message_index``: the message whose template span holds the token, or ``NO_MESSAGE`` for scaffolding
      outside every message (BOS, ``[gMASK]<sop>``);
    - ``kind``: CONTENT (message text), MARKER (template scaffolding), MEDIA (image tokens);
    - ``sampled``: the model would produce this token at inference: assistant content plus the stop token
      that ends the turn, wherever the template puts it;
    - ``ends_turn``: for a token that ends a turn, the index of the message it ends (else ``NO_MESSAGE``).
      GLM's ``<|observation|>`` sits in the tool message's span but ends the assistant's turn.
    """

    input_ids: np.ndarray
    message_index: np.ndarray
    kind: np.ndarray
    sampled: np.ndarray
    ends_turn: np.ndarray
    roles: list[str]
    text: str
    appended_stop: bool = False
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def token_roles(self) -> np.ndarray:
        """Role name per token ('' for scaffolding), for display and role filters."""
        names = np.array([*self.roles, ""], dtype=object)
        return names[self.message_index]
