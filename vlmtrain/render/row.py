"""The one row type: a conversation rendered through the real template, attributed token by token, masked.

Every consumer — ``fit``'s collator, ``preprocess``'s cache, ``inspect-mask`` — reads a ``MaskedRow``; the
Arrow cache stores ``to_record()`` under the schema ``arrow_features()`` derives from this class, and
``from_record()`` gives the same row back. A leaf module: it imports only the media item type.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from vlmtrain.media.item import MediaItem, arrow_feature

# Token kinds (``MaskedRow.kind``). PAD only appears after collation.
CONTENT, MARKER, MEDIA, PAD = 0, 1, 2, 3
KIND_NAMES = {CONTENT: "content", MARKER: "marker", MEDIA: "media", PAD: "pad"}
NO_MESSAGE = -1

# Per-token arrays and the dtype they are stored with (values fit: message indices stay below 32k).
TOKEN_ARRAYS: dict[str, Any] = {"input_ids": np.int32, "message_index": np.int16, "kind": np.int8,
                                "sampled": np.bool_, "ends_turn": np.int16, "loss_mask": np.bool_}
_IN_MEMORY = {"input_ids": np.int64, "message_index": np.int64, "kind": np.int8, "sampled": np.bool_,
              "ends_turn": np.int64, "loss_mask": np.bool_}


@dataclass
class MaskedRow:
    """Every per-token array is aligned with ``input_ids`` (the exact ids the model receives, after media
    expansion):

    - ``message_index``: the message whose template span holds the token, or ``NO_MESSAGE`` for scaffolding
      outside every message (BOS, ``[gMASK]<sop>``);
    - ``kind``: CONTENT (message text), MARKER (template scaffolding), MEDIA (image/video tokens);
    - ``sampled``: the model would produce this token at inference: assistant content plus the stop token
      that ends the turn, wherever the template puts it;
    - ``ends_turn``: for a token that ends a turn, the index of the message it ends (else ``NO_MESSAGE``).
      GLM's ``<|observation|>`` sits in the tool message's span but ends the assistant's turn;
    - ``loss_mask``: what the loss trains (``None`` until the mask rules ran).

    ``appended_stop``: vlmtrain wrote the family's stop token after the final answer (the template writes none
    there); ``merged_spans``: messages whose span joined the next one's because the template cannot render
    the prefix ending before them (display only, see ``template.py``); ``linear_fallbacks``: 1 when the linear
    span strategy could not place this row exactly and the prefix reference attributed it (``spans.py``).

    ``media`` are the row's probed items in the order the template consumes them; ``messages`` is the
    source conversation as JSON text (Arrow would merge row schemas and inject null keys).
    """

    input_ids: np.ndarray
    message_index: np.ndarray
    kind: np.ndarray
    sampled: np.ndarray
    ends_turn: np.ndarray
    roles: list[str]
    text: str
    appended_stop: bool = False
    merged_spans: int = 0
    linear_fallbacks: int = 0
    media: tuple[MediaItem, ...] = ()
    loss_mask: np.ndarray | None = None
    where: str = ""
    source: int = 0
    messages: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_trained(self) -> int:
        return 0 if self.loss_mask is None else int(np.count_nonzero(self.loss_mask))

    def with_mask(self, mask: np.ndarray) -> MaskedRow:
        return replace(self, loss_mask=np.asarray(mask, dtype=bool))

    def token_roles(self) -> np.ndarray:
        """Role name per token ('' for scaffolding), for display and role filters."""
        names = np.array([*self.roles, ""], dtype=object)
        return names[self.message_index]

    def to_record(self) -> dict[str, Any]:
        """The row as one Arrow record (``arrow_features()``), typed arrays stored compactly."""
        if self.loss_mask is None:
            raise ValueError("a row is stored only once masked")
        record: dict[str, Any] = {name: getattr(self, name).astype(dtype) for name, dtype in TOKEN_ARRAYS.items()}
        record.update(where=self.where, text=self.text, roles=list(self.roles), appended_stop=self.appended_stop,
                      merged_spans=self.merged_spans, linear_fallbacks=self.linear_fallbacks,
                      media=[m.to_record() for m in self.media], source=self.source, messages=self.messages,
                      length=len(self), num_trained=self.num_trained)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MaskedRow:
        arrays = {name: np.asarray(record[name], dtype=_IN_MEMORY[name]) for name in TOKEN_ARRAYS}
        media = tuple(MediaItem.from_record(m) for m in record.get("media") or [])
        return cls(**arrays, roles=list(record["roles"]), text=record["text"],
                   appended_stop=bool(record.get("appended_stop", False)),
                   merged_spans=int(record.get("merged_spans", 0)),
                   linear_fallbacks=int(record.get("linear_fallbacks", 0)), media=media, where=record["where"],
                   source=int(record.get("source", 0)), messages=record.get("messages", ""))


# Stored alongside the fields: derived counts the cache and summaries read without decoding arrays.
DERIVED_COLUMNS = ("length", "num_trained")


def arrow_features() -> Any:
    """The ``datasets`` schema of ``to_record()``, derived from the dataclass fields."""
    import datasets

    scalars = {str: datasets.Value("string"), bool: datasets.Value("bool"), int: datasets.Value("int32")}
    out: dict[str, Any] = {}
    for f in fields(MaskedRow):
        if f.name in TOKEN_ARRAYS:
            out[f.name] = datasets.List(datasets.Value(np.dtype(TOKEN_ARRAYS[f.name]).name))
        elif f.name == "roles":
            out[f.name] = datasets.List(datasets.Value("string"))
        elif f.name == "media":
            out[f.name] = arrow_feature()
        else:
            out[f.name] = scalars[{"str": str, "bool": bool, "int": int}[str(f.type)]]
    out.update({name: datasets.Value("int32") for name in DERIVED_COLUMNS})
    return datasets.Features(out)


__all__ = ["CONTENT", "DERIVED_COLUMNS", "KIND_NAMES", "MARKER", "MEDIA", "NO_MESSAGE", "PAD", "MaskedRow",
           "arrow_features"]
