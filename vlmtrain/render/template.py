"""Attribute every token of a rendered conversation to a message, a kind, and whether the model samples it.

Mechanism (one for every family): render growing prefixes of the conversation through the real template and
compare strings to get each message's character span; the generation prompt rendered before an assistant turn
is what the inference engine feeds, so the assistant's sampled tokens start where that prompt ends and run to
the first stop token the registry declares. Character spans become token spans through the fast tokenizer's
offsets; media expansion done by the processor is aligned afterwards (``expand.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmtrain.families.resolve import ResolvedFamily
from vlmtrain.render.attributor import RenderInput
from vlmtrain.render.chat import TEMPLATE_ERRORS, ChatRenderer
from vlmtrain.render.expand import expand_media, mark_media
from vlmtrain.render.messages import drop_nulls, in_forms, text_parts
from vlmtrain.render.row import CONTENT, MARKER, NO_MESSAGE, MaskedRow
from vlmtrain.render.spans import LinearSpans


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, in C-speed slices (templates are nearly always prefix-stable)."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _shared_tail_len(tail: str, full: str, at: int) -> int:
    """Length of the longest suffix of ``tail`` that ``full`` continues with at ``at`` (0 if only whitespace).

    Some templates render a message differently when it is the last one: Qwen3 gives the final assistant turn
    an empty think block, Qwen3 and GLM keep reasoning only after the last user message. A prefix render then
    diverges from ``full`` inside its last message yet ends with that message's text and closing as ``full``
    writes them; that shared tail still belongs to the message. A prefix that only appends trailing text
    (Phi-3's eos after the last turn) shares no such tail.
    """
    if not tail or at >= len(full):
        return 0
    i = tail.find(full[at], 1)
    while i >= 0:
        if full.startswith(tail[i:], at):
            return len(tail) - i if tail[i:].strip() else 0
        i = tail.find(full[at], i + 1)
    return 0


def _message_starts(renderer: ChatRenderer, messages: Sequence[dict], full: str, tools: Any
                    ) -> tuple[list[int], int]:
    """Character offset in ``full`` where each message's template span starts, and how many spans merged.

    Some templates cannot render every prefix (``messages[0]`` of an empty list; Llama 3 puts the tools in
    the first user message and refuses a prefix without one): message k-1's span then joins k's, which only
    moves template text between two adjacent messages' display, never what is sampled; the count is reported.
    """
    starts: list[int] = []
    merged = 0
    for k in range(len(messages)):
        # transformers refuses to render an empty conversation (ValueError): message 0 then starts at 0.
        refusals = (*TEMPLATE_ERRORS, ValueError) if k == 0 else TEMPLATE_ERRORS
        try:
            prefix = renderer.render(messages[:k], tools=tools)
        except refusals:
            starts.append(starts[-1] if starts else 0)
            merged += k > 0
            continue
        start = _common_prefix_len(prefix, full)
        start += _shared_tail_len(prefix[start:], full, start)
        starts.append(max(start, starts[-1] if starts else 0))
    return starts, merged


def _content_mask(full: str, starts: list[int], messages: Sequence[dict], tok_starts: np.ndarray) -> np.ndarray:
    """True for tokens that fall inside a message's own text (as opposed to template scaffolding)."""
    bounds = [*starts[1:], len(full)]
    ranges: list[tuple[int, int]] = []
    for k, message in enumerate(messages):
        cursor, end = starts[k], bounds[k]
        for part in text_parts(message):
            needle = part.strip()
            if not needle:
                continue
            at = full.find(needle, cursor, end)
            if at >= 0:
                ranges.append((at, at + len(needle)))
                cursor = at + len(needle)
    # A token is content when it overlaps the text: " café" / "▁Say" start on the template's space before it.
    # The ranges are ordered and disjoint (each search starts past the previous match), so the only range a
    # token can overlap first is the last one starting before the token ends: one binary search per token.
    tok_ends = np.append(tok_starts[1:], len(full))
    if not ranges:
        return np.zeros(len(tok_starts), dtype=bool)
    lo, hi = np.asarray(ranges, dtype=np.int64).T
    last = np.searchsorted(lo, tok_ends, side="left") - 1
    return (last >= 0) & (hi[np.maximum(last, 0)] > tok_starts)


def _is_blank(renderer: ChatRenderer, token_id: int) -> bool:
    return not renderer.tokenizer.decode([int(token_id)]).strip()


def reference_spans(renderer: ChatRenderer, messages: Sequence[dict], full: str, tools: Any
                    ) -> tuple[list[int], int, dict[int, int], frozenset[int]]:
    """The prefix strategy: message starts, merged spans, where each assistant turn's sampled text begins (the
    end of the prompt the inference engine would feed), and the turns whose prompt is not a prefix of the text.
    O(turns) renders; the reference."""
    starts, merged = _message_starts(renderer, messages, full, tools)
    sample_from: dict[int, int] = {}
    diverged: set[int] = set()
    for k, m in enumerate(messages):
        if m.get("role") == "assistant":
            prompt = renderer.render(messages[:k], add_generation_prompt=True, tools=tools)
            fed = _common_prefix_len(prompt, full)
            sample_from[k] = max(fed, starts[k])
            if starts[k] < fed < len(prompt):
                diverged.add(k)
    return starts, merged, sample_from, frozenset(diverged)


def attribute_by_template(renderer: ChatRenderer, family: ResolvedFamily, messages: Sequence[dict],
                          tools: list[dict] | None = None, linear: LinearSpans | None = None) -> MaskedRow:
    """Render ``messages`` with the model's template and attribute every token (media not yet expanded).

    With ``linear``, spans come from one sentinel render (``spans.py``); rows it cannot place exactly use the
    prefix reference and are counted (``linear_fallbacks``)."""
    messages = [drop_nulls(m) for m in messages]
    roles = [str(m.get("role")) for m in messages]
    full = renderer.render(messages, tools=tools)
    spans = linear.spans(messages, full, tools) if linear is not None else None
    fallback = linear is not None and spans is None
    starts, merged, sample_from, diverged = (spans if spans is not None
                                             else reference_spans(renderer, messages, full, tools))

    appended = False
    last = len(messages) - 1
    if family.family.appends_final_stop and last >= 0 and roles[last] == "assistant":
        # The template ends the final turn with no stop token: write one right after the answer (never inside
        # the generation prompt, which an empty answer leaves last: GLM's "<|assistant|>\n").
        at = max(len(full.rstrip()), sample_from.get(last, 0))
        full = full[:at] + family.final_stop + full[at:]
        appended = True

    ids, tok_starts = renderer.text_tokens(full)
    n = len(ids)
    message_index = (np.searchsorted(np.asarray(starts), tok_starts, side="right") - 1).astype(np.int64)
    message_index[tok_starts < (starts[0] if starts else 0)] = NO_MESSAGE
    if n and renderer.adds_special_tokens(full):
        message_index[tok_starts == 0] = np.where(ids[tok_starts == 0] == renderer.tokenizer.bos_token_id,
                                                  NO_MESSAGE, message_index[tok_starts == 0])
    kind = np.where(_content_mask(full, starts, messages, tok_starts), CONTENT, MARKER).astype(np.int8)
    sampled = np.zeros(n, dtype=bool)
    ends_turn = np.full(n, NO_MESSAGE, dtype=np.int64)
    is_stop = np.isin(ids, np.asarray(family.stop_ids, dtype=np.int64))
    positions = np.arange(n)
    # Message spans are contiguous and in order (starts only grow), so each is a slice: linear in the row.
    bounds = np.searchsorted(message_index, np.arange(len(roles) + 2), side="left")

    for k, role in enumerate(roles):
        span = positions[bounds[k]:bounds[k + 1]]
        if span.size == 0:
            continue
        if role != "assistant":
            content = span[kind[span] == CONTENT]
            # Without text, look past the span's opening marker: in GLM it is the previous turn's stop.
            after = span[span > content[-1]] if content.size else span[1:]
            stops = after[is_stop[after]]
            if stops.size:
                ends_turn[stops[0]] = k
            continue
        first = int(np.searchsorted(tok_starts, sample_from[k], side="left"))
        if k in diverged and first > 0 and (first == n or tok_starts[first] > sample_from[k]):
            # The prompt the engine feeds stops inside this token (Qwen3.5 feeds "<think>", the text has
            # "<tool_call>"): the engine never fed the token, so the model samples it.
            first -= 1
        window = positions[first:span[-1] + 1]
        if family.family.stop_placement == "next_turn":
            following = positions[bounds[k + 1]:bounds[k + 2]]
            opener = next((int(i) for i in following if not _is_blank(renderer, ids[i])), None)
            if opener is not None:
                window = positions[first:opener + 1]
        stops = window[is_stop[window]]
        if stops.size:
            end = int(stops[0])
            ends_turn[end] = k
        else:
            non_blank = [int(i) for i in window if not _is_blank(renderer, ids[i])]
            end = non_blank[-1] if non_blank else first - 1
        sampled[first:end + 1] = True

    return MaskedRow(input_ids=ids, message_index=message_index, kind=kind, sampled=sampled, ends_turn=ends_turn,
                     roles=roles, text=full, appended_stop=appended, merged_spans=merged,
                     linear_fallbacks=int(fallback))


STRATEGIES = ("linear", "prefix")
DEFAULT_STRATEGY = "linear"


class TemplateAttributor:
    """The model's real chat template, with the registry family's stop tokens.

    ``strategy``: ``linear`` (default) locates spans with O(1) renders per row and falls back to the prefix
    reference for any row it cannot place exactly (counted); ``prefix`` forces the reference.
    """

    name = "family"

    def __init__(self, chat: ChatRenderer, family: ResolvedFamily, strategy: str = DEFAULT_STRATEGY) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"attribution strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
        self.chat, self.family, self.strategy = chat, family, strategy
        self.linear = (LinearSpans(chat, lambda m, full, tools: reference_spans(chat, m, full, tools))
                       if strategy == "linear" else None)

    def attribute(self, sample: RenderInput) -> MaskedRow:
        messages = in_forms(sample.messages, self.chat.content_forms)
        row = attribute_by_template(self.chat, self.family, messages, tools=sample.tools, linear=self.linear)
        return mark_media(expand_media(row, self.chat, sample.media), self.family.media_ids)


