"""Mistakes that used to end in a traceback are one line naming the key or path and the fix (exit code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.errors import ConfigError, DataError, Reason, VlmtrainError
from vlmtrain.families.family import Family


def _one_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def text_data(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train.0.path={data}", f"training.output_dir={out}",
            "training.max_steps=1", "training.save_strategy='no'", *extra]


def test_every_user_error_is_a_vlmtrain_error_with_a_reason() -> None:
    from vlmtrain.collate import StaleRowError
    from vlmtrain.config import ConfigError as PublicConfigError
    from vlmtrain.families.resolve import FamilyError
    from vlmtrain.mask.checks import EmptyMaskError
    from vlmtrain.render.boundaries import BoundaryError

    assert PublicConfigError is ConfigError
    for cls in (ConfigError, DataError, FamilyError, BoundaryError, EmptyMaskError, StaleRowError):
        err = cls("a\nb")
        assert isinstance(err, VlmtrainError) and str(err) == "a b" and isinstance(err.reason, Reason)
    assert EmptyMaskError("x").reason is Reason.EMPTY_MASK and DataError("x").reason is Reason.BAD_ROW


def test_model_without_chat_template(tiny_dir, text_data, tmp_path) -> None:
    model = tmp_path / "no-template"
    shutil.copytree(tiny_dir("qwen2"), model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    result = CliRunner().invoke(app, ["inspect-mask", str(cfg), *_args(model, text_data, tmp_path / "o")])
    _one_line(result, "no chat_template", str(model), "chat_template.jinja")


def test_lora_target_that_matches_nothing(tiny_dir, text_data, tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    args = _args(tiny_dir("qwen2", with_model=True), text_data, tmp_path / "o", "adapter.type=lora",
                 "adapter.target_modules=[qq_proj]")
    _one_line(CliRunner().invoke(app, ["fit", str(cfg), *args]), "adapter.target_modules", "qq_proj", "auto")


def test_freeze_that_matches_nothing_and_a_fully_frozen_model(tiny_dir) -> None:
    from transformers import AutoModelForCausalLM

    from vlmtrain.train.model import apply_freeze, parameter_summary, require_trainable

    model = AutoModelForCausalLM.from_pretrained(tiny_dir("qwen2", with_model=True))
    wrong = Family(name="x", model_types=("x",), stop_tokens=("<|im_end|>",), is_vlm=False,
                   language_model=("transformer.h",))
    with pytest.raises(ConfigError, match=r"model.freeze.language_model: no parameters found under"):
        apply_freeze(model, {"language_model": True}, wrong)
    with pytest.raises(ConfigError, match=r"model.freeze.vision_tower: the family declares no vision_tower"):
        apply_freeze(model, {"vision_tower": True}, wrong)
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        require_trainable(parameter_summary(model)[0])
    assert not any(p.requires_grad for p in model.parameters()) and torch.is_grad_enabled()
