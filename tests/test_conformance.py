"""Conformance: for every registered family, vlmtrain renders exactly what the model's own chat template and
processor produce, and the loss trains exactly the tokens the model samples at inference.

Each family's tiny build carries its real chat template. Expected values are derived here from the template
(``apply_chat_template``) and the messages only: the generation prompt the inference engine feeds before an
assistant turn, the first stop token the engine stops on, and the message texts. Nothing is copied from the
code under test. Cases are discovered from the registry: every ``verified`` family, built from its tiny spec
(``vlmtrain/tiny/specs.py``). The facts the test relies on are taken the way a real hub model gives them and
then checked against the registry: the strings that stop generation from the build's ``generation_config.json``
(``eos_token_id``), and where the template writes them by rendering a two-turn chat. The spec's
``TemplateTraits`` only say which conversations the template accepts (content form, tools, refused shapes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
import pytest
from conftest import media_of
from omegaconf import OmegaConf
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, GenerationConfig
from transformers.utils import chat_template_utils

from vlmtrain.families import FAMILIES, lookup
from vlmtrain.mask import MaskedRenderer, find_issues
from vlmtrain.render import MaskedRow
from vlmtrain.tiny.schema import TemplateTraits
from vlmtrain.tiny.specs import FAMILIES as TINY_SPECS

TEMPLATE_DATE = "2025-03-14"
DATE = dt.datetime.fromisoformat(TEMPLATE_DATE)
DATE_STRING = "14 Mar 2025"
EOS_MODES = ("turn", "all", "last", "none")
SENTINEL = "zqxsentinel"


class _PinnedDatetime(dt.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> dt.datetime:  # noqa: D102
        return DATE


@contextlib.contextmanager
def pinned_clock(_: dt.datetime) -> Iterator[None]:
    """The oracle pins the clock the way transformers exposes it (the ``datetime`` its ``strftime_now`` template
    global reads), independently of how vlmtrain pins it (template variables)."""
    original = chat_template_utils.datetime
    chat_template_utils.datetime = _PinnedDatetime
    try:
        yield
    finally:
        chat_template_utils.datetime = original


VERIFIED = [f.name for f in FAMILIES if f.verified]
CONFORMING = [name for name in VERIFIED if name in TINY_SPECS]  # the rest fail test_every_verified_family_...


def traits(family: str) -> TemplateTraits:
    return TINY_SPECS[family].traits

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


# --- conversations ----------------------------------------------------------------------------------------

@dataclass
class Conv:
    messages: list[dict]
    images: list[Image.Image]
    tools: list[dict] | None = None


def _image(k: int) -> Image.Image:
    colours = ["red", "green", "blue", "yellow"]
    return Image.new("RGB", (32 + 8 * (k % 2), 32), colours[k % len(colours)])


def _call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


class _Builder:
    """Writes messages in the content form a family's template reads (parts for VLMs, strings for text)."""

    def __init__(self, vlm: bool, traits: TemplateTraits) -> None:
        self.vlm, self.traits, self.images = vlm, traits, []

    def user(self, *parts: str | None) -> dict:
        """``None`` is an image."""
        if not self.vlm:
            return {"role": "user", "content": "".join(p for p in parts if p is not None)}
        content = []
        for part in parts:
            if part is None:
                content.append({"type": "image"})
                self.images.append(_image(len(self.images)))
            else:
                content.append({"type": "text", "text": part})
        return {"role": "user", "content": content}

    def assistant(self, text: str) -> dict:
        content = [{"type": "text", "text": text}] if self.vlm and self.traits.assistant == "list" else text
        return {"role": "assistant", "content": content}

    def system(self, text: str) -> dict:
        content = [{"type": "text", "text": text}] if self.vlm and self.traits.system == "list" else text
        return {"role": "system", "content": content}

    def conv(self, messages: list[dict], tools: list[dict] | None = None) -> Conv:
        return Conv(messages, self.images, tools)


def _tool_turn(calls: list[dict]) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": calls}


def build_conv(name: str, family: str) -> Conv:
    b = _Builder(lookup(family).is_vlm, traits(family))
    u, a, s = b.user, b.assistant, b.system
    img = None
    if name == "single":
        return b.conv([u(img, "Describe the picture."), a("A red square on white.")])
    if name == "no_image":
        return b.conv([u("Say hello."), a("Hello!")])
    if name == "system_multi":
        return b.conv([s("You are terse."), u(img, "What is it?"), a("A square."), u("What colour?"),
                       a("Red.")])
    if name == "images_multi":
        return b.conv([u(img, "Compare these two:", img, "Which one is wider?"), a("The second one."),
                       u(img, "And this one?"), a("It is as wide as the first.")])
    if name == "unicode":
        return b.conv([u("café 東京 🙂 — naïve?"), a("Oui : café 東京 🙂, naïve ✓.")])
    if name == "emptyish":
        return b.conv([u("Hi"), a("Hello."), u("  "), a("")])
    if name == "alternation":
        return b.conv([u("First part."), u("Second part."), a("Both read.")])
    if name == "tools":
        return b.conv([s("Use tools when useful."), u("Weather in Paris?"), _tool_turn([_call("Paris")]),
                       {"role": "tool", "content": "sunny, 18 degrees"}, a("It is sunny in Paris."),
                       u("Thanks!"), a("You're welcome.")], TOOLS)
    if name == "reasoning":
        return b.conv([u("What is 2+3?"), {**a("5."), "reasoning_content": "Two plus three is five."},
                       u("And 2*3?"), {**a("6."), "reasoning_content": "Two times three is six."}])
    if name == "parallel_tools":
        return b.conv([u("Weather in Paris and Rome?"), _tool_turn([_call("Paris"), _call("Rome")]),
                       {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "rain"},
                       a("Paris is sunny; Rome has rain.")], TOOLS)
    raise KeyError(name)


VLM_ONLY = {"no_image", "images_multi"}
TOOL_SHAPES = {"tools", "parallel_tools"}
SHAPES = ("single", "no_image", "system_multi", "images_multi", "unicode", "emptyish", "alternation", "tools",
          "parallel_tools", "reasoning")


def _applies(family: str, shape: str) -> bool:
    if shape in VLM_ONLY and not lookup(family).is_vlm:
        return False
    if shape == "reasoning":
        return traits(family).reasoning
    return shape not in TOOL_SHAPES or traits(family).tools


def _refused(family: str, shape: str) -> bool:
    return shape in traits(family).refuses


def _unsupported(family: str, shape: str) -> bool:
    return shape in traits(family).unsupported


RENDERABLE = [(f, s) for f in CONFORMING for s in SHAPES
              if _applies(f, s) and not _refused(f, s) and not _unsupported(f, s)]
REFUSED = [(f, s) for f in CONFORMING for s in SHAPES if _applies(f, s) and _refused(f, s)]


# --- loading and rendering (once per session) ------------------------------------------------------------

@dataclass
class Family:
    """A tiny build loaded like a hub model, with the stop facts read from it (not from the registry).

    ``stops``: the generation_config's ``eos_token_id`` as strings. ``placement``, ``final_stop``: where the
    template writes the stop that ends an answer and which one, from ``stop_facts``; ``final_stop`` is what
    vlmtrain must append after a final answer the template leaves without one.
    """

    name: str
    traits: TemplateTraits
    processing_class: Any
    tokenizer: Any
    model_type: str
    stops: tuple[str, ...] = ()
    placement: str = ""
    final_stop: str = ""
    renderers: dict[tuple, MaskedRenderer] = field(default_factory=dict)

    def renderer(self, mode: str = "sampled", roles: tuple[str, ...] = ("assistant",),
                 train_on_eos: str = "turn") -> MaskedRenderer:
        key = (mode, roles, train_on_eos)
        if key not in self.renderers:
            cfg = OmegaConf.create({"mode": mode, "roles": list(roles), "train_on_eos": train_on_eos,
                                    "role_boundaries": []})
            self.renderers[key] = MaskedRenderer(self.processing_class, self.model_type, cfg, family=self.name,
                                                 template_date=TEMPLATE_DATE)
        return self.renderers[key]

    def render_text(self, messages: list[dict], *, generation_prompt: bool = False,
                    tools: list[dict] | None = None) -> str:
        """The template's own text, with the clock pinned the way transformers exposes it."""
        with pinned_clock(DATE):
            return self.processing_class.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, tools=tools,
                date_string=DATE_STRING)

    def reference_ids(self, conv: Conv) -> list[int]:
        """``apply_chat_template(tokenize=True)`` with the images inline in the messages."""
        images = iter(conv.images)
        inline = [{**m, "content": [{**p, "image": next(images)} if p.get("type") == "image" else p
                                    for p in m["content"]]} if isinstance(m["content"], list) else m
                  for m in conv.messages]
        if self.processing_class is not self.tokenizer and any(m["content"] == "" for m in conv.messages):
            # transformers 5.24's processor apply_chat_template(tokenize=True) replaces a "" content by [] (its
            # `message.get("content") or []`), which GLM-4.1V's template prints as "[]" and Pixtral's cannot add
            # eos to: tokenize the template's own text the way that method does after rendering.
            text = self.render_text(conv.messages, tools=conv.tools)
            bos = self.tokenizer.bos_token
            kwargs = {"add_special_tokens": False} if bos is not None and text.startswith(bos) else {}
            out = self.processing_class(text=[text], images=[conv.images] if conv.images else None, **kwargs)
            return np.asarray(out["input_ids"]).reshape(-1).tolist()
        with pinned_clock(DATE):
            out = self.processing_class.apply_chat_template(
                inline, tokenize=True, return_dict=True, tools=conv.tools, date_string=DATE_STRING)
        return np.asarray(out["input_ids"]).reshape(-1).tolist()

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)


def generation_stops(path: Any, tokenizer: Any) -> tuple[str, ...]:
    """The stop strings an inference engine uses: ``generation_config.json``'s ``eos_token_id``."""
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    assert ids, f"{path}: generation_config.json lists no eos_token_id"
    return tuple(tokenizer.convert_ids_to_tokens(ids))


def stop_facts(fam: Family) -> tuple[str, str]:
    """(placement, stop) from a rendered two-turn chat: where the template writes the stop after an answer.

    ``in_turn``: the conversation ending with the answer already holds a stop after it; ``next_turn``: only
    the next message writes one, before its text; ``absent``: neither does, and the stop vlmtrain must append
    is the tokenizer's eos.
    """
    b = _Builder(lookup(fam.name).is_vlm, fam.traits)
    msgs = [b.user("Say hello."), b.assistant("Hello there."), b.user("Say bye."), b.assistant("Bye now.")]
    prompt = fam.render_text(msgs[:1], generation_prompt=True)
    alone, full = fam.render_text(msgs[:2]), fam.render_text(msgs)
    fed = _common_prefix(prompt, alone)  # the whole prompt, unless the template drops what it opens (<think>)
    answer_end = alone.index("Hello there.", fed) + len("Hello there.")
    if hit := _first_stop(alone, answer_end, None, fam.stops):
        return "in_turn", hit[1]
    answer_end = full.index("Hello there.", fed) + len("Hello there.")
    if hit := _first_stop(full, answer_end, full.index("Say bye.", answer_end), fam.stops):
        return "next_turn", hit[1]
    assert fam.tokenizer.eos_token in fam.stops, "the template writes no stop: the engine must stop on eos"
    return "absent", fam.tokenizer.eos_token


@pytest.fixture(scope="session")
def families(tiny_dir) -> Callable[[str], Family]:
    loaded: dict[str, Family] = {}

    def get(name: str) -> Family:
        if name not in loaded:
            path = tiny_dir(name)
            auto = AutoProcessor if lookup(name).is_vlm else AutoTokenizer
            pc = auto.from_pretrained(path)
            model_type = json.loads((path / "config.json").read_text())["model_type"]
            tokenizer = getattr(pc, "tokenizer", pc)
            fam = Family(name, traits(name), pc, tokenizer, model_type, generation_stops(path, tokenizer))
            fam.placement, fam.final_stop = stop_facts(fam)
            loaded[name] = fam
        return loaded[name]

    return get


@dataclass
class Stop:
    start: int
    end: int
    text: str
    turn: int  # the message whose turn it ends
    turn_role: str
    holder_role: str  # the role of the message whose template span holds it


@dataclass
class Expected:
    """What the template says, in the template's own text (``full``; media placeholders unexpanded)."""

    full: str
    bodies: dict[int, tuple[int, int]]  # assistant turn -> sampled text before its stop, as a char span
    stops: list[Stop]  # turn-ending stops (an appended final stop has start == end)
    contents: list[tuple[int, int, str]]  # non-assistant message text: (start, end, role)
    appended: str | None  # the stop vlmtrain must write after the final answer


@dataclass
class Rendered:
    fam: Family
    conv: Conv
    row: MaskedRow
    reference: list[int]
    expected: Expected


def _first_stop(text: str, start: int, end: int | None, stops: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(text.find(s, start, end), s) for s in stops]
    found = [(i, s) for i, s in found if i >= 0]
    return min(found) if found else None


def _cut_after_stop(text: str, stops: tuple[str, ...]) -> str:
    hit = _first_stop(text, 0, None, stops)
    return text[:hit[0] + len(hit[1])] if hit else text.rstrip()


def _token_start(tokenizer: Any, text: str, at: int) -> int:
    """``at`` moved back to the start of the token of ``text`` it falls inside: where a prompt and the
    conversation part mid-token (``<think>`` fed, ``<tool_call>`` written), that token is not the prompt's."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return next((a for a, b in offsets if a < at < b), at)


def _without_think(text: str) -> str:
    text = re.sub(r"<think>.*?</think>\s*|<\|channel>.*?<channel\|>", "", text, flags=re.S)  # Gemma 4's channel
    # A turn whose generation prompt opened the block (Qwen3.5 feeds "<think>\n") starts inside it.
    return re.sub(r"^.*?</think>\s*", "", text, count=1, flags=re.S)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _probe(message: dict) -> dict:
    """The message with its text replaced by a sentinel, to find where the template writes its text."""
    if isinstance(message["content"], str):
        return {**message, "content": SENTINEL}
    parts, first = [], True
    for part in message["content"]:
        if part.get("type") == "text" and first:
            part, first = {**part, "text": SENTINEL}, False
        parts.append(part)
    return {**message, "content": parts if not first else [*parts, {"type": "text", "text": SENTINEL}]}


def _texts(message: dict) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content if p.get("type") == "text"]


def _try_render(fam: Family, messages: list[dict], **kw: Any) -> str | None:
    try:
        return fam.render_text(messages, **kw)
    except jinja2.TemplateError:
        return None


def expected_for(fam: Family, conv: Conv) -> Expected:
    stop_strings, placement, msgs, tools = fam.stops, fam.placement, conv.messages, conv.tools
    full = fam.render_text(msgs, tools=tools)
    roles = [m["role"] for m in msgs]
    final = len(msgs) - 1
    assert roles[final] == "assistant"
    bodies: dict[int, tuple[int, int]] = {}
    stops: list[Stop] = []
    contents: list[tuple[int, int, str]] = []
    appended = None
    for k, role in enumerate(roles):
        if role == "assistant":
            # The inference engine feeds the generation prompt; the model samples from there to its stop.
            prompt = fam.render_text(msgs[:k], generation_prompt=True, tools=tools)
            if fam.traits.history_rewrites and not full.startswith(prompt):
                # Qwen3.5's prompt opens "<think>\n", which history turns drop with their reasoning (DeepSeek-R1
                # distills' drop it from every turn; Gemma 4 31B's prompt writes an empty thought channel no turn
                # has): the turn is trained from where prompt and conversation part.
                start = _token_start(fam.tokenizer, full, _common_prefix(prompt, full))
                assert re.search(r"<think>|<\|channel>", prompt[start:]), f"turn {k}: {prompt[start:]!r}"
            else:
                assert full.startswith(prompt), f"turn {k}: generation prompt is not a prefix of the conversation"
                start = len(prompt)
            hit = _first_stop(full, start, None, stop_strings)
            if k == final and placement != "in_turn":
                assert hit is None, "the template was expected to write no stop after the final answer"
                end = len(full.rstrip())
                bodies[k] = (start, end)
                appended = fam.final_stop
                stops.append(Stop(end, end, appended, k, "assistant", "assistant"))
                in_context = full[start:end] + appended
            elif placement == "absent":
                end = len(fam.render_text(msgs[:k + 1], tools=tools).rstrip())
                assert hit is None or hit[0] >= end
                bodies[k] = (start, end)
                in_context = full[start:end]
            else:
                assert hit is not None, f"turn {k}: no stop token after the answer"
                at, stop = hit
                bodies[k] = (start, at)
                holder = roles[k + 1] if placement == "next_turn" else "assistant"
                stops.append(Stop(at, at + len(stop), stop, k, "assistant", holder))
                in_context = full[start:at + len(stop)]
            # The same expectation from the prefix render alone: render(messages[:k+1]) minus the generation
            # prompt, cut after the first stop (GLM: plus the stop that opens the next message).
            alone = fam.render_text(msgs[:k + 1], tools=tools)
            fed = len(prompt) if alone.startswith(prompt) else start
            assert fed == len(prompt) or fam.traits.history_rewrites
            by_prefix = _cut_after_stop(alone[fed:], stop_strings)
            if placement == "next_turn" and k < final:
                by_prefix += stops[-1].text
            if k == final and appended:
                by_prefix += appended
            if fam.traits.history_rewrites and k < final and by_prefix != in_context:
                # Qwen3 and GLM write the reasoning only after the last user turn: history drops it.
                assert _without_think(by_prefix) == _without_think(in_context), f"turn {k}"
            else:
                assert by_prefix == in_context, f"turn {k}"
            continue
        # Non-assistant message: its text, and the stop that ends its turn (within its own span).
        probe = _try_render(fam, [*msgs[:k], _probe(msgs[k])], tools=tools)
        upto = _try_render(fam, msgs[:k + 1], tools=tools)
        if probe is None or SENTINEL not in probe or upto is None:
            continue  # the template gives this message no span of its own (Gemma's system, Llama's tools)
        cursor, span_end = probe.index(SENTINEL), _common_prefix(upto, full)
        for text in _texts(msgs[k]):
            needle = text.strip()
            if needle:
                at = full.find(needle, cursor, span_end)
                assert at >= 0, f"message {k}: text {needle!r} not rendered"
                contents.append((at, at + len(needle), role))
                cursor = at + len(needle)
        hit = _first_stop(full, cursor, span_end, stop_strings)
        if hit:
            stops.append(Stop(hit[0], hit[0] + len(hit[1]), hit[1], k, role, role))
    return Expected(full, bodies, stops, contents, appended)


def expected_runs(exp: Expected, mode: str, roles: tuple[str, ...], eos: str) -> list[str]:
    """The trained text, one string per contiguous run, under the documented mask rules."""
    trained_roles = set(roles) if mode == "roles" else {"assistant"}
    last = max(exp.bodies)
    pieces = [(a, b, exp.full[a:b]) for a, b in exp.bodies.values()]
    if mode == "roles":
        pieces += [(a, b, exp.full[a:b]) for a, b, role in exp.contents if role in roles]
    for s in exp.stops:
        if eos == "none":
            continue
        keep = {"turn": s.turn_role in trained_roles, "last": s.turn == last, "all": True}[eos]
        if mode == "roles":
            keep = keep and s.holder_role in roles
        if keep:
            pieces.append((s.start, s.end, s.text))
    runs: list[str] = []
    end = -1
    for a, b, text in sorted(pieces, key=lambda p: (p[0], p[1])):
        if not text:
            continue
        if runs and a == end:
            runs[-1] += text
        else:
            runs.append(text)
        end = b
    return runs


def trained_runs(tokenizer: Any, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Decode each contiguous run of trained tokens in context (so leading spaces decode as they are)."""
    def text(n: int) -> str:
        return tokenizer.decode(ids[:n].tolist(), clean_up_tokenization_spaces=False)

    runs, i, n = [], 0, len(ids)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        head, whole = text(i), text(j)
        assert whole.startswith(head)
        runs.append(whole[len(head):])
        i = j
    return runs


@pytest.fixture(scope="session")
def rendered(families) -> Callable[[str, str], Rendered]:
    done: dict[tuple[str, str], Rendered] = {}

    def get(family: str, shape: str) -> Rendered:
        if (family, shape) not in done:
            fam = families(family)
            conv = build_conv(shape, family)
            row = fam.renderer().render(conv.messages, media_of(conv.images), tools=conv.tools)
            done[family, shape] = Rendered(fam, conv, row, fam.reference_ids(conv), expected_for(fam, conv))
        return done[family, shape]

    return get


# --- the registry and the test table agree ----------------------------------------------------------------

def test_every_verified_family_has_a_tiny_spec_and_runs_conformance() -> None:
    missing = [name for name in VERIFIED if name not in TINY_SPECS]
    assert not missing, f"verified families without a tiny spec in vlmtrain/tiny/specs.py: {missing}"
    for name in VERIFIED:
        shapes = {s for f, s in RENDERABLE + REFUSED if f == name} | set(traits(name).unsupported)
        assert {"single", "system_multi", "unicode", "emptyish"} <= shapes, (name, shapes)
    for name, spec in TINY_SPECS.items():
        unknown = (set(spec.traits.refuses) | set(spec.traits.unsupported)) - set(SHAPES)
        assert not unknown, f"{name}: TemplateTraits.refuses names shapes the test does not write: {unknown}"


@pytest.mark.parametrize("family", CONFORMING)
def test_registry_entry_matches_template_facts(families, family: str) -> None:
    entry, fam = lookup(family), families(family)
    assert fam.model_type in (entry.model_types or (TINY_SPECS[family].model_type,))
    assert entry.stop_placement == fam.placement
    assert entry.appends_final_stop == (fam.placement != "in_turn")
    assert entry.stop_tokens[0] == fam.final_stop
    # Every stop the registry trains is one the engine stops on (generation_config.json's eos_token_id).
    assert set(entry.stop_tokens) <= set(fam.stops), (entry.stop_tokens, fam.stops)


def test_an_unverified_family_is_flagged(families, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from vlmtrain.families import resolve

    glm = families("glm4_moe")
    unverified = replace(lookup("glm4_moe"), verified=False, quirks=("registered from published markers",))
    with caplog.at_level(logging.WARNING):
        resolve(unverified, glm.tokenizer)
    assert any("UNVERIFIED" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        resolve(lookup("glm4_moe"), glm.tokenizer)
    assert not any("UNVERIFIED" in r.getMessage() for r in caplog.records)


# --- 1. the ids are the template's ids ------------------------------------------------------------------

@pytest.mark.parametrize(("family", "shape"), RENDERABLE)
def test_ids_equal_apply_chat_template(rendered, family: str, shape: str) -> None:
    r = rendered(family, shape)
    ids, ref = r.row.input_ids.tolist(), r.reference
    if r.expected.appended is None:
        assert ids == ref
        assert not r.row.appended_stop
        return
    # GLM / LLaVA-1.5: the reference with exactly one stop token inserted after the final answer.
    tok, stop_id = r.fam.tokenizer, r.fam.token_id(r.expected.appended)
    assert r.row.appended_stop and len(ids) == len(ref) + 1
    p = next((i for i, (x, y) in enumerate(zip(ids, ref, strict=False)) if x != y), len(ref))
    assert ids[p] == stop_id and ids[:p] + ids[p + 1:] == ref
    answer = "".join(_texts(r.conv.messages[-1])).strip()
    assert tok.decode(ref[:p]).rstrip().endswith(answer)
    assert not tok.decode(ref[p:]).strip()


@pytest.mark.parametrize(("family", "shape"), REFUSED)
def test_refused_shapes_raise_in_template_and_renderer(families, family: str, shape: str) -> None:
    fam, conv = families(family), build_conv(shape, family)
    match = traits(family).refuses[shape]
    with pytest.raises(jinja2.TemplateError, match=match):
        fam.reference_ids(conv)
    with pytest.raises(jinja2.TemplateError, match=match):
        fam.renderer().render(conv.messages, media_of(conv.images), tools=conv.tools)


# --- 2. the trained tokens --------------------------------------------------------------------------------

MODES = [("sampled", ("assistant",)), ("roles", ("assistant",)), ("roles", ("user", "assistant"))]


# vlmtrain bugs these cases expose; strict, so the fix turns them into failures to remove from here.
KNOWN_BUGS: dict[tuple[str, str], str] = {}  # (family, shape) -> what vlmtrain gets wrong there, as a strict xfail


@pytest.mark.parametrize(("family", "shape"), RENDERABLE)
def test_sampled_and_roles_train_exactly_the_expected_text(rendered, family: str, shape: str,
                                                          request: pytest.FixtureRequest) -> None:
    if (family, shape) in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(raises=AssertionError, strict=True, reason=KNOWN_BUGS[family, shape]))
    r = rendered(family, shape)
    for mode, roles in MODES:
        for eos in EOS_MODES:
            mask = r.fam.renderer(mode, roles, eos).mask(r.row)
            got = trained_runs(r.fam.tokenizer, r.row.input_ids, mask)
            want = expected_runs(r.expected, mode, roles, eos)
            where = f"mode={mode} roles={list(roles)} train_on_eos={eos}"
            if "user" in roles:  # message text may share a token with the scaffolding next to it
                assert [g.strip() for g in got] == [w.strip() for w in want], where
            else:
                assert got == want, where


@pytest.mark.parametrize(("family", "shape"), RENDERABLE)
def test_all_mode_trains_every_non_media_token(rendered, family: str, shape: str) -> None:
    r = rendered(family, shape)
    media = np.isin(r.row.input_ids, r.fam.renderer().family.media_ids)
    for eos in EOS_MODES:
        assert np.array_equal(r.fam.renderer("all", ("assistant",), eos).mask(r.row), ~media)


# --- 3. media and padding ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "shape"), RENDERABLE)
def test_media_and_pad_never_trained(rendered, family: str, shape: str) -> None:
    r = rendered(family, shape)
    ids, tok = r.row.input_ids, r.fam.tokenizer
    media_ids = set(r.fam.renderer().family.media_ids.tolist())
    # Every id the processor adds that the template text does not contain is declared media (or blank).
    text_ids = set(tok(r.expected.full, add_special_tokens=False)["input_ids"])
    inserted = {int(i) for i in ids if int(i) not in text_ids and tok.decode([int(i)]).strip()}
    inserted -= {tok.bos_token_id, *([r.fam.token_id(r.expected.appended)] if r.expected.appended else [])}
    assert inserted <= media_ids, [tok.decode([i]) for i in inserted - media_ids]
    if r.conv.images:
        assert np.isin(ids, list(media_ids)).sum() >= len(r.conv.images)
    pad = [tok.pad_token_id] if tok.pad_token_id is not None else []
    never = np.isin(ids, [*media_ids, *inserted, *pad])
    for mode, roles in [*MODES, ("all", ("assistant",))]:
        for eos in EOS_MODES:
            mask = r.fam.renderer(mode, roles, eos).mask(r.row)
            assert not (mask & never).any(), (mode, roles, eos)


# --- 4. GLM: stops that open the next message -----------------------------------------------------------

def _tool_call_turn(conv: Conv) -> int:
    return next(k for k, m in enumerate(conv.messages) if m.get("tool_calls"))


def test_glm_observation_is_trained_after_a_tool_call(rendered) -> None:
    r = rendered("glm4_moe", "tools")
    tok, ids = r.fam.tokenizer, r.row.input_ids
    observation = r.fam.token_id("<|observation|>")
    at = int(np.flatnonzero(ids == observation)[0])
    mask = r.fam.renderer().mask(r.row)
    assert mask[at] and mask[at - 1]  # the call's last token, then <|observation|>
    trained = "".join(trained_runs(tok, ids, mask))
    assert "sunny, 18 degrees" not in trained and "Weather in Paris" not in trained
    assert "<tool_call>get_weather" in trained

    roles_mask = r.fam.renderer("roles", ("assistant",)).mask(r.row)
    assert not roles_mask[at]
    issues = find_issues(r.row, roles_mask)
    assert _tool_call_turn(r.conv) in issues.untrained_stop_turns
    assert not find_issues(r.row, mask)


@pytest.mark.parametrize("shape", ["single", "tools", "emptyish"])
def test_glm_final_turn_gets_user_appended_and_trained(rendered, shape: str) -> None:
    r = rendered("glm4_moe", shape)
    user = r.fam.token_id("<|user|>")
    assert r.reference[-1] != user
    assert r.row.input_ids[-1] == user and r.row.appended_stop
    for eos in ("turn", "all", "last"):
        assert r.fam.renderer("sampled", ("assistant",), eos).mask(r.row)[-1]
    assert not find_issues(r.row, r.fam.renderer().mask(r.row))


# --- 5. regressions for the pitfalls of the tools vlmtrain replaces ---------------------------------------

@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "gemma3", "qwen2",
                                    "phi3"])
def test_whitespace_after_stop_is_never_trained(rendered, family: str) -> None:
    r = rendered(family, "single" if family == "phi3" else "system_multi")
    ids, tok = r.row.input_ids, r.fam.tokenizer
    stop = r.fam.token_id(r.fam.final_stop)
    positions = np.flatnonzero(ids == stop)
    followed = [int(i) for i in positions if i + 1 < len(ids) and not tok.decode([int(ids[i + 1])]).strip()]
    assert followed, "the template writes whitespace after the stop token"
    for mode, roles in MODES:
        for eos in EOS_MODES:
            mask = r.fam.renderer(mode, roles, eos).mask(r.row)
            assert not mask[[i + 1 for i in followed]].any(), (mode, roles, eos)
    assert r.fam.renderer().mask(r.row)[positions].sum() >= 1


def test_phi3_extra_end_after_last_turn_is_not_trained(rendered) -> None:
    r = rendered("phi3", "system_multi")
    ids, end = r.row.input_ids, r.fam.token_id("<|end|>")
    assert r.expected.full.endswith("<|end|>\n<|end|>") and ids[-1] == end
    for mode, roles in MODES:
        for eos in EOS_MODES:
            assert not r.fam.renderer(mode, roles, eos).mask(r.row)[-1], (mode, roles, eos)


@pytest.mark.parametrize("shape", ["single", "system_multi", "images_multi"])
def test_llava_next_bos_once_as_the_processor_adds_it(rendered, shape: str) -> None:
    r = rendered("llava_next", shape)
    bos = r.fam.tokenizer.bos_token_id
    assert not r.expected.full.startswith("<s>")  # the template does not write it ...
    assert r.reference[0] == bos  # ... the processor adds it
    assert r.row.input_ids[0] == bos and int((r.row.input_ids == bos).sum()) == 1
    assert r.row.input_ids.tolist() == r.reference


@pytest.mark.parametrize(("family", "shape"), [("llama", "single"), ("llama", "tools"), ("gemma3", "single"),
                                               ("gemma3", "system_multi"), ("mllama", "single")])
def test_bos_written_by_template_is_not_doubled(rendered, family: str, shape: str) -> None:
    r = rendered(family, shape)
    bos = r.fam.tokenizer.bos_token_id
    assert r.expected.full.startswith(r.fam.tokenizer.bos_token)
    assert r.row.input_ids[0] == bos and int((r.row.input_ids == bos).sum()) == 1


@pytest.mark.parametrize("family", ["llama", "mistral3"])
def test_template_date_is_pinned_against_the_wall_clock(families, monkeypatch: pytest.MonkeyPatch,
                                                        family: str) -> None:
    from transformers.utils import chat_template_utils

    fam = families(family)
    conv = build_conv("single", family)
    texts, rows, raw = [], [], []
    for day in (dt.datetime(2031, 1, 2), dt.datetime(2032, 11, 30)):
        class Clock(dt.datetime):
            @classmethod
            def now(cls, tz: Any = None, _day: dt.datetime = day) -> dt.datetime:
                return _day

        monkeypatch.setattr(chat_template_utils, "datetime", Clock)
        raw.append(fam.processing_class.apply_chat_template(conv.messages, tokenize=False))
        row = fam.renderer().render(conv.messages, media_of(conv.images))
        texts.append(row.text)
        rows.append(row.input_ids.tolist())
    assert raw[0] != raw[1]  # the template does read the clock
    assert texts[0] == texts[1] and rows[0] == rows[1]
    assert any(d in texts[0] for d in ("14 Mar 2025", "2025-03-14"))


def _heterogeneous_rows(vlm: bool) -> list[dict]:
    """Rows whose tool calls have different argument keys (VLM rows: every content as parts, some images)."""
    def content(text: str, image: bool = False) -> Any:
        if not vlm:
            return text
        return [*([{"type": "image"}] if image else []), *([{"type": "text", "text": text}] if text else [])]

    def call(name: str, arguments: dict) -> dict:
        return {"type": "function", "function": {"name": name, "arguments": arguments}}

    rows = [
        [{"role": "user", "content": content("Weather in Paris?", True)},
         {"role": "assistant", "content": content(""),
          "tool_calls": [call("get_weather", {"city": "Paris"})]},
         {"role": "tool", "content": content("sunny")}, {"role": "assistant", "content": content("Sunny.")}],
        [{"role": "user", "content": content("Find names.")},
         {"role": "assistant", "content": content(""),
          "tool_calls": [call("search", {"fields": ["name"], "limit": 3})]},
         {"role": "tool", "content": content("Ann")}, {"role": "assistant", "content": content("Ann.")}],
    ]
    if vlm:
        rows.append([{"role": "user", "content": content("Describe it.", True)},
                     {"role": "assistant", "content": content("A square.")}])
    return [{"messages": m} for m in rows]


@pytest.mark.parametrize("family", ["glm4_moe", "qwen2", "qwen3", "qwen3_vl"])
def test_arrow_null_keys_render_like_the_original_rows(families, family: str) -> None:
    import datasets

    fam = families(family)
    rows = _heterogeneous_rows(lookup(family).is_vlm)
    stored = datasets.Dataset.from_list(rows).to_list()
    assert stored != rows  # Arrow did add null keys ...
    tools = TOOLS + [{"type": "function", "function": {"name": "search", "description": "Search",
                                                       "parameters": {"type": "object", "properties": {}}}}]
    raw_differs = False
    for original, arrow in zip(rows, stored, strict=True):
        n_images = sum(p.get("type") == "image" for m in original["messages"]
                       if isinstance(m["content"], list) for p in m["content"])
        images = [_image(i) for i in range(n_images)] or None
        want = fam.renderer().render(original["messages"], media_of(images), tools=tools)
        got = fam.renderer().render(arrow["messages"], media_of(images), tools=tools)
        assert got.input_ids.tolist() == want.input_ids.tolist()
        assert np.array_equal(fam.renderer().mask(got), fam.renderer().mask(want))
        as_stored = _try_render(fam, arrow["messages"], tools=tools)
        raw_differs |= as_stored != fam.render_text(original["messages"], tools=tools)
    assert raw_differs  # ... which the template would have rendered
