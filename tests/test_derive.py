"""Families derived by probing, and registry entries checked against the template and generation_config.

The proof is conformance on real templates the registry does not know (``../shared/templates/llama.cpp``),
through derivation alone: tiny models carry the vendor's template, its special tokens and its published
``generation_config.json`` stop ids, under a model type with no registry entry. Expected values come from
``apply_chat_template`` and the messages only: the generation prompt the engine feeds, and the first stop the
engine stops on after it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transformers
from conftest import SHARED_TEMPLATES, skip_outside_ci
from omegaconf import OmegaConf
from test_conformance import DATE, pinned_clock, trained_runs  # the conformance oracle's own helpers
from transformers import AutoProcessor, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from vlmtrain.families import FamilyError, lookup
from vlmtrain.mask import MaskedRenderer

LLAMA_CPP = SHARED_TEMPLATES / "llama.cpp"


def _need_shared() -> None:
    if not LLAMA_CPP.is_dir():
        skip_outside_ci(f"{LLAMA_CPP} is absent (the shared templates folder next to this repository)")


@dataclass(frozen=True)
class Vendor:
    """A real template with the vendor's special tokens and published stop ids, under ``config_cls``."""

    template: str  # file under llama.cpp/
    config_cls: str  # a transformers config whose model type the registry does not know
    eos: str
    stops: tuple[str, ...]  # the published generation_config.json eos_token_id, as strings
    bos: str | None = None
    pad: str | None = None
    add_bos: bool = False
    system: bool = True  # the template accepts a system message


VENDORS = {
    "granite": Vendor("ibm-granite-granite-3.3-2B-Instruct", "GraniteConfig", "<|end_of_text|>",
                      ("<|end_of_text|>",), bos="<|end_of_text|>", pad="<|end_of_text|>"),
    "gemma2": Vendor("google-gemma-2-2b-it", "Gemma2Config", "<eos>", ("<eos>", "<end_of_turn>"), bos="<bos>",
                     add_bos=True, system=False),
    # Mistral Nemo shows the system message in the last user turn only: no system case.
    "mistral": Vendor("mistralai-Mistral-Nemo-Instruct-2407", "MistralConfig", "</s>", ("</s>",), bos="<s>",
                      add_bos=True, system=False),
    # Apertus closes earlier answers with <|assistant_end|> but leaves the final one open: derived next_turn.
    "apertus": Vendor("Apertus-8B-Instruct", "ApertusConfig", "<|assistant_end|>", ("<|assistant_end|>",),
                      bos="<s>"),
    "lfm2": Vendor("LFM2.5-Instruct", "Lfm2Config", "<|im_end|>", ("<|im_end|>",), bos="<|startoftext|>"),
}
GPT_OSS = Vendor("openai-gpt-oss-120b", "GptOssConfig", "<|return|>", ("<|return|>", "<|endoftext|>", "<|call|>"))
_LITERALS = re.compile(r"<\|[^\s\"'<>|]+\|>|<｜[^\s\"'<>]+｜>|\[[A-Z_]{3,}\]")
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def build_vendor(vendor: Vendor, out: Path, with_model: bool = False) -> Path:
    """A tiny text model folder: tokenizer with the template's special tokens, config.json, generation_config."""
    from vlmtrain.tiny.schema import TokenizerSpec
    from vlmtrain.tiny.tokenizer import build_tokenizer

    source = (LLAMA_CPP / f"{vendor.template}.jinja").read_text(encoding="utf-8")
    special = tuple(sorted(set(_LITERALS.findall(source)) - {vendor.eos, vendor.bos, vendor.pad}))
    spec = TokenizerSpec("byte_level", eos=vendor.eos, bos=vendor.bos, pad=vendor.pad, add_bos=vendor.add_bos,
                         special=special)
    tokenizer = build_tokenizer(spec, source, vendor.stops)
    tokenizer.save_pretrained(out)
    config = getattr(transformers, vendor.config_cls)(vocab_size=len(tokenizer), **_TINY)
    if with_model:
        import torch

        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    else:
        config.save_pretrained(out)
    ids = [tokenizer.convert_tokens_to_ids(s) for s in vendor.stops]
    GenerationConfig(eos_token_id=ids if len(ids) > 1 else ids[0]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vendor_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        _need_shared()
        if name not in built:
            vendor = VENDORS.get(name, GPT_OSS)
            built[name] = build_vendor(vendor, tmp_path_factory.mktemp(f"vendor-{name}"))
        return built[name]

    return get


def _cfg(**over: Any) -> Any:
    return OmegaConf.create({"mode": "sampled", "roles": ["assistant"], "train_on_eos": "turn",
                             "role_boundaries": [], **over})


def model_type(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["model_type"]


def renderer_for(path: Path, **cfg: Any) -> MaskedRenderer:
    tokenizer = AutoTokenizer.from_pretrained(path)
    return MaskedRenderer(tokenizer, model_type(path), _cfg(**cfg), template_date=DATE.date().isoformat())


def expected_runs(tokenizer: Any, path: Path, messages: list[dict]) -> tuple[list[str], bool]:
    """Per assistant turn: from the end of the generation prompt to the first engine stop after it, inclusive.
    A final answer the template leaves without a stop gets the stop the template writes after earlier answers
    (else the eos) appended; the flag says so."""
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    stops = tokenizer.convert_ids_to_tokens([eos] if isinstance(eos, int) else list(eos))
    with pinned_clock(DATE):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        runs, written, open_final = [], [], False
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            assert full.startswith(prompt), f"turn {k}: the generation prompt is not a prefix"
            nxt = next((full.find(n["content"], len(prompt) + len(m["content"])) for n in messages[k + 1:]), -1)
            hits = [(i, s) for s in stops if (i := full.find(s, len(prompt), nxt if nxt >= 0 else None)) >= 0]
            if hits:
                at, stop = min(hits)
                runs.append(full[len(prompt):at + len(stop)])
                written.append(stop)
            else:
                assert k == len(messages) - 1, f"turn {k}: no stop before the next message"
                runs.append(full[len(prompt):].rstrip() + (written[0] if written else tokenizer.eos_token))
                open_final = True
    return runs, open_final


CONVS = {
    "two_turns": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there!"},
                  {"role": "user", "content": "And bye?"}, {"role": "assistant", "content": "Bye, see you."}],
    "unicode": [{"role": "user", "content": "café 東京 🙂?"}, {"role": "assistant", "content": "Oui : 東京 🙂 ✓."}],
    "system": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": "Red."}],
}
CASES = [(v, c) for v in VENDORS for c in CONVS if c != "system" or VENDORS[v].system]


@pytest.mark.parametrize(("vendor", "conv"), CASES)
def test_derived_family_conforms_to_the_real_template(vendor_dir, vendor: str, conv: str) -> None:
    path = vendor_dir(vendor)
    assert lookup(model_type(path)) is None, f"the registry now knows {model_type(path)!r}: pick another type"
    renderer = renderer_for(path)
    tokenizer, messages = renderer.chat.tokenizer, CONVS[conv]
    assert renderer.derivation is not None and not renderer.family.family.verified
    row = renderer.render(messages)
    with pinned_clock(DATE):
        reference = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    want, open_final = expected_runs(tokenizer, path, messages)
    ids = row.input_ids.tolist()
    if open_final:  # the reference with exactly the one appended stop after the final answer
        assert row.appended_stop and len(ids) == len(reference) + 1
        p = next(i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b) if ids[:-1] != \
            reference[:len(ids) - 1] else len(reference)
        assert ids[:p] + ids[p + 1:] == reference
    else:
        assert ids == reference and not row.appended_stop
    assert trained_runs(tokenizer, row.input_ids, renderer.mask(row)) == want


def test_derived_entry_and_the_loud_warning(vendor_dir, caplog: pytest.LogCaptureFixture) -> None:
    path = vendor_dir("gemma2")
    with caplog.at_level(logging.WARNING):
        renderer = renderer_for(path)
    family = renderer.family.family
    assert family.name == "derived:gemma2" and family.model_types == ("gemma2",)
    assert family.stop_tokens == ("<end_of_turn>", "<eos>")  # the written one first, then the engine's others
    assert family.stop_placement == "in_turn" and not family.is_vlm and family.language_model == ("model",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DERIVED, not verified" in w and "stop placement: in_turn" in w for w in warnings), warnings
    from vlmtrain.inspect.summary import family_label

    assert "DERIVED" in family_label(renderer)


def test_next_turn_stop_is_derived_and_appended_once(vendor_dir) -> None:
    renderer = renderer_for(vendor_dir("apertus"))
    assert renderer.family.family.stop_placement == "next_turn"
    row = renderer.render(CONVS["two_turns"])
    end = renderer.chat.tokenizer.convert_tokens_to_ids("<|assistant_end|>")
    positions = np.flatnonzero(row.input_ids == end)
    assert len(positions) == 2 and renderer.mask(row)[positions].all()


def test_ambiguous_stop_placement_fails_listing_what(vendor_dir) -> None:
    # gpt-oss writes <|return|> after a final answer and <|end|> (no engine stop) between turns.
    tokenizer = AutoTokenizer.from_pretrained(vendor_dir("gpt_oss"))
    with pytest.raises(FamilyError) as err:
        MaskedRenderer(tokenizer, "my_gpt_oss_finetune", _cfg())
    message = str(err.value)
    assert "\n" not in message and "my_gpt_oss_finetune" in message
    assert "stop placement unclear" in message and "'<|return|>'" in message and "role_boundaries" in message


def test_no_stop_id_fails(vendor_dir, tmp_path: Path) -> None:
    path = tmp_path / "no-stop"
    shutil.copytree(vendor_dir("mistral"), path)
    (path / "generation_config.json").unlink()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.eos_token = None
    with pytest.raises(FamilyError, match="no stop id"):
        MaskedRenderer(tokenizer, "mistral", _cfg())


def test_an_explicit_unknown_family_is_still_an_error(vendor_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(vendor_dir("mistral"))
    with pytest.raises(FamilyError, match="unknown model family 'mistrall'"):
        MaskedRenderer(tokenizer, "mistral", _cfg(), family="mistrall")


def test_families_probe_prints_the_derived_entry(vendor_dir) -> None:
    from vlmtrain.cli import app

    result = CliRunner().invoke(app, ["families", "--probe", str(vendor_dir("granite"))])
    assert result.exit_code == 0, result.output
    assert "derived:granite (DERIVED, not verified)" in result.output
    assert "stop tokens: <|end_of_text|>" in result.output and "language model: model" in result.output
    bad = CliRunner().invoke(app, ["families", "--probe", str(vendor_dir("granite") / "nowhere")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and bad.output.startswith("error: ")


# --- registered families checked against the template and the engine's stop ids -------------------------

def _tiny_copy(tiny_dir: Callable[..., Path], family: str, dest: Path) -> Path:
    shutil.copytree(tiny_dir(family), dest)
    return dest


def test_llava_type_with_pixtral_template_trains_one_stop_per_answer(tiny_dir, tmp_path: Path) -> None:
    assert lookup("llava").template_varies, ("registry: the llava entry must say template_varies=True (model "
                                             "type llava covers LLaVA-1.5's template and Pixtral's)")
    path = _tiny_copy(tiny_dir, "llava", tmp_path / "llava-pixtral")
    shutil.copy(SHARED_TEMPLATES / "pixtral" / "chat_template.jinja", path / "chat_template.jinja")
    processor = AutoProcessor.from_pretrained(path)
    renderer = MaskedRenderer(processor, "llava", _cfg())
    assert renderer.family_name == "llava" and renderer.family.family.stop_placement == "in_turn"
    messages = CONVS["two_turns"]
    row = renderer.render(messages)
    reference = processor.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    reference = np.asarray(reference).reshape(-1).tolist()
    assert row.input_ids.tolist() == reference and not row.appended_stop
    tok = processor.tokenizer
    eos = np.flatnonzero(row.input_ids == tok.eos_token_id)
    assert len(eos) == 2 and renderer.mask(row)[eos].all()
    assert trained_runs(tok, row.input_ids, renderer.mask(row)) == ["Hello there!</s>", "Bye, see you.</s>"]


def test_llava_1_5_template_keeps_the_appended_stop(tiny_dir) -> None:
    processor = AutoProcessor.from_pretrained(tiny_dir("llava"))
    renderer = MaskedRenderer(processor, "llava", _cfg())
    row = renderer.render(CONVS["two_turns"])
    assert renderer.family.family.stop_placement == "absent" and row.appended_stop
    assert int((row.input_ids == processor.tokenizer.eos_token_id).sum()) == 1


def test_registered_family_with_another_template_is_an_error(tiny_dir, tmp_path: Path) -> None:
    # llava_next writes </s> after answers; LLaVA-1.5's template writes none.
    path = _tiny_copy(tiny_dir, "llava_next", tmp_path / "llava-next-15")
    shutil.copy(SHARED_TEMPLATES / "llava" / "chat_template.jinja", path / "chat_template.jinja")
    with pytest.raises(FamilyError) as err:
        MaskedRenderer(AutoProcessor.from_pretrained(path), "llava_next", _cfg())
    message = str(err.value)
    assert "\n" not in message and "'llava_next'" in message and "in_turn" in message and "absent" in message


def test_generation_config_that_never_stops_on_the_trained_stop_is_an_error(tiny_dir, tmp_path: Path) -> None:
    path = _tiny_copy(tiny_dir, "qwen2", tmp_path / "qwen2-bad-eos")
    tokenizer = AutoTokenizer.from_pretrained(path)
    GenerationConfig(eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>")).save_pretrained(path)
    tokenizer.eos_token = "<|endoftext|>"
    with pytest.raises(FamilyError, match=r"'qwen2'.*<\|im_end\|>.*generation_config.json"):
        MaskedRenderer(tokenizer, "qwen2", _cfg())


@pytest.mark.slow
def test_a_derived_family_fits_with_lora_on_its_derived_language_model(tmp_path: Path) -> None:
    """End to end: config.json model type unknown to the registry -> derived family -> LoRA on the derived
    language-model prefix -> training changes the adapter."""
    import torch
    from safetensors.torch import load_file

    from vlmtrain.config import load_config
    from vlmtrain.train.fit import fit

    _need_shared()
    model_dir = build_vendor(VENDORS["granite"], tmp_path / "granite", with_model=True)
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a + b}."}]} for a in range(4) for b in range(3)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", f"data.train.0.path={data}", f"training.output_dir={tmp_path / 'run'}",
        "adapter.type=lora", "training.max_steps=3", "training.per_device_train_batch_size=4",
        "training.learning_rate=1e-2", "training.logging_steps=1", "training.save_strategy='no'",
        "training.report_to=none", f"data.template_date={DATE.date().isoformat()}",
    ])
    result = fit(cfg)
    assert result.steps == 3 and result.trained_tokens_per_epoch > 0
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(torch.count_nonzero(v) for v in lora_b)  # lora_B starts at zero: it trained
