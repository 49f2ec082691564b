"""Validate raw rows and turn them into ``Example``s: normalised messages (or pretraining text) + media items.

Every problem is a one-line ``DataError`` naming ``file:row`` and the fix. Conversation rows use the HF /
OpenAI shape: ``content`` is a string or a list of parts; a media part (``{"type": "image"}``, one per
registered modality) consumes the next entry of that modality's column, and ``{"type": "image", "image":
"path"}`` (or ``path``/``url``, or OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}``) names its
file inline. The template always sees a bare ``{"type": "<modality>"}`` part.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtrain.data.refs import media_entries, resolve_media_path, store_bytes
from vlmtrain.data.sources import RawRow
from vlmtrain.errors import DataError, Reason
from vlmtrain.formats import canonical_columns, format_for
from vlmtrain.formats.base import cell
from vlmtrain.media import PART_TYPES, MediaItem
from vlmtrain.media.frames import write_manifest

__all__ = ["DataError", "Example", "ExampleContext", "example_from_raw"]

BASE_ROLES = ("system", "user", "assistant", "tool")
_INLINE_KEYS = ("path", "url")


@dataclass
class Example:
    """One validated row. ``media`` are unprobed items (absolute local paths) in the order the parts consume
    them."""

    messages: list[dict]
    media: list[MediaItem] = field(default_factory=list)
    tools: list[dict] | None = None
    where: str = ""
    format: str = "conversations"
    text: str = ""  # pretrain rows: the raw text with image placeholders
    source: int = 0


@dataclass(frozen=True)
class ExampleContext:
    """What validation needs besides the row: where images live and which roles a row must contain."""

    image_dir: Path | None
    allow_outside: bool
    media_dir: Path
    roles: tuple[str, ...]  # allowed roles
    required_roles: tuple[str, ...]  # a row must contain one of these (empty: no requirement)
    source: int = 0
    # The source's input format, chosen on its first row (vlmtrain.formats.format_for) and kept for the pass.
    formats: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def context_for(source: Any, index: int, cfg: Any, media_dir: Path) -> ExampleContext:
    """The validation context of data source ``index`` under this config."""
    if source.image_dir:
        image_dir: Path | None = Path(source.image_dir)
    else:
        path = Path(str(source.path))
        image_dir = path.parent if path.is_file() else (path if path.is_dir() else None)
    extra = [*cfg.mask.roles, *(b.role for b in cfg.mask.get("role_boundaries") or [])]
    roles = tuple(dict.fromkeys([*BASE_ROLES, *extra]))
    mode = str(cfg.mask.mode)
    required = () if mode == "all" else (tuple(cfg.mask.roles) if mode == "roles" else ("assistant",))
    return ExampleContext(image_dir=image_dir, allow_outside=bool(cfg.data.allow_paths_outside_image_dir),
                          media_dir=media_dir, roles=roles, required_roles=required, source=index)


def media_columns(source: Any) -> dict[str, str]:
    """The column each modality's bare parts consume (``videos`` once a video modality is registered)."""
    columns = {"image": str(source.images_column)}
    if "video" in PART_TYPES.values():
        columns["video"] = str(getattr(source, "videos_column", None) or "videos")
    return columns


def _media_ref(entry: Any, where: str, ctx: ExampleContext) -> str:
    """One media-column entry or inline reference (path, or datasets' {"bytes", "path"}) -> local path."""
    if isinstance(entry, dict):
        if entry.get("bytes"):
            return store_bytes(entry["bytes"], ctx.media_dir, entry.get("path"))
        if isinstance(entry.get("url"), str):  # OpenAI image_url object
            entry = entry["url"]
        elif isinstance(entry.get("path"), str):
            entry = entry["path"]
    if isinstance(entry, bytes):
        return store_bytes(entry, ctx.media_dir)
    if not isinstance(entry, str):
        raise DataError(f"{where}: a media entry is a {type(entry).__name__}, expected a file path; fix the "
                        "row", Reason.BAD_MEDIA_REFERENCE)
    return resolve_media_path(entry, ctx.image_dir, where, ctx.allow_outside)


def _inline_ref(part: dict) -> Any:
    if part.get("type") == "image_url":
        return part.get("image_url")
    keys = (str(part.get("type")), "image", *_INLINE_KEYS)
    return next((part[k] for k in keys if isinstance(part.get(k), (str, dict, bytes))), None)


def _check_text(value: Any, where: str, k: int, what: str) -> None:
    if not isinstance(value, str):
        raise DataError(f"{where}: message {k} {what} is a {type(value).__name__}, not a string; write the "
                        "text as a string", Reason.NON_STRING_TEXT)


def _normalise_message(message: Any, k: int, where: str, ctx: ExampleContext,
                       slots: list[Any]) -> dict:
    """Validate one message; image parts become {"type": "image"} and append their inline ref (or None)."""
    if not isinstance(message, dict):
        raise DataError(f"{where}: message {k} is a {type(message).__name__}, not an object with "
                        "role/content", Reason.MALFORMED_ROW)
    role = message.get("role")
    if role not in ctx.roles:
        raise DataError(f"{where}: message {k} has unknown role {role!r}; use one of {', '.join(ctx.roles)} "
                        "(e.g. human->user, gpt->assistant)", Reason.UNKNOWN_ROLE)
    content = message.get("content")
    out = dict(message)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            if not isinstance(part, dict):
                raise DataError(f"{where}: message {k} has a content part that is a {type(part).__name__}; "
                                "parts are {\"type\": \"text\"|\"image\", ...} objects", Reason.MALFORMED_ROW)
            kind = part.get("type", "text" if "text" in part else None)
            if kind == "text":
                _check_text(part.get("text"), where, k, "text part")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in PART_TYPES or kind == "image_url":
                modality = PART_TYPES.get(kind, "image")
                slots.append((modality, _inline_ref(part)))
                parts.append({"type": modality})
            else:
                supported = ", ".join(repr(t) for t in ("text", *PART_TYPES))
                raise DataError(f"{where}: message {k} has a content part of type {kind!r}; vlmtrain "
                                f"supports {supported} parts", Reason.UNSUPPORTED_CONTENT)
        out["content"] = parts
    elif content is None:
        if not message.get("tool_calls"):
            raise DataError(f"{where}: message {k} ({role}) has no content; give it text (or tool_calls)",
                            Reason.NON_STRING_TEXT)
    else:
        _check_text(content, where, k, "content")
    return out


def _resolve_slots(slots: list[tuple[str, Any]], row: dict[str, Any], columns: dict[str, str], where: str,
                   ctx: ExampleContext) -> list[MediaItem]:
    """Pair media parts with files: inline refs first, bare parts consume their modality's column in order;
    every column entry must be consumed (in both directions, counts must match)."""
    remaining = {m: media_entries(cell(row, c, where)) for m, c in columns.items()}
    listed = {m: len(v) for m, v in remaining.items()}
    items: list[MediaItem] = []
    seen: Counter = Counter()
    for modality, ref in slots:
        seen[modality] += 1
        if ref is None:
            column = columns.get(modality, f"{modality}s")
            if not remaining.get(modality):
                wanted = sum(1 for m, _ in slots if m == modality)
                raise DataError(f"{where}: {modality} part {seen[modality]} of {wanted} has no {modality} left in "
                                f"'{column}' (it lists {listed.get(modality, 0)}); add the file to '{column}' or "
                                "remove the part", Reason.MEDIA_COUNT_MISMATCH)
            ref = remaining[modality].pop(0)
        if modality == "video" and isinstance(ref, list):  # a video given as its frame images
            paths = [_media_ref(frame, where, ctx) for frame in ref]
            items.append(MediaItem(modality, write_manifest(paths, ctx.media_dir)))
            continue
        items.append(MediaItem(modality, _media_ref(ref, where, ctx)))
    for modality, left in remaining.items():
        if left:
            parts = sum(1 for m, _ in slots if m == modality)
            raise DataError(f"{where}: '{columns[modality]}' lists {listed[modality]} {modality}(s) but the messages "
                            f"have {parts} {modality} part(s) to consume them; add {{\"type\": \"{modality}\"}} "
                            "parts or remove files", Reason.MEDIA_COUNT_MISMATCH)
    return items


def conversation_example(raw: RawRow, source: Any, ctx: ExampleContext) -> Example:
    """A conversations row -> Example (validated messages, resolved images)."""
    row, where = raw.row or {}, raw.where
    messages = cell(row, source.messages_column, where)
    if not isinstance(messages, list) or not messages:
        found = "nothing" if messages is None else f"a {type(messages).__name__}"
        raise DataError(f"{where}: column '{source.messages_column}' should be a non-empty list of messages, "
                        f"found {found}; set data.<split>[i].messages_column or format: pretrain",
                        Reason.MALFORMED_ROW)
    slots: list[tuple[str, Any]] = []
    normalised = [_normalise_message(m, k, where, ctx, slots) for k, m in enumerate(messages)]
    if ctx.required_roles and not any(m["role"] in ctx.required_roles for m in normalised):
        raise DataError(f"{where}: no {'/'.join(ctx.required_roles)} turn, so nothing would be trained; add "
                        "one, use mask.mode: all, or set data.on_bad_row: skip", Reason.NO_ASSISTANT_TURN)
    media = _resolve_slots(slots, row, media_columns(source), where, ctx)
    tools = cell(row, "tools", where)
    if tools is not None and not isinstance(tools, list):
        raise DataError(f"{where}: 'tools' should be a list of tool schemas", Reason.MALFORMED_ROW)
    return Example(messages=normalised, media=media, tools=tools or None, where=where, source=ctx.source)


def pretrain_example(raw: RawRow, source: Any, ctx: ExampleContext) -> Example:
    """A pretraining row ``{"text": "... <image> ...", "images": [...]}`` -> Example (counted at render)."""
    row, where = raw.row or {}, raw.where
    text = row.get(source.text_column)
    if not isinstance(text, str):
        found = "nothing" if text is None else f"a {type(text).__name__}"
        raise DataError(f"{where}: column '{source.text_column}' should be a string, found {found}; fix the "
                        "row or set data.<split>[i].text_column", Reason.NON_STRING_TEXT)
    column = media_entries(cell(row, source.images_column, where))
    media = [MediaItem("image", _media_ref(entry, where, ctx)) for entry in column]
    return Example(messages=[], media=media, where=where, format="pretrain", text=text, source=ctx.source)


def example_from_raw(raw: RawRow, source: Any, ctx: ExampleContext) -> Example:
    """Validate one raw row of ``source`` (raises the row's DataError)."""
    if raw.error is not None:
        raise raw.error
    row = raw.row or {}
    fmt = format_for(source, row, raw.where, ctx.source, ctx.formats)
    canonical = RawRow(raw.where, fmt.to_canonical(row, source, raw.where))
    if fmt.kind == "pretrain":
        return pretrain_example(canonical, canonical_columns(fmt, source), ctx)
    return conversation_example(canonical, canonical_columns(fmt, source), ctx)
