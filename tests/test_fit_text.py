"""`fit` on every text-only family: the cached rows carry no column TRL mistakes for a vision dataset, and the
model trains (it used to stop with TRL's "dataset appears to be vision-related" ValueError on every text family).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlmtrain.config import load_config
from vlmtrain.families import FAMILIES
from vlmtrain.tiny.specs import FAMILIES as TINY_SPECS
from vlmtrain.train.fit import fit

TEXT_FAMILIES = [f.name for f in FAMILIES if not f.is_vlm and f.verified and f.name in TINY_SPECS]

ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"{a + b}."}]}
    for a in range(4) for b in range(3)
]


def test_every_text_family_is_covered() -> None:
    assert len(TEXT_FAMILIES) >= 5, TEXT_FAMILIES


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_family_fits_and_its_weights_change(family: str, tiny_dir, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_dir(family, with_model=True)
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", f"model.family={family}", f"data.train.0.path={data}",
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=3", "training.per_device_train_batch_size=4", "training.learning_rate=1e-2",
        "training.logging_steps=1", "training.save_strategy='no'", "training.report_to=none",
    ])
    result = fit(cfg)
    assert result.steps == 3 and result.trained_tokens_per_epoch > 0
    before = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{family}: fit reported success but no weight changed"
