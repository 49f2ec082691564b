"""``mask.role_boundaries``: user-declared turn markers that replace a family's built-in attribution.

For templates vlmtrain does not know (or to override one). Each entry declares a role, a ``start`` marker
and an ``end`` marker (a string, ``eos_token``, or null = the span runs to the end). Markers are encoded with
the real tokenizer at start-up and fail there if they cannot be. When a role's end marker is not included
(``include_end: false``) the scanner resumes *at* it, so a shared marker (Mistral's ``[/INST]`` ends the
user turn and opens the assistant's) can start the next span.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vlmtrain.errors import VlmtrainError
from vlmtrain.media.kinds import stand_ins
from vlmtrain.render.attributor import RenderInput
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.expand import mark_media
from vlmtrain.render.messages import drop_nulls, in_forms
from vlmtrain.render.row import CONTENT, MARKER, NO_MESSAGE, MaskedRow

log = logging.getLogger(__name__)


class BoundaryError(VlmtrainError):
    """A ``mask.role_boundaries`` entry that cannot be used with this tokenizer."""


@dataclass(frozen=True)
class Boundary:
    role: str
    start: tuple[int, ...]
    end: tuple[int, ...] | None
    include_start: bool = False
    include_end: bool = True


def _encode_marker(tokenizer: Any, text: str, key: str) -> tuple[int, ...]:
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        raise BoundaryError(f"{key}: marker {text!r} cannot be encoded by this tokenizer; use a string that "
                            "appears literally in the rendered chat template")
    return ids


def resolve_boundaries(entries: Sequence[Any], tokenizer: Any) -> list[Boundary]:
    """Encode every declared marker now, so a typo fails at start-up and not at loss time."""
    out = []
    for i, entry in enumerate(entries):
        key = f"mask.role_boundaries[{i}]"
        if not entry.get("role") or not entry.get("start"):
            raise BoundaryError(f"{key}: 'role' and 'start' are required")
        start = _encode_marker(tokenizer, entry["start"], f"{key}.start")
        end_text = entry.get("end")
        if end_text is None:
            end = None
        elif end_text == "eos_token":
            if tokenizer.eos_token_id is None:
                raise BoundaryError(f"{key}.end: eos_token requested but the tokenizer has no EOS token")
            end = (int(tokenizer.eos_token_id),)
        else:
            end = _encode_marker(tokenizer, end_text, f"{key}.end")
        boundary = Boundary(role=str(entry["role"]), start=start, end=end,
                            include_start=bool(entry.get("include_start", False)),
                            include_end=bool(entry.get("include_end", True)))
        log.info("role boundary %s: start %r -> %s, end %r -> %s", boundary.role, entry["start"], list(start),
                 end_text, list(end) if end else None)
        out.append(boundary)
    return out


def _match(ids: list[int], at: int, seq: tuple[int, ...]) -> bool:
    return ids[at:at + len(seq)] == list(seq)


def scan_row(input_ids: np.ndarray, boundaries: list[Boundary], text: str) -> MaskedRow:
    """Attribute tokens by scanning for declared markers (axolotl's semantics)."""
    ids = input_ids.tolist()
    n = len(ids)
    message_index = np.full(n, NO_MESSAGE, dtype=np.int64)
    kind = np.full(n, MARKER, dtype=np.int8)
    sampled = np.zeros(n, dtype=bool)
    ends_turn = np.full(n, NO_MESSAGE, dtype=np.int64)
    roles: list[str] = []
    i = 0
    while i < n:
        boundary = next((b for b in boundaries if _match(ids, i, b.start)), None)
        if boundary is None:
            i += 1
            continue
        k = len(roles)
        roles.append(boundary.role)
        body = i + len(boundary.start)
        end_at = n
        if boundary.end is not None:
            end_at = next((j for j in range(body, n - len(boundary.end) + 1) if _match(ids, j, boundary.end)), n)
        message_index[i:end_at] = k
        kind[body:end_at] = CONTENT
        if boundary.include_start:
            kind[i:body] = CONTENT
        is_assistant = boundary.role == "assistant"
        sampled[(i if boundary.include_start else body):end_at] = is_assistant
        resume = end_at
        if end_at < n and boundary.end is not None and boundary.include_end:
            stop = slice(end_at, end_at + len(boundary.end))
            message_index[stop] = k
            ends_turn[stop] = k
            sampled[stop] = is_assistant
            resume = end_at + len(boundary.end)
        i = max(resume, i + 1)
    return MaskedRow(input_ids=np.asarray(input_ids, dtype=np.int64), message_index=message_index, kind=kind,
                     sampled=sampled, ends_turn=ends_turn, roles=roles, text=text)


class BoundaryAttributor:
    """``mask.role_boundaries``: the rendered ids (media expanded) scanned for the declared markers."""

    name = "role_boundaries"

    def __init__(self, chat: ChatRenderer, boundaries: list[Boundary], media_ids: np.ndarray) -> None:
        self.chat, self.boundaries, self.media_ids = chat, boundaries, media_ids

    def attribute(self, sample: RenderInput) -> MaskedRow:
        messages = in_forms(sample.messages, self.chat.content_forms)
        text = self.chat.render([drop_nulls(m) for m in messages], tools=sample.tools)
        if sample.media:
            ids = np.asarray(self.chat.encode([text], stand_ins([sample.media]))["input_ids"][0], dtype=np.int64)
        else:
            ids = self.chat.text_tokens(text)[0]
        row = scan_row(ids, self.boundaries, text)
        return mark_media(replace(row, media=tuple(sample.media)), self.media_ids)
