"""The families added for the newest models: each trains two steps through `fit` (selected by `model.family`,
as a user of a model whose `model_type` another entry owns must), and the rules their templates impose hold
token by token: Pixtral's `</s>` once per answer, Qwen3.5's think block and Gemma 4's thought channel sampled on
the final turn only. Conformance against the real templates runs in `tests/test_conformance.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vlmtrain.config import load_config
from vlmtrain.families import FamilyError, lookup
from vlmtrain.mask import MaskedRenderer
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.tiny.specs import FAMILIES as TINY_SPECS
from vlmtrain.train.fit import fit

NEW_VLMS = ["glm4v", "pixtral", "mistral3_2", "ministral3", "qwen2_5_omni", "llama4", "qwen3_5", "gemma4",
            "lfm2_5_vl"]
NEW_TEXT = ["llama3_1", "deepseek_r1_distill_qwen", "deepseek_r1_distill_llama", "smollm3", "gemma4_text",
            "qwen3_5_text"]
# Upstream bugs that stop a family's forward pass; strict, so a fixed transformers turns them into failures.
BROKEN_FORWARD = {
    "llama4": "transformers 5.24: Llama4ForConditionalGeneration.forward reads `outputs.image_outputs` from its "
              "language model's MoeCausalLMOutputWithPast (AttributeError)",
}
CFG = {"mode": "sampled", "roles": ["assistant"], "train_on_eos": "turn", "role_boundaries": []}


def test_new_families_are_verified_with_tiny_specs() -> None:
    for name in NEW_VLMS + NEW_TEXT:
        entry = lookup(name)
        assert entry is not None and entry.verified and name in TINY_SPECS, name
        assert entry.is_vlm == (name in NEW_VLMS), name


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=8)


@pytest.mark.parametrize("family", NEW_VLMS)
def test_vlm_family_fits_two_steps(family: str, tiny_dir, shapes: Path, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForImageTextToText

    if family in BROKEN_FORWARD:
        request.applymarker(pytest.mark.xfail(raises=AttributeError, strict=True, reason=BROKEN_FORWARD[family]))
    model_dir = tiny_dir(family, with_model=True)
    dtype = "bfloat16" if family == "llama4" else "float32"  # Llama 4's processor emits bfloat16 pixels
    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", f"model.family={family}", f"model.dtype={dtype}",
        f"data.train.0.path={shapes}", f"data.train.0.image_dir={shapes.parent}",
        f"training.output_dir={tmp_path / 'run'}", "training.max_steps=2", "training.per_device_train_batch_size=2",
        "training.learning_rate=1e-2", "training.logging_steps=1", "training.save_strategy='no'",
        "training.report_to=none",
    ])
    result = fit(cfg)
    assert result.steps == 2 and result.trained_tokens_per_epoch > 0
    assert np.isfinite(result.first_loss) and np.isfinite(result.final_loss)
    before = AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "run").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{family}: fit reported success but no weight changed"


# --- what the templates make the model sample --------------------------------------------------------------

def _renderer(tiny_dir, family: str, model_type: str | None = None) -> tuple[MaskedRenderer, object]:
    from transformers import AutoProcessor, AutoTokenizer

    path = tiny_dir(family)
    pc = (AutoProcessor if lookup(family).is_vlm else AutoTokenizer).from_pretrained(path)
    key = family if model_type is None else "auto"
    renderer = MaskedRenderer(pc, model_type or TINY_SPECS[family].model_type, OmegaConf.create(CFG), family=key)
    return renderer, getattr(pc, "tokenizer", pc)


def _media(n: int) -> list:
    from conftest import media_of
    from PIL import Image

    return media_of([Image.new("RGB", (32, 32), "red")] * n)


def _trained(tokenizer, renderer: MaskedRenderer, messages: list[dict], images: int = 0) -> list[str]:
    """The decoded runs of trained tokens."""
    row = renderer.render(messages, _media(images))
    mask = renderer.mask(row)
    ids = row.input_ids.tolist()
    runs, i = [], 0
    while i < len(ids):
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < len(ids) and mask[j]:
            j += 1
        runs.append(tokenizer.decode(ids[i:j]))
        i = j
    return runs


TWO_TURNS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": [{"type": "text", "text": "What color is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
]


def test_pixtral_trains_one_eos_per_answer_where_llava_would_append_a_second(tiny_dir) -> None:
    pixtral, tok = _renderer(tiny_dir, "pixtral")
    row = pixtral.render(TWO_TURNS, _media(1))
    eos = tok.convert_tokens_to_ids("</s>")
    assert int((row.input_ids == eos).sum()) == 2 and not row.appended_stop
    assert _trained(tok, pixtral, TWO_TURNS, 1) == ["A red square.</s>", "Red.</s>"]
    # Resolved by its model type (llava: LLaVA-1.5's entry, which appends a </s> no answer needs), it stops at
    # start-up on the image token instead of training a second </s>.
    with pytest.raises(FamilyError, match=r"family 'llava': image token '<image>'"):
        _renderer(tiny_dir, "pixtral", model_type="llava")


def _text_turns(final_reasoning: str | None = None) -> list[dict]:
    final = {"role": "assistant", "content": "6."}
    if final_reasoning:
        final["reasoning_content"] = final_reasoning
    return [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5."},
            {"role": "user", "content": "And 2*3?"}, final]


@pytest.mark.parametrize("family", ["qwen3_5_text", "qwen3_5"])
def test_qwen3_5_samples_the_think_block_on_the_final_turn_only(tiny_dir, family: str) -> None:
    renderer, tok = _renderer(tiny_dir, family)
    vlm = lookup(family).is_vlm
    turns = [{**m, "content": [{"type": "text", "text": m["content"]}]} if vlm else m for m in _text_turns()]
    # Fed: "<|im_start|>assistant\n<think>\n" (the generation prompt); sampled: the rest of the block, the answer
    # and <|im_end|>. The earlier answer is rendered without a think block, and trained as rendered.
    assert _trained(tok, renderer, turns) == ["5.<|im_end|>", "\n</think>\n\n6.<|im_end|>"]
    with_reasoning = _text_turns("Two times three.")
    if vlm:
        with_reasoning = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in with_reasoning]
    assert _trained(tok, renderer, with_reasoning) == ["5.<|im_end|>", "Two times three.\n</think>\n\n6.<|im_end|>"]


@pytest.mark.parametrize(("family", "final"), [
    # E2B's template (gemma4): fed "<|turn>model\n"; the final answer's thought channel is sampled.
    ("gemma4", "<|channel>thought\nTwo times three.\n<channel|>6.<turn|>"),
    # 31B's (gemma4_text): fed "<|turn>model\n<|channel>thought\n<channel|>" (thinking off); it writes reasoning
    # only for a tool-call turn, so a plain answer trains without its reasoning.
    ("gemma4_text", "6.<turn|>"),
])
def test_gemma4_samples_the_thought_channel_on_the_final_turn_only(tiny_dir, family: str, final: str) -> None:
    renderer, tok = _renderer(tiny_dir, family)
    turns = _text_turns("Two times three.")
    if lookup(family).is_vlm:
        turns = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in turns]
    assert _trained(tok, renderer, turns) == ["5.<turn|>", final]  # the earlier answer's reasoning is dropped


def test_qwen3_5_history_tool_call_trains_its_tool_call_token(tiny_dir) -> None:
    """The engine feeds '<think>\n' but the history turn's text has '<tool_call>' there: the prompt diverges
    inside a token, and that token (which the engine never fed) is sampled."""
    renderer, tok = _renderer(tiny_dir, "qwen3_5_text")
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    turns = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."},
             {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Welcome."}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {}}}}]
    row = renderer.render(turns, [], tools=tools)
    mask = renderer.mask(row)
    calls = np.flatnonzero(row.input_ids == tok.convert_tokens_to_ids("<tool_call>"))
    (at,) = calls[row.message_index[calls] == 1]  # the assistant's call (the system prompt's tools text has two)
    assert mask[at], "the engine feeds '<think>\\n'; the model samples '<tool_call>'"
    assert not mask[calls[row.message_index[calls] == 0]].any()
