"""``--format json``: JSON Lines, one object per selected row — how users and CI check masks programmatically.

Keys of a rendered row (stable; every per-token list is aligned with ``input_ids``):

- ``row``: where the row comes from, ``file:LINE`` (JSON Lines) or ``path:row N`` (other storage);
- ``index``: the row's 0-based position in the split (what ``--rows`` selects);
- ``split``; ``family``: the resolved model family (``role_boundaries`` when an override runs without one);
- ``attribution``: ``family`` (the family's rules) or ``role_boundaries`` (a mask.role_boundaries override);
- ``input_ids``: exactly the ids the model receives, after the processor expanded every image;
- ``tokens``: each id decoded on its own (special tokens literal; a piece of a multi-byte character that a
  byte-level tokenizer splits decodes to U+FFFD);
- ``loss_mask``: 1 where the loss trains the token, else 0 (the training collator's labels are these ids
  where ``loss_mask`` is 1, except the first token of a row, which nothing predicts);
- ``message_index``: the message whose template span holds the token (-1: scaffolding outside every message);
- ``role``: that message's role (``""`` for scaffolding);
- ``sampled``: 1 for tokens the model generates at inference (assistant content and the stop token ending
  the turn, wherever the template puts it);
- ``kind``: ``content`` (message text), ``marker`` (template scaffolding) or ``media`` (image tokens);
- ``ends_turn``: for a stop token, the index of the message whose turn it ends, else -1 (GLM's
  ``<|observation|>`` sits in the tool message and ends the assistant's turn);
- ``roles``: the role of each message; ``media``: the row's media items (``modality``, ``path``, ``width``,
  ``height``, ``frames``);
- ``num_tokens``, ``num_trained``, ``trained_by_role`` (a stop token counts for the turn it ends);
- ``problems``: ``[{"code", "message"}]``, codes as in the summary (``zero_trained``, ``untrained_stop``,
  ``missing_stop``, ``too_long``, ``image_mismatch``, ``bad_row``).

A row that cannot be loaded or rendered has ``row``, ``index``, ``split``, ``family``, ``attribution``,
``error`` (one line) and ``problems`` only.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

import numpy as np

from vlmtrain.inspect.rows import InspectedRow
from vlmtrain.inspect.tokens import Pieces
from vlmtrain.mask.pipeline import MaskedRenderer
from vlmtrain.render.row import KIND_NAMES

TOKEN_KEYS = ("input_ids", "tokens", "loss_mask", "message_index", "role", "sampled", "kind", "ends_turn")
ROW_KEYS = ("row", "index", "split", "family", "attribution", *TOKEN_KEYS, "roles", "media", "num_tokens",
            "num_trained", "trained_by_role", "problems")


def _ints(values: Any) -> list[int]:
    return np.asarray(values, dtype=np.int64).tolist()


def record(item: InspectedRow, pieces: Pieces, split: str, renderer: MaskedRenderer) -> dict[str, Any]:
    """The JSON object of one row (see the module docstring for the keys)."""
    problems = [{"code": p.code, "message": p.message} for p in item.problems]
    head = {"row": item.where, "index": item.index, "split": split, "family": renderer.family_name,
            "attribution": renderer.attribution}
    if item.row is None:
        return {**head, "error": item.error, "problems": problems}
    row = item.row
    ids = _ints(row.input_ids)
    message = _ints(row.message_index)
    roles = list(row.roles)
    _, trained = item.role_counts()
    return {
        **head,
        "input_ids": ids,
        "tokens": [pieces(i) for i in ids],
        "loss_mask": _ints(np.asarray(row.loss_mask, dtype=bool)),
        "message_index": message,
        "role": [roles[k] if k >= 0 else "" for k in message],
        "sampled": _ints(row.sampled),
        "kind": [KIND_NAMES[int(k)] for k in row.kind],
        "ends_turn": _ints(row.ends_turn),
        "roles": roles,
        "media": [m.to_record() for m in row.media],
        "num_tokens": item.num_tokens,
        "num_trained": item.num_trained,
        "trained_by_role": dict(trained),
        "problems": problems,
    }


def write_jsonl(out: TextIO, items: list[InspectedRow], pieces: Pieces, split: str,
                renderer: MaskedRenderer) -> None:
    for item in items:
        out.write(json.dumps(record(item, pieces, split, renderer), ensure_ascii=False) + "\n")
