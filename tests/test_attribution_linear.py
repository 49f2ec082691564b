"""The linear span strategy (``vlmtrain/render/spans.py``) gives exactly the prefix reference's rows.

For every verified family and conversation shape of the conformance suite, and for 200+-turn tool-calling
rows, both strategies attribute the same conversation; every per-token array must be identical. Rows the
linear strategy cannot place are allowed only as counted fallbacks, and the long rows must not need one
(they are what the strategy exists for).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import media_of
from test_conformance import RENDERABLE, TOOLS, _image, build_conv, families  # noqa: F401 - fixture

from vlmtrain.families import lookup
from vlmtrain.render import MaskedRow
from vlmtrain.render.template import TemplateAttributor

ARRAYS = ("input_ids", "message_index", "kind", "sampled", "ends_turn", "loss_mask")


def _both(fam, messages, images, tools) -> tuple[MaskedRow, MaskedRow, MaskedRow]:
    renderer = fam.renderer()
    linear = renderer.render(messages, media_of(images), tools=tools)
    default = renderer.conversations
    try:
        renderer.conversations = TemplateAttributor(renderer.chat, renderer.family, strategy="prefix")
        prefix = renderer.render(messages, media_of(images), tools=tools)
    finally:
        renderer.conversations = default
    return linear, prefix, renderer


def _assert_same(linear: MaskedRow, prefix: MaskedRow, where: str) -> None:
    for name in ARRAYS:
        assert np.array_equal(getattr(linear, name), getattr(prefix, name)), f"{where}: {name} differs"
    assert linear.text == prefix.text and linear.merged_spans == prefix.merged_spans, where
    assert prefix.linear_fallbacks == 0


@pytest.mark.parametrize(("family", "shape"), RENDERABLE)
def test_linear_equals_prefix_on_conformance_shapes(families, family: str, shape: str) -> None:  # noqa: F811
    conv = build_conv(shape, family)
    linear, prefix, _ = _both(families(family), conv.messages, conv.images, conv.tools)
    _assert_same(linear, prefix, f"{family}/{shape} (linear fallback: {linear.linear_fallbacks})")


def _long_tool_row(family: str, turns: int) -> tuple[list[dict], list]:
    """A tool-calling trajectory: one task, then ``turns`` call / result steps, then an answer."""
    vlm = lookup(family).is_vlm
    images = []

    def text(s: str, image: bool = False) -> object:
        if not vlm:
            return s
        if image:
            images.append(_image(len(images)))
        return [*([{"type": "image"}] if image else []), {"type": "text", "text": s}]

    messages: list[dict] = [{"role": "system", "content": text("You are an agent.") if vlm else "You are an agent."},
                            {"role": "user", "content": text("Check the weather in many cities.", image=True)}]
    for i in range(turns):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": f"City{i}"}}}
        messages.append({"role": "assistant", "content": text(f"Checking city {i}.") if i % 3 else "",
                         "tool_calls": [call]})
        messages.append({"role": "tool", "content": f"result {i}: {'sunny' if i % 2 else 'rain'}"})
    messages.append({"role": "assistant", "content": text("All cities checked.")})
    return messages, images


@pytest.mark.parametrize("family", ["qwen3", "glm4_moe", "llama", "qwen2_vl"])
def test_linear_equals_prefix_on_long_tool_rows(families, family: str) -> None:  # noqa: F811
    messages, images = _long_tool_row(family, 100)
    assert len(messages) > 200
    linear, prefix, _ = _both(families(family), messages, images, TOOLS)
    _assert_same(linear, prefix, family)
    assert linear.loss_mask.sum() > 100
    assert linear.linear_fallbacks == 0, f"{family}: the long row fell back to prefix renders"


def test_linear_places_most_conformance_rows_without_fallback(families) -> None:  # noqa: F811
    """The fallback is for the odd template, not the rule: most conformance rows are placed linearly."""
    rows = [(f, s) for f, s in RENDERABLE]
    fell = [f"{f}/{s}" for f, s in rows
            if (conv := build_conv(s, f)) and families(f).renderer().render(
                conv.messages, media_of(conv.images), tools=conv.tools).linear_fallbacks]
    print(f"linear fallbacks: {len(fell)} of {len(rows)}: {fell}")
    assert len(fell) <= len(rows) // 4, fell
