"""Message spans in O(1) template renders per row, checked against the prefix-render reference.

The reference (``template.py``) renders every growing prefix of a conversation and the generation prompt
before every assistant turn: O(turns) renders of O(turns) messages each. Here one extra render locates every
message: each text content is replaced by a unique private-use sentinel, and substituting the texts back must
give the real render exactly (templates that inspect or rewrite content fail this and fall back). A message's
span then starts where the template's opening for its role (learned once per template from a two-message
probe, keyed by the previous message's role) begins before its text; an assistant's sampled text starts after
the generation prompt the template writes in that place.

The model "a prefix render is the full render up to the next message's opening" fails for templates whose
output depends on position (Qwen3 / GLM keep reasoning only after the last user turn; Llama 3 refuses prefixes
without the tools' user turn). That is detected, not guessed: each row's shape (the pairs of adjacent message
kinds, the final ones, and the last user turn) is checked once by running both strategies on a small
conversation made of the row's own messages that cover that shape; a difference routes every row of that
shape to the reference. Any row the model cannot place returns ``None`` and the caller falls back, counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vlmtrain.render.chat import TEMPLATE_ERRORS, ChatRenderer
from vlmtrain.render.messages import in_forms

# message starts, merged spans, where each assistant turn's sampled text begins, and the assistant turns whose
# generation prompt is not a prefix of the text (sampling starts inside the token holding the divergence)
Spans = tuple[list[int], int, dict[int, int], frozenset[int]]
Reference = Callable[[Sequence[dict], str, Any], Spans]

_OPEN, _CLOSE = "\ue000", "\ue001"
_CTX: dict[str, list[tuple[str, str]]] = {  # a minimal conversation ending with a message of the given role
    "": [],
    "system": [("system", "hi")],
    "user": [("user", "hi")],
    "assistant": [("user", "hi"), ("assistant", "ok")],
    "tool": [("user", "hi"), ("assistant", "ok"), ("tool", "done")],
}


def _sentinel(k: int, j: int) -> str:
    return f"{_OPEN}{k}.{j}{_CLOSE}"


def _common_prefix_len(a: str, b: str) -> int:
    from vlmtrain.render.template import _common_prefix_len as cpl

    return cpl(a, b)


def with_sentinels(messages: Sequence[dict]) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """The messages with every non-empty text replaced by a sentinel, and (message, sentinel, text) in order.

    Empty texts stay: templates test ``if message.content``."""
    out: list[dict] = []
    subs: list[tuple[int, str, str]] = []
    for k, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, str) and content:
            subs.append((k, _sentinel(k, 0), content))
            m = {**m, "content": subs[-1][1]}
        elif isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) and p["text"]:
                    subs.append((k, _sentinel(k, j), p["text"]))
                    p = {**p, "text": subs[-1][1]}
                parts.append(p)
            m = {**m, "content": parts}
        out.append(m)
    return out, subs


def locate_texts(probe: str, full: str, subs: list[tuple[int, str, str]]) -> dict[int, tuple[int, int]] | None:
    """Per message, (start of its first text, end of its last) in ``full``; None unless substituting each
    sentinel of ``probe`` by its text (as written, or trimmed as ``| trim`` templates do) gives ``full``."""
    anchors: dict[int, tuple[int, int]] = {}
    at_probe = at_full = 0
    for k, sentinel, text in subs:
        hit = probe.find(sentinel, at_probe)
        if hit < 0 and sentinel not in probe:
            continue  # the template does not show this text (Llama 3 drops an assistant's text beside tool calls)
        if hit < 0 or probe.find(sentinel, hit + 1) >= 0:
            return None
        literal = probe[at_probe:hit]
        if not full.startswith(literal, at_full):
            return None
        at_full += len(literal)
        at_probe = hit + len(sentinel)
        following = probe.find(_OPEN, at_probe)
        after = probe[at_probe:following if following >= 0 else len(probe)]
        written = next((t for t in dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip()))
                        if full.startswith(t + after, at_full)), None)
        if written is None:
            return None
        lo = anchors[k][0] if k in anchors else at_full
        anchors[k] = (lo, at_full + len(written))
        at_full += len(written)
    return anchors if probe[at_probe:] == full[at_full:] else None


class LinearSpans:
    """Per template: the role openings and generation prompts (probed once), and which row shapes are checked."""

    def __init__(self, renderer: ChatRenderer, reference: Reference) -> None:
        self.renderer, self.reference = renderer, reference
        self._openings: dict[tuple[str, str], str | None] = {}
        self._prompts: dict[str, str | None] = {}
        self._shapes: dict[tuple, bool] = {}

    # --- probes, once per template -------------------------------------------------------------------------
    def _ctx(self, prev: str) -> list[dict]:
        return in_forms([{"role": r, "content": t} for r, t in _CTX[prev]], self.renderer.content_forms)

    def _render(self, messages: list[dict], **kw: Any) -> str | None:
        try:
            return self.renderer.render(messages, **kw)
        except (*TEMPLATE_ERRORS, ValueError):
            return None

    def opening(self, prev: str, role: str) -> str | None:
        """What the template writes between a ``prev`` message and the text of a following ``role`` message."""
        key = (prev, role)
        if key not in self._openings:
            ctx = self._ctx(prev)
            sentinel = _sentinel(0, 0)
            message = in_forms([{"role": role, "content": sentinel}], self.renderer.content_forms)[0]
            after = self._render([*ctx, message])
            found = None
            if after is not None and after.count(sentinel) == 1:
                try:  # where the reference starts the message (Qwen3 rewrites the last assistant of ``ctx``)
                    start = self.reference([*ctx, message], after, None)[0][-1]
                except (*TEMPLATE_ERRORS, ValueError):
                    start = len(after)
                found = after[start:after.index(sentinel)]
            self._openings[key] = found
        return self._openings[key]

    def prompt(self, prev: str) -> str | None:
        """The generation prompt the template adds after a ``prev`` message."""
        if prev not in self._prompts:
            ctx = self._ctx(prev)
            plain, fed = self._render(ctx) if ctx else "", self._render(ctx, add_generation_prompt=True)
            found = None
            if plain is not None and fed is not None:
                found = fed[_common_prefix_len(plain, fed):]
            self._prompts[prev] = found
        return self._prompts[prev]

    # --- one row -------------------------------------------------------------------------------------------
    def spans(self, messages: Sequence[dict], full: str, tools: Any) -> Spans | None:
        """Starts, merged count and sample starts equal to the reference's, or None (use the reference)."""
        roles = [str(m.get("role")) for m in messages]
        if not messages or _OPEN in full or _CLOSE in full:
            return None
        shape = self._shape_key(messages, roles, tools)
        if shape not in self._shapes:
            self._shapes[shape] = self._check_shape(messages, roles, tools)
        if not self._shapes[shape]:
            return None
        return self._place(messages, roles, full, tools)

    def _place(self, messages: Sequence[dict], roles: list[str], full: str, tools: Any) -> Spans | None:
        probed, subs = with_sentinels(messages)
        probe = self._render(probed, tools=tools)
        anchors = locate_texts(probe, full, subs) if probe is not None else None
        if anchors is None:
            return None
        from vlmtrain.render.template import _message_starts

        # Up to the first user turn the reference's own prefix renders (a few tiny ones) place the preamble
        # exactly: templates refuse or rewrite those prefixes (Llama 3 puts the tools in the first user turn).
        head_count = roles.index("user") + 1 if "user" in roles else 1
        starts, merged = _message_starts(self.renderer, messages[:head_count], full, tools)
        sample_from: dict[int, int] = {}
        diverged: set[int] = set()
        cursor = starts[0]
        for k, role in enumerate(roles):
            prev = roles[k - 1] if k else ""
            if k >= head_count:
                head = self.prompt(prev) if role == "assistant" else self.opening(prev, role)
                if head is None:
                    return None
                if k in anchors:
                    at = full.rfind(head, cursor, anchors[k][0])
                else:
                    nxt = min((anchors[j][0] for j in anchors if j > k), default=len(full))
                    at = full.find(head, cursor, nxt)
                if at < 0:
                    return None
                starts.append(max(at, starts[-1]))
            if role == "assistant":
                prompt = self.prompt(prev) if k else None
                if k and prompt is None:
                    return None
                fed = _common_prefix_len(prompt, full[starts[k]:starts[k] + len(prompt)]) if prompt else 0
                sample_from[k] = starts[k] + fed
                if prompt and 0 < fed < len(prompt):
                    diverged.add(k)
            cursor = anchors[k][1] if k in anchors else starts[k] + (1 if k else 0)
            if k in anchors and anchors[k][0] < starts[k]:
                return None
        return starts, merged, sample_from, frozenset(diverged)

    # --- shape checks -------------------------------------------------------------------------------------
    @staticmethod
    def _kind(m: dict) -> tuple:
        content = m.get("content")
        media = isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content)
        return (str(m.get("role")), bool(m.get("tool_calls")), "reasoning_content" in m, media, not content,
                tuple(sorted(k for k in m if k not in ("role", "content", "tool_calls", "reasoning_content"))))

    def _cover(self, messages: Sequence[dict], roles: list[str]) -> list[int]:
        """Indices of a small sub-conversation with every adjacent pair of kinds, the last user turn and the end."""
        keep = {0, len(messages) - 1, len(messages) - 2}
        users = [k for k, r in enumerate(roles) if r == "user"]
        if users:
            keep |= {users[-1], users[-1] - 1, users[-1] + 1}
        seen: set = set()
        for k in range(1, len(messages)):
            pair = (self._kind(messages[k - 1]), self._kind(messages[k]), k > (users[-1] if users else -1))
            if pair not in seen:
                seen.add(pair)
                keep |= {k - 2, k - 1, k}
        kept = sorted(i for i in keep if 0 <= i < len(messages))
        kinds = [self._kind(m) for m in messages]
        out = kept[:1]
        for i in kept[1:]:
            j = out[-1]
            start = i
            while start > j + 1 and kinds[start - 1] != kinds[j]:  # join only where the row has that pair
                start -= 1
            out.extend(range(start, i + 1))
        return out

    def _shape_key(self, messages: Sequence[dict], roles: list[str], tools: Any) -> tuple:
        cover = self._cover(messages, roles)
        return (tools is not None, tuple(self._kind(messages[i]) for i in cover))

    def _check_shape(self, messages: Sequence[dict], roles: list[str], tools: Any) -> bool:
        """Both strategies agree on the row's covering sub-conversation (a template refusing it: no)."""
        sub = [messages[i] for i in self._cover(messages, roles)]
        try:
            full = self.renderer.render(sub, tools=tools)
            want = self.reference(sub, full, tools)
        except (*TEMPLATE_ERRORS, ValueError):
            return False
        return self._place(sub, [str(m.get("role")) for m in sub], full, tools) == want
