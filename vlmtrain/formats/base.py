"""What every format reader shares: the ``Format`` protocol, the canonical row, and the never-silent checks.

A reader turns one raw row of its format into the *canonical* row ``{"messages": [...], "images": [...],
"videos": [...], "tools": [...]}`` (HF/OpenAI messages whose media parts are bare ``{"type": "image"}``
consuming the media lists in order), which ``vlmtrain.data.examples.conversation_example`` validates — so
path resolution, count checks and role checks live in one place whatever the input looked like.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from vlmtrain.errors import DataError, Reason
from vlmtrain.media import MODALITIES

# Column names that hold media in the datasets people have (LLaMA-Factory, LLaVA, the_cauldron, ms-swift).
MEDIA_COLUMNS = {"image": "image", "images": "image", "video": "video", "videos": "video",
                 "audio": "audio", "audios": "audio"}


@dataclass(frozen=True)
class CanonicalColumns:
    """The column names of a canonical row, read by ``conversation_example``/``pretrain_example`` in place of
    the source's own names (non-native formats). ``videos`` is read once a video modality is registered."""

    messages_column: str = "messages"
    images_column: str = "images"
    videos_column: str = "videos"
    text_column: str = "text"


CANONICAL = CanonicalColumns()


class Format(Protocol):
    """One input format. ``native``: rows already are canonical under the source's own column names (they go
    to validation unchanged). ``kind``: ``chat`` (a conversation) or ``pretrain`` (text with placeholders)."""

    name: str
    kind: str
    native: bool

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        """Whether ``row`` (a source's first row) has this format's shape."""
        ...

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        """The canonical row, or a one-line DataError naming ``where`` when the row does not fit."""
        ...

    def columns(self, source: Any) -> str:
        """The column mapping, for the once-per-source log line."""
        ...


def cell(row: dict[str, Any], column: str, where: str) -> Any:
    """A cell, with JSON text (CSV-like exports, LLaMA-Factory's ``tools``) decoded."""
    value = row.get(column)
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: column '{column}' holds malformed JSON ({err.msg}); fix the row",
                            Reason.MALFORMED_JSON) from err
    return value


def media_list(value: Any) -> list[Any]:
    """A media cell as a list: None/"" -> [], one entry (path, ``{"bytes", "path"}``) -> [it]."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, dict, bytes)):
        return [value]
    return list(value)


def misfit(where: str, fmt: str, what: str, fix: str = "fix the row") -> DataError:
    """A row that does not have the shape of its source's format."""
    return DataError(f"{where}: the row does not fit format {fmt!r} ({what}); {fix}, or set "
                     "data.<split>[i].format", Reason.MALFORMED_ROW)


def video_supported() -> bool:
    """Video is read once a ``video`` modality is registered in ``vlmtrain.media``."""
    return "video" in MODALITIES


def no_video(where: str, what: str) -> DataError:
    return DataError(f"{where}: the row has video ({what}) but video is not supported yet for this model/run; "
                     "remove the videos from the source (or train on rows without them)", Reason.MEDIA_NOT_SUPPORTED)


def check_unused_media(row: dict[str, Any], used: set[str], where: str, fmt: str) -> None:
    """A column that holds media this format does not read is an error naming it, never ignored."""
    for column, value in row.items():
        modality = MEDIA_COLUMNS.get(column)
        if modality is None or column in used or not media_list(value):
            continue
        if modality == "video" and not video_supported():
            raise no_video(where, f"column '{column}'")
        if modality == "image":
            fix = (f"rename it, or set images_column: {column} if it is the one to use (a row has one image "
                   "column)")
        else:
            fix = f"remove the column: vlmtrain reads no {modality} for this model/run"
        raise DataError(f"{where}: column '{column}' holds {len(media_list(value))} {modality} entr(ies) that "
                        f"format {fmt!r} does not read; {fix}", Reason.UNUSED_COLUMN)


def split_placeholders(text: str, placeholders: dict[str, str]) -> list[dict[str, Any]]:
    """``"<image>What is it?"`` -> ``[{"type": "image"}, {"type": "text", "text": "What is it?"}]``: each
    placeholder (``{modality: string}``) becomes a bare media part in place; empty text pieces are dropped."""
    pattern = "|".join(re.escape(p) for p in sorted(placeholders.values(), key=len, reverse=True) if p)
    by_string = {p: m for m, p in placeholders.items()}
    parts: list[dict[str, Any]] = []
    for piece in re.split(f"({pattern})", text) if pattern else [text]:
        if piece in by_string:
            parts.append({"type": by_string[piece]})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def count_parts(messages: list[dict[str, Any]], modality: str) -> int:
    """Bare media parts of ``modality`` (those that consume the media column)."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p == {"type": modality})


def check_counts(messages: list[dict[str, Any]], media: dict[str, list[Any]], placeholders: dict[str, str],
                 columns: dict[str, str], where: str) -> None:
    """Placeholders and media entries must match in both directions, per modality."""
    for modality, entries in media.items():
        found = count_parts(messages, modality)
        if found != len(entries):
            shown, column = placeholders.get(modality, modality), columns[modality]
            fix = ("add the missing files to" if found > len(entries) else "add placeholders for them or remove "
                   "files from")
            raise DataError(f"{where}: {found} {modality} placeholder(s) {shown!r} in the text but '{column}' "
                            f"lists {len(entries)} {modality}(s); each placeholder takes the next entry: {fix} "
                            f"'{column}'", Reason.MEDIA_COUNT_MISMATCH)
