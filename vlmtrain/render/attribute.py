"""Attribute every token of a rendered conversation to a message, a kind, and whether the model samples it.

Mechanism (one for every family): render growing prefixes of the conversation through the real template and
compare strings to get each message's character span; the generation prompt rendered before an assistant turn
is what the inference engine feeds, so the assistant's sampled tokens start where that prompt ends and run to
the first stop token the registry declares. Character spans become token spans through the fast tokenizer's
offsets; media expansion done by the processor is aligned afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from vlmtrain.families.resolve import ResolvedFamily
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.rendered import CONTENT, MARKER, MEDIA, NO_MESSAGE, RenderedRow


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


def drop_nulls(value: Any) -> Any:
    """Remove None-valued keys: Arrow merges row schemas and templates would render the injected nulls."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _text_parts(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


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


def _message_starts(renderer: ChatRenderer, messages: Sequence[dict], full: str, tools: Any) -> list[int]:
    """Character offset in ``full`` where each message's template span starts."""
    starts: list[int] = []
    for k in range(len(messages)):
        try:
            prefix = renderer.render(messages[:k], tools=tools)
        except Exception:
            # Some templates cannot render every prefix (messages[0] of an empty list; Llama 3 puts the tools
            # in the first user message and refuses a prefix without one): message k-1's span joins k's.
            starts.append(starts[-1] if starts else 0)
            continue
        start = _common_prefix_len(prefix, full)
        start += _shared_tail_len(prefix[start:], full, start)
        starts.append(max(start, starts[-1] if starts else 0))
    return starts


def _content_mask(full: str, starts: list[int], messages: Sequence[dict], tok_starts: np.ndarray) -> np.ndarray:
    """True for tokens that fall inside a message's own text (as opposed to template scaffolding)."""
    bounds = [*starts[1:], len(full)]
    ranges: list[tuple[int, int]] = []
    for k, message in enumerate(messages):
        cursor, end = starts[k], bounds[k]
        for part in _text_parts(message):
            needle = part.strip()
            if not needle:
                continue
            at = full.find(needle, cursor, end)
            if at >= 0:
                ranges.append((at, at + len(needle)))
                cursor = at + len(needle)
    # A token is content when it overlaps the text: " café" / "▁Say" start on the template's space before it.
    tok_ends = np.append(tok_starts[1:], len(full))
    is_content = np.zeros(len(tok_starts), dtype=bool)
    for lo, hi in ranges:
        is_content |= (tok_starts < hi) & (tok_ends > lo)
    return is_content


def _is_blank(renderer: ChatRenderer, token_id: int) -> bool:
    return not renderer.tokenizer.decode([int(token_id)]).strip()


def render_row(
    renderer: ChatRenderer,
    family: ResolvedFamily,
    messages: Sequence[dict],
    images: list[Any] | None = None,
    tools: list[dict] | None = None,
) -> RenderedRow:
    """Render ``messages`` with the model's template, expand media with its processor, and attribute tokens."""
    messages = [drop_nulls(m) for m in messages]
    roles = [str(m.get("role")) for m in messages]
    full = renderer.render(messages, tools=tools)
    starts = _message_starts(renderer, messages, full, tools)

    # Where each assistant turn's sampled text begins: the end of the prompt the inference engine would feed.
    sample_from: dict[int, int] = {}
    for k, role in enumerate(roles):
        if role == "assistant":
            prompt = renderer.render(messages[:k], add_generation_prompt=True, tools=tools)
            sample_from[k] = max(_common_prefix_len(prompt, full), starts[k])

    appended = False
    last = len(messages) - 1
    if family.family.appends_final_stop and last >= 0 and roles[last] == "assistant":
        # The template ends the final turn with no stop token: write one right after the answer.
        at = len(full.rstrip())
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

    for k, role in enumerate(roles):
        span = np.flatnonzero(message_index == k)
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
        window = positions[(positions >= first) & (positions <= span[-1])]
        if family.family.stop_placement == "next_turn":
            following = np.flatnonzero(message_index == k + 1)
            opener = next((int(i) for i in following if not _is_blank(renderer, ids[i])), None)
            if opener is not None:
                window = positions[(positions >= first) & (positions <= opener)]
        stops = window[is_stop[window]]
        if stops.size:
            end = int(stops[0])
            ends_turn[end] = k
        else:
            non_blank = [int(i) for i in window if not _is_blank(renderer, ids[i])]
            end = non_blank[-1] if non_blank else first - 1
        sampled[first:end + 1] = True

    row = RenderedRow(input_ids=ids, message_index=message_index, kind=kind, sampled=sampled,
                      ends_turn=ends_turn, roles=roles, text=full, appended_stop=appended)
    if renderer.is_processor and images:
        row = _expand_media(row, renderer, images)
    is_media = np.isin(row.input_ids, family.media_ids)
    row.kind[is_media] = MEDIA
    row.sampled &= ~is_media
    return row


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encoding: (value, start, length) of each run of equal ids."""
    if not len(ids):
        return ids, ids, ids
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], starts, np.diff(np.r_[starts, len(ids)])


def _align(plain: np.ndarray, expanded: np.ndarray) -> np.ndarray:
    """For each expanded id, the index of the plain id it is (-1 where the processor inserted it).

    The common prefix and suffix are matched with numpy. The stretch between the first and the last image is
    diffed run-length encoded, so an image's hundreds of repeated media ids are one element and the diff stays
    linear in the number of images.
    """
    source = np.full(len(expanded), -1, dtype=np.int64)
    n = min(len(plain), len(expanded))
    differs = np.flatnonzero(plain[:n] != expanded[:n])
    head = int(differs[0]) if differs.size else n
    differs = np.flatnonzero(plain[::-1][:n - head] != expanded[::-1][:n - head])
    tail = int(differs[0]) if differs.size else n - head
    source[:head] = np.arange(head)
    if tail:
        source[len(expanded) - tail:] = np.arange(len(plain) - tail, len(plain))
    a_vals, a_starts, a_lens = _runs(plain[head:len(plain) - tail])
    b_vals, b_starts, b_lens = _runs(expanded[head:len(expanded) - tail])
    blocks = [m for m in SequenceMatcher(None, a_vals.tolist(), b_vals.tolist(), autojunk=False)
              .get_matching_blocks() if m.size]
    if blocks:
        ra = np.concatenate([np.arange(m.a, m.a + m.size) for m in blocks])
        rb = np.concatenate([np.arange(m.b, m.b + m.size) for m in blocks])
        count = np.minimum(a_lens[ra], b_lens[rb])  # a matched run keeps its shorter length; the rest is inserted
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        source[head + np.repeat(b_starts[rb], count) + within] = head + np.repeat(a_starts[ra], count) + within
    return source


def _expand_media(row: RenderedRow, renderer: ChatRenderer, images: list[Any]) -> RenderedRow:
    """Run the processor (which expands each image placeholder) and carry attribution over to its ids.

    Tokens the processor inserts take the message of the token before them and are never sampled; they are
    media or scaffolding around media (Gemma 3 wraps images in blank lines).
    """
    encoded = renderer.encode([row.text], [images])
    expanded = np.asarray(encoded["input_ids"][0], dtype=np.int64)
    if np.array_equal(expanded, row.input_ids):
        return row
    source = _align(row.input_ids, expanded)
    # Inserted tokens inherit the message of the nearest preceding mapped token.
    filled = np.maximum.accumulate(np.where(source >= 0, np.arange(len(source)), -1))
    anchor = np.where(filled >= 0, source[np.maximum(filled, 0)], -1)
    inserted = source < 0
    message_index = np.where(anchor >= 0, row.message_index[np.maximum(anchor, 0)], NO_MESSAGE)
    kind = np.where(inserted, MARKER, row.kind[np.maximum(source, 0)]).astype(np.int8)
    sampled = np.where(inserted, False, row.sampled[np.maximum(source, 0)])
    ends_turn = np.where(inserted, NO_MESSAGE, row.ends_turn[np.maximum(source, 0)])
    extras = {
        key: np.asarray(value[0]) for key, value in encoded.items()
        if key in ("mm_token_type_ids", "token_type_ids") and len(value[0]) == len(expanded)
    }
    return RenderedRow(input_ids=expanded, message_index=message_index, kind=kind, sampled=sampled,
                       ends_turn=ends_turn, roles=row.roles, text=row.text, appended_stop=row.appended_stop,
                       extras=extras)
