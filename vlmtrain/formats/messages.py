"""Rows vlmtrain reads natively: HF / TRL / OpenAI messages, and pretraining text with placeholders.

Both are already canonical under the source's own column names, so ``to_canonical`` only refuses what the
row carries but the format would not read (a second image column, videos, audio) — never silently dropped.
"""

from __future__ import annotations

from typing import Any

from vlmtrain.errors import DataError
from vlmtrain.formats.base import cell, check_unused_media, media_list, misfit, video_supported
from vlmtrain.formats.sharegpt import placeholders


def _messages(row: dict[str, Any], source: Any) -> Any:
    try:  # detection only: a malformed cell is reported by the reader that validates the row
        return cell(row, str(source.messages_column), "")
    except DataError:
        return None


def _used(source: Any, *columns: str) -> set[str]:
    used = {str(source.images_column), *columns}
    return used | {str(source.videos_column)} if video_supported() else used


class MessagesFormat:
    """``messages`` of ``{role, content}``; content a string or a list of parts (``{"type": "image"}``
    consumes the next entry of the images column; inline paths and OpenAI ``image_url`` parts name a file)."""

    name, kind, native = "messages", "chat", True

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        messages = _messages(row, source)
        return isinstance(messages, list) and bool(messages) and all(isinstance(m, dict) for m in messages)

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        messages = _messages(row, source)
        if isinstance(messages, list) and media_list(row.get(source.images_column)):
            texts = [m.get("content") for m in messages if isinstance(m, dict)]
            if all(isinstance(t, (str, type(None))) for t in texts) and any(
                    placeholders(source)["image"] in (t or "") for t in texts):
                raise misfit(where, self.name, f"string content with {placeholders(source)['image']!r} "
                             "placeholders, read by format sharegpt", "set format: sharegpt for this source")
        check_unused_media(row, _used(source, str(source.messages_column)), where, self.name)
        return row

    def columns(self, source: Any) -> str:
        return f"messages={source.messages_column}, images={source.images_column}, tools=tools"


class PretrainFormat:
    """``{"text": "... <image> ...", "images": [...]}``: every text token trained (``docs/data.md``)."""

    name, kind, native = "pretrain", "pretrain", True

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        return isinstance(row.get(source.text_column), str)

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        check_unused_media(row, _used(source, str(source.text_column)), where, self.name)
        return row

    def columns(self, source: Any) -> str:
        shown = source.image_placeholder or "the family's image token"
        return f"text={source.text_column}, images={source.images_column}, placeholder {shown}"
