"""LLaMA-Factory / ShareGPT and LLaVA rows: turns of ``{from, value}`` (or ``{role, content}`` with string
content), media as placeholders (``<image>``, ``<video>``) in the text, files in ``images``/``videos`` (LLaVA:
one path in ``image``), a ``system`` column and ``tools`` (a JSON string of function schemas in LLaMA-Factory).

Each placeholder becomes a bare media part where it stands (the text is split around it); ``function_call``
turns become assistant ``tool_calls`` and ``observation`` turns ``tool`` messages, so the model's own template
renders them. ``role_map`` (source key) extends or overrides the speaker -> role map.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from vlmtrain.errors import DataError, Reason
from vlmtrain.formats.base import (
    cell,
    check_counts,
    check_unused_media,
    media_list,
    misfit,
    no_video,
    split_placeholders,
    video_supported,
)

TOOL_CALL = "function_call"  # role_map target: the turn is an assistant tool call (its text is the call JSON)
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "observation": "tool", "tool": "tool", "function": "tool", "function_call": TOOL_CALL}


def conversation_column(row: dict[str, Any], source: Any) -> str:
    return str(source.messages_column) if source.messages_column in row else "conversations"


def _turns(row: dict[str, Any], source: Any, where: str) -> list[Any] | None:
    try:
        turns = cell(row, conversation_column(row, source), where)
    except DataError:
        return None
    return turns if isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns) else None


def is_sharegpt(row: dict[str, Any], source: Any) -> bool:
    """``{from, value}`` turns, or ``{role, content}`` turns with string content that carries media (a
    placeholder in the text or a non-empty media column) — HF rows would carry media as parts."""
    turns = _turns(row, source, "")
    if turns is None:
        return False
    if all("from" in t for t in turns):
        return True
    if not all("role" in t and isinstance(t.get("content"), (str, type(None))) for t in turns):
        return False
    marks = placeholders(source).values()
    texts = [t.get("content") or "" for t in turns]
    has_media = any(media_list(row.get(c)) for c in (source.images_column, source.videos_column))
    return has_media or any(p in text for p in marks for text in texts)


def placeholders(source: Any) -> dict[str, str]:
    return {"image": source.image_placeholder or "<image>", "video": source.get("video_placeholder") or "<video>"}


def _speakers(source: Any) -> dict[str, str]:
    return {**SPEAKERS, **{str(k): str(v) for k, v in (source.get("role_map") or {}).items()}}


def _tool_calls(value: Any, where: str, k: int) -> list[dict[str, Any]]:
    """A ``function_call`` turn's text (``{"name", "arguments"}`` JSON, or a list of them) -> HF tool_calls."""
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: turn {k} is a function_call whose text is not JSON ({err.msg}); write it as "
                        "{\"name\": ..., \"arguments\": {...}}", Reason.MALFORMED_ROW) from err
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise DataError(f"{where}: turn {k} is a function_call without a \"name\"; write it as "
                            "{\"name\": ..., \"arguments\": {...}}", Reason.MALFORMED_ROW)
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # else templates render the string as it is
                arguments = json.loads(arguments)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _message(turn: dict[str, Any], k: int, where: str, fmt: str, speakers: dict[str, str],
             marks: dict[str, str]) -> dict[str, Any]:
    if "from" in turn:
        speaker, content, extra = turn.get("from"), turn.get("value"), {}
        if speaker not in speakers:
            raise DataError(f"{where}: turn {k} is from {speaker!r}, which maps to no role; add it to the source's "
                            f"role_map (e.g. role_map: {{{speaker}: assistant}})", Reason.UNKNOWN_ROLE)
    elif "role" in turn:
        speaker, content = turn.get("role"), turn.get("content")
        extra = {key: v for key, v in turn.items() if key not in ("role", "content")}
    else:
        raise misfit(where, fmt, f"turn {k} has neither from/value nor role/content")
    role = speakers.get(str(speaker), speaker)
    if role == TOOL_CALL:
        return {"role": "assistant", "content": "", "tool_calls": _tool_calls(content, where, k)}
    if isinstance(content, str):
        parts = split_placeholders(content, marks)
        if any(p["type"] != "text" for p in parts):
            content = parts
    elif content is not None and not isinstance(content, list):
        raise misfit(where, fmt, f"turn {k}'s text is a {type(content).__name__}, not a string")
    return {**extra, "role": role, "content": content}


def _tools(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """LLaMA-Factory's ``tools`` (JSON text of bare function schemas) -> HF tool schemas."""
    tools = cell(row, "tools", where)
    if tools in (None, "", []):
        return None
    tools = tools if isinstance(tools, list) else [tools]
    return [t if not isinstance(t, dict) or "type" in t else {"type": "function", "function": t} for t in tools]


def read_conversation(row: dict[str, Any], source: Any, where: str, fmt: str, images_column: str) -> dict[str, Any]:
    """The canonical row of a ShareGPT-like row whose images are in ``images_column``."""
    column = conversation_column(row, source)
    turns = cell(row, column, where)
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        found = "nothing" if turns is None else f"a {type(turns).__name__}"
        raise misfit(where, fmt, f"column '{column}' should be a non-empty list of turns, found {found}")
    marks = placeholders(source)
    speakers = _speakers(source)
    messages = [_message(t, k, where, fmt, speakers, marks) for k, t in enumerate(turns)]
    system = row.get(source.get("system_column") or "system")
    if isinstance(system, str) and system:
        if messages[0]["role"] == "system":
            raise misfit(where, fmt, "both a system column and a system turn", "keep one of them")
        messages.insert(0, {"role": "system", "content": system})
    media = {"image": media_list(cell(row, images_column, where))}
    columns = {"image": images_column, "video": str(source.videos_column)}
    videos = media_list(cell(row, columns["video"], where))
    if video_supported():
        media["video"] = videos
    elif videos:
        raise no_video(where, f"column '{columns['video']}'")
    elif any(p == {"type": "video"} for m in messages if isinstance(m["content"], list) for p in m["content"]):
        raise no_video(where, f"placeholder {marks['video']!r}")
    check_counts(messages, media, marks, columns, where)
    check_unused_media(row, {column, images_column, columns["video"]}, where, fmt)
    canonical: dict[str, Any] = {"messages": messages, "images": media["image"], "tools": _tools(row, where)}
    if "video" in media:
        canonical["videos"] = media["video"]
    return canonical


class ShareGPTFormat:
    """LLaMA-Factory's sharegpt/openai shapes and plain ShareGPT."""

    name, kind, native = "sharegpt", "chat", False

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        return is_sharegpt(row, source)

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        return read_conversation(row, source, where, self.name, str(source.images_column))

    def columns(self, source: Any) -> str:
        return (f"turns={source.messages_column}|conversations, images={source.images_column}, "
                f"videos={source.videos_column}, system={source.system_column}, tools=tools, placeholders "
                f"{' '.join(placeholders(source).values())}")


class LlavaFormat:
    """LLaVA's instruction data: one image path in ``image``, ``conversations`` of ``{from, value}``."""

    name, kind, native = "llava", "chat", False

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        turns = _turns(row, source, "")
        return (turns is not None and all("from" in t for t in turns) and bool(media_list(row.get("image")))
                and not media_list(row.get(source.images_column)))

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        return read_conversation(row, source, where, self.name, "image")

    def columns(self, source: Any) -> str:
        return f"turns=conversations, image=image, placeholder {placeholders(source)['image']}"
