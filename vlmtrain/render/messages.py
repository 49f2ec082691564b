"""What the template sees of a message: nulls removed, content in the form the template reads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


def drop_nulls(value: Any) -> Any:
    """Remove None-valued keys: a template treats a present-but-null key as defined (``content: null`` would
    render "None"), and Arrow's schema merging injects such keys into every nested dict."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


log = logging.getLogger(__name__)

PARTS, STRING = "parts", "string"
_PROBE = "zqxprobe"
_PROBES: dict[str, list[tuple[str, str]]] = {  # a minimal conversation around the probed role's message
    "system": [("system", _PROBE), ("user", "hi")],
    "user": [("user", _PROBE)],
    "assistant": [("user", "hi"), ("assistant", _PROBE)],
    "tool": [("user", "hi"), ("assistant", "ok"), ("tool", _PROBE)],
}


def _shows_text_once(render: Callable[[list[dict]], str], role: str, form: str) -> bool:
    wrap = (lambda s: [{"type": "text", "text": s}]) if form == PARTS else (lambda s: s)
    try:
        text = render([{"role": r, "content": wrap(s)} for r, s in _PROBES[role]])
    except Exception:  # noqa: BLE001 - any refusal of this form disqualifies it, and only it
        return False
    return text.count(_PROBE) == 1 and "'type'" not in text


def probe_content_forms(render: Callable[[list[dict]], str], prefer: str) -> dict[str, str]:
    """For each role, the content form the template shows exactly once: a string or a list of text parts.

    Templates disagree even within one model: Mllama's prints a list system content as its Python repr
    while its user turns need parts; IDEFICS3's renders nothing for a string; Pixtral's fails on a list.
    Rendering the same probe both ways and keeping the form whose text appears once (and no ``'type'`` repr)
    never guesses. ``prefer`` wins when both forms work; when neither does the role keeps ``prefer`` and the
    row-level checks report what goes wrong.
    """
    other = STRING if prefer == PARTS else PARTS
    forms: dict[str, str] = {}
    undecided: list[str] = []
    for role in _PROBES:
        if _shows_text_once(render, role, prefer):
            forms[role] = prefer
        elif _shows_text_once(render, role, other):
            forms[role] = other
        else:
            forms[role] = prefer
            if role != "tool":  # many templates take no tool messages at all; that is no finding
                undecided.append(role)
    if undecided:
        log.warning("the chat template shows no probe text exactly once for role(s) %s in either content form; "
                    "they are rendered as %s: check them with `vlmtrain inspect-mask`", undecided, prefer)
    return forms


def in_forms(messages: list[dict], forms: dict[str, str]) -> list[dict]:
    """Each message's text content in its role's probed form (media parts and other roles untouched).

    An empty string stays a string: a list holding one empty part is truthy, and templates test
    ``if message.content`` (Qwen3-VL writes a blank line before tool calls for it).
    """
    out = []
    for m in messages:
        content, form = m.get("content"), forms.get(str(m.get("role")))
        if form == PARTS and isinstance(content, str) and content:
            m = {**m, "content": [{"type": "text", "text": content}]}
        elif form == STRING and isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" for p in content):
            m = {**m, "content": "".join(p.get("text", "") for p in content)}
        out.append(m)
    return out


def text_parts(message: dict) -> list[str]:
    """The texts a message contributes, in order (string content or its text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []
