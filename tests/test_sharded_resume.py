"""Resuming sharded runs (FSDP2, DeepSpeed ZeRO-2/3; 2 processes, CPU, gloo): a run resumed from a mid-run
checkpoint ends with the weights of the run that was never interrupted, and the complete-checkpoint rule
knows each engine's own checkpoint layout (a checkpoint interrupted mid-write is never picked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from test_sharded import ENGINES, _config, _need_deepspeed, _torchrun, _weights
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.train.resume import MARKER, incomplete_reason, last_complete

# 6 rows, 2 processes x batch 1: 3 steps an epoch, so the checkpoint at step 2 is mid-epoch (data position).
# AdamW with warmup: wrong optimizer moments or scheduler step after resuming would change the last 2 steps.
RESUME = {"max_steps": 4, "save_steps": 2, "save_strategy": "steps", "optim": "adamw_torch", "learning_rate": 1e-3,
          "lr_scheduler_type": "linear", "warmup_steps": 1, "weight_decay": 0.01, "max_grad_norm": 1.0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=8)


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


def _resume_config(model: Path, data: Path, out: Path, engine: str, **extra: object) -> dict:
    config = _config(model, data, out, 1, {**ENGINES[engine], **RESUME, **extra},
                     model={"freeze": {"vision_tower": True}})
    config["data"]["train"][0]["max_rows"] = 6
    return config


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_sharded_resume_ends_with_the_uninterrupted_weights(engine, qwen_model, shapes, tmp_path):
    _need_deepspeed(engine)
    full = tmp_path / "full"
    proc = _torchrun(_resume_config(qwen_model, shapes, full, engine), tmp_path, fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = full / "checkpoint-2"
    assert incomplete_reason(checkpoint) is None, incomplete_reason(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    halfway, final = _weights(checkpoint), _weights(full)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    proc = _torchrun(_resume_config(qwen_model, shapes, resumed, engine, resume_from_checkpoint=True), tmp_path,
                     fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming from {resumed / 'checkpoint-2'} (step 2)" in proc.stderr
    again = _weights(resumed)
    moved = [n for n in final if not torch.equal(final[n], halfway[n])]
    assert "lm_head.weight" in moved, "the last 2 steps must move the weights"
    for name in final:  # what the 2 resumed steps did, against what the uninterrupted run's last 2 steps did
        torch.testing.assert_close(again[name] - halfway[name], final[name] - halfway[name], rtol=1e-3, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
