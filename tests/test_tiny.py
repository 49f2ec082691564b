"""Tiny offline builds for every family: they load through the Auto classes, keep the real templates and
special tokens, expand images into media tokens, and give a finite loss; plus the shapes dataset and CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import skip_outside_ci
from PIL import Image, ImageDraw
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
)

from vlmtrain.families import FAMILIES as REGISTRY
from vlmtrain.families import FamilyError
from vlmtrain.tiny import TINY_FAMILIES, build_tiny, make_shapes_dataset, template_source
from vlmtrain.tiny.__main__ import main
from vlmtrain.tiny.build import MARKER
from vlmtrain.tiny.schema import FamilySpec, TinySpecError, TokenizerSpec
from vlmtrain.tiny.specs import FAMILIES
from vlmtrain.tiny.templates import TEMPLATES_ENV, shared_special_tokens

SHARED_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "templates"
VISION_PARAMS = ("vision", "visual", "projector", "connector", "cross_attn")  # zero-init gates: count them
CROSS_ATTENTION = {"mllama"}  # one <|image|> per image: pixels reach the LM through cross-attention layers


def _skip_reason(family: str) -> str | None:
    where, folder = FAMILIES[family].template
    file = SHARED_TEMPLATES / folder if folder.endswith(".jinja") else SHARED_TEMPLATES / folder / "chat_template.jinja"
    if where == "shared" and not file.is_file():
        return f"no shared template at {SHARED_TEMPLATES / folder}"
    return None


@pytest.fixture(params=TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    if reason := _skip_reason(request.param):
        skip_outside_ci(reason)
    return request.param


@pytest.fixture
def built(family: str, tiny_dir) -> Path:
    return tiny_dir(family, with_model=True)


def _image(size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).ellipse((4, 4, size - 5, size - 5), fill=(220, 30, 30))
    return img


def _conversation(vlm: bool, assistant_form: str = "list") -> list[dict]:
    """Two user/assistant turns; VLM turns use content parts with a PIL image in the first one (assistant text as
    a string where the template reads one: ``TemplateTraits.assistant``)."""
    if not vlm:
        texts = ["What shape is this?", "A red circle.", "What color is it?", "Red."]
        return [{"role": r, "content": t} for r, t in zip(["user", "assistant"] * 2, texts, strict=True)]
    image = {"type": "image", "image": _image()}
    def answer(text: str) -> Any:
        return text if assistant_form == "str" else [{"type": "text", "text": text}]

    return [
        {"role": "user", "content": [image, {"type": "text", "text": "What shape is this?"}]},
        {"role": "assistant", "content": answer("A red circle.")},
        {"role": "user", "content": [{"type": "text", "text": "What color is it?"}]},
        {"role": "assistant", "content": answer("Red.")},
    ]


@functools.cache
def _processor(path: Path):
    """Processor for VLM builds, tokenizer for text builds; loaded once per build (tests only read them)."""
    spec = FAMILIES[json.loads((path / MARKER).read_text())["family"]]
    return (AutoProcessor if spec.is_vlm else AutoTokenizer).from_pretrained(path)


def _encode(family: str, path: Path) -> dict:
    conversation = _conversation(FAMILIES[family].is_vlm, FAMILIES[family].traits.assistant)
    enc = _processor(path).apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return dict(enc)


def test_loads_offline_with_matching_config(family: str, built: Path) -> None:
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(built)
    config = AutoConfig.from_pretrained(built)
    assert config.model_type == spec.model_type
    text = config.get_text_config()
    assert text.vocab_size == len(tokenizer)
    assert text.eos_token_id == tokenizer.eos_token_id
    assert text.pad_token_id == tokenizer.pad_token_id
    if spec.is_vlm:
        processor = _processor(built)
        assert type(processor).__name__ == spec.processor.cls
        assert processor.chat_template == template_source(family, SHARED_TEMPLATES)
    else:
        assert tokenizer.chat_template == template_source(family, SHARED_TEMPLATES)


def test_generation_config_lists_the_stop_ids(family: str, built: Path) -> None:
    """Like a hub model, the build says what an inference engine stops on; the conformance tests read it."""
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(built)
    eos = GenerationConfig.from_pretrained(built).eos_token_id
    ids = [eos] if isinstance(eos, int) else eos
    assert tokenizer.convert_ids_to_tokens(ids) == list(spec.stops)
    assert GenerationConfig.from_pretrained(built).pad_token_id == tokenizer.pad_token_id


def test_specs_are_keyed_by_registry_families() -> None:
    registry = {f.name: f for f in REGISTRY}
    for name, spec in FAMILIES.items():
        assert spec.name == name and name in registry
        assert spec.model_type == (registry[name].model_types or (spec.architecture,))[0]
        assert spec.is_vlm == registry[name].is_vlm
    tok = TokenizerSpec("byte_level", eos="<|im_end|>")
    with pytest.raises(TinySpecError, match="'qwen2-vl' names no registry family"):
        FamilySpec("qwen2-vl", ("trl", "qwen2_5.jinja"), tok, "Qwen2Config", {})
    with pytest.raises(TinySpecError, match="names no registry family"):  # a model type is not a family name
        FamilySpec("qwen3_moe", ("trl", "qwen3.jinja"), tok, "Qwen3Config", {})
    with pytest.raises(TinySpecError, match="registry says the family is a VLM"):
        FamilySpec("qwen2_vl", ("trl", "qwen2_5_vl.jinja"), tok, "Qwen2VLConfig", {})


def test_special_tokens_are_single_ids(family: str, built: Path) -> None:
    spec = FAMILIES[family].tokenizer
    tokenizer = AutoTokenizer.from_pretrained(built)
    tokens = {spec.bos, spec.eos, spec.pad, spec.unk, *spec.special, *spec.plain, *spec.named.values(),
              *shared_special_tokens(family, SHARED_TEMPLATES)} - {None}
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids) == token, (token, ids)
    for attr, token in spec.named.items():
        assert getattr(tokenizer, attr) == token
    text = "café 東京 🙂 ok"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_two_turn_chat_expands_images(family: str, built: Path) -> None:
    enc = _encode(family, built)
    ids = enc["input_ids"][0]
    assert ids.ndim == 1 and len(ids) > 10
    if not FAMILIES[family].is_vlm:
        return
    media_id = AutoConfig.from_pretrained(built).image_token_id
    n_media = int((ids == media_id).sum())
    if family in CROSS_ATTENTION:
        assert n_media == 1 and "cross_attention_mask" in enc
    else:
        assert n_media > 1
    # The processor's plain call on the rendered prompt agrees with apply_chat_template.
    processor = _processor(built)
    prompt = processor.apply_chat_template(_conversation(True, FAMILIES[family].traits.assistant), tokenize=False)
    direct = processor(text=[prompt], images=[[_image()]], return_tensors="pt")
    assert int((direct["input_ids"][0] == media_id).sum()) == n_media


# Upstream bugs that make a family's forward pass fail; strict, so a fixed transformers turns them into failures.
BROKEN_FORWARD = {
    "llama4": "transformers 5.24: Llama4ForConditionalGeneration.forward reads `outputs.image_outputs` from its "
              "language model's MoeCausalLMOutputWithPast, which has no such field (AttributeError)",
}


def test_forward_with_labels_gives_finite_loss(family: str, built: Path, request: pytest.FixtureRequest) -> None:
    if family in BROKEN_FORWARD:
        request.applymarker(pytest.mark.xfail(raises=AttributeError, strict=True, reason=BROKEN_FORWARD[family]))
    auto = AutoModelForImageTextToText if FAMILIES[family].is_vlm else AutoModelForCausalLM
    model = auto.from_pretrained(built)
    batch = _encode(family, built)
    batch["labels"] = batch["input_ids"].clone()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    if FAMILIES[family].is_vlm:  # the image reaches the loss
        vision = [p.grad for n, p in model.named_parameters() if any(k in n for k in VISION_PARAMS)]
        assert vision and any(g is not None and g.abs().sum() > 0 for g in vision)


def test_qwen2_vl_overfits_a_shapes_batch(tiny_dir, tmp_path: Path) -> None:
    path = tiny_dir("qwen2_vl", with_model=True)
    processor = _processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    jsonl = make_shapes_dataset(tmp_path, rows=2)
    conversations = []
    for row in map(json.loads, jsonl.read_text().splitlines()):
        images = iter(row["images"])
        conversations.append([
            {"role": m["role"], "content": [
                {"type": "image", "image": Image.open(tmp_path / next(images))} if p["type"] == "image" else p
                for p in m["content"]
            ]} for m in row["messages"]
        ])
    padded = {"padding": True}
    enc = processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs=padded
    )
    batch = dict(enc)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_build_is_idempotent(tiny_dir) -> None:
    path = tiny_dir("qwen2_vl", with_model=True)
    stamp = (path / MARKER).stat().st_mtime_ns
    assert build_tiny("qwen2_vl", path, with_model=True) == path
    assert build_tiny("qwen2_vl", path) == path
    assert (path / MARKER).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="already holds"):
        build_tiny("llama", path)


def test_template_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    import trl

    trl_file = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja"
    assert template_source("qwen2_vl", None) == trl_file.read_text(encoding="utf-8")
    assert template_source("qwen2_5_vl", None) == template_source("qwen2_vl", None)
    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    with pytest.raises(ValueError, match="templates_root"):
        template_source("llava", None)
    with pytest.raises(FamilyError, match="unknown tiny family 'not_a_family'.*choose from qwen2_vl"):
        template_source("not_a_family", None)


def test_shapes_dataset(tmp_path: Path) -> None:
    jsonl = make_shapes_dataset(tmp_path / "shapes", rows=12, seed=3)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 12
    assert {len(r["messages"]) for r in rows} == {2, 4} and {len(r["images"]) for r in rows} == {1, 2}
    for row in rows:
        parts = [p for m in row["messages"] for p in m["content"] if m["role"] == "user"]
        assert sum(p["type"] == "image" for p in parts) == len(row["images"])
        for rel in row["images"]:
            assert all(32 <= side <= 48 for side in Image.open(jsonl.parent / rel).size)
        answer = row["messages"][1]["content"][0]["text"]
        assert answer.endswith(".") and len(answer.split()) <= 8
    assert make_shapes_dataset(tmp_path / "again", rows=12, seed=3).read_text() == jsonl.read_text()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", str(tmp_path / "ds"), "--rows", "4"]) == 0
    assert (tmp_path / "ds" / "train.jsonl").is_file()
    assert main(["qwen2", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / MARKER).is_file() and not (tmp_path / "q" / "model.safetensors").exists()
    assert str(tmp_path / "q") in capsys.readouterr().out
