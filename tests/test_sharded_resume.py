"""Resuming sharded runs (FSDP2, DeepSpeed ZeRO-2/3; 2 processes, CPU, gloo): a run resumed from a mid-run
checkpoint ends with the weights of the run that was never interrupted, and the complete-checkpoint rule
knows each engine's own checkpoint layout (a checkpoint interrupted mid-write is never picked)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sharded import ENGINES, _config, _need_deepspeed, _torchrun, _weights

from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.train.resume import MARKER, ResumeError, incomplete_reason, last_complete, start_run

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


# LoRA dropout draws from each rank's own RNG: equal weights then also need every rank's RNG state restored.
LORA = {"type": "lora", "r": 4, "dropout": 0.2}


def _resume_config(model: Path, data: Path, out: Path, engine: str, adapter: dict | None = None,
                   **extra: object) -> dict:
    config = _config(model, data, out, 1, {**ENGINES[engine], **RESUME, **extra},
                     model={"freeze": {"vision_tower": True}}, adapter=adapter)
    config["data"]["train"][0]["max_rows"] = 6
    return config


def _trained(folder: Path) -> dict[str, torch.Tensor]:
    adapter = folder / "adapter_model.safetensors"
    return load_file(str(adapter)) if adapter.exists() else _weights(folder)


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "adapter"), [(e, None) for e in ENGINES] + [("zero3", LORA)],
                         ids=[*ENGINES, "zero3-lora"])
def test_sharded_resume_ends_with_the_uninterrupted_weights(engine, adapter, qwen_model, shapes, tmp_path):
    _need_deepspeed(engine)
    full = tmp_path / "full"
    proc = _torchrun(_resume_config(qwen_model, shapes, full, engine, adapter), tmp_path,
                     fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = full / "checkpoint-2"
    assert incomplete_reason(checkpoint) is None, incomplete_reason(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    halfway, final = _trained(checkpoint), _trained(full)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    cut = shutil.copytree(checkpoint, resumed / "checkpoint-3")  # a newer save killed before every rank finished
    (cut / MARKER).unlink()
    (cut / "trainer_state.json").write_text((cut / "trainer_state.json").read_text().replace(
        '"global_step": 2', '"global_step": 3'))
    proc = _torchrun(_resume_config(qwen_model, shapes, resumed, engine, adapter, resume_from_checkpoint=True),
                     tmp_path, fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"skipping {cut}: incomplete (no completion marker" in proc.stderr
    assert f"resuming from {resumed / 'checkpoint-2'} (step 2)" in proc.stderr
    again = _trained(resumed)
    moved = [n for n in final if not torch.equal(final[n], halfway[n])]
    assert ("lm_head.weight" in moved) if adapter is None else any("lora_B" in n for n in moved), \
        "the last 2 steps must move the weights"
    assert again.keys() == final.keys()
    for name in final:  # what the 2 resumed steps did, against what the uninterrupted run's last 2 steps did
        torch.testing.assert_close(again[name] - halfway[name], final[name] - halfway[name], rtol=1e-3, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


# The files each engine writes into checkpoint-N (as seen in the 2-process runs above), for the fast rule tests.
LAYOUTS = {
    "zero2": ["global_step2/mp_rank_00_model_states.pt", "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt", "latest", "model.safetensors",
              "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt"],
    "zero3": ["global_step2/zero_pp_rank_0_mp_rank_00_model_states.pt",
              "global_step2/zero_pp_rank_1_mp_rank_00_model_states.pt",
              "global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "global_step2/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "latest", "model.safetensors",
              "rng_state_0.pth", "rng_state_1.pth"],  # the scheduler inside DeepSpeed's model states
    "fsdp2": ["pytorch_model_fsdp.bin", "optimizer.bin", "model.safetensors", "rng_state_0.pth", "rng_state_1.pth",
              "scheduler.pt"],
    "fsdp2_sharded": ["pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp",
                      "optimizer_0/.metadata", "optimizer_0/__0_0.distcp", "rng_state_0.pth", "rng_state_1.pth",
                      "scheduler.pt"],
}
# What a save killed at some point leaves (no vlmtrain marker either), and the reason the rule must give.
INTERRUPTED = [
    ("zero2", ["latest"], "no DeepSpeed 'latest' file"),
    ("zero2", ["global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt"], "1 DeepSpeed optimizer-state file"),
    ("zero3", ["global_step2/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"], r"rank\(s\) \[0\] are missing"),
    ("zero3", ["global_step2/zero_pp_rank_0_mp_rank_00_model_states.pt",
               "global_step2/zero_pp_rank_1_mp_rank_00_model_states.pt"], "no DeepSpeed model states"),
    ("fsdp2", ["optimizer.bin"], "no FSDP optimizer state"),
    ("fsdp2", ["scheduler.pt"], "no scheduler state"),
    ("fsdp2", ["rng_state_0.pth"], r"rng_state_\* files of rank\(s\) \[0\]"),
    ("fsdp2_sharded", ["optimizer_0/.metadata"], r"optimizer_0/ have no .metadata"),
]


def _layout(folder: Path, files: list[str], step: int = 2, marker: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("global_step2" if name == "latest" else "x")  # the layouts name global_step2
    if marker:
        sizes = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        (folder / MARKER).write_text(json.dumps({"global_step": step, "files": sizes}))
    return folder


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_complete_sharded_layouts_are_resumable(layout, tmp_path):
    checkpoint = _layout(tmp_path / "checkpoint-2", LAYOUTS[layout])
    assert incomplete_reason(checkpoint) is None
    assert incomplete_reason(_layout(tmp_path / "foreign", LAYOUTS[layout], marker=False), require_marker=False) \
        is None  # written by plain transformers: its own files suffice for an explicit path


@pytest.mark.parametrize(("layout", "unwritten", "reason"), INTERRUPTED)
def test_sharded_checkpoints_interrupted_mid_write_are_never_picked(layout, unwritten, reason, tmp_path, caplog):
    good = _layout(tmp_path / "checkpoint-2", LAYOUTS[layout])
    cut = _layout(tmp_path / "checkpoint-4", [f for f in LAYOUTS[layout] if f not in unwritten], step=4,
                  marker=False)
    assert re.search(reason, incomplete_reason(cut, require_marker=False) or "")
    with caplog.at_level("WARNING", logger="vlmtrain"):
        assert last_complete(tmp_path) == good
    assert "checkpoint-4: incomplete" in caplog.text
    with pytest.raises(ResumeError, match=reason):  # an explicit path to it is refused with the reason
        start_run({"output_dir": str(tmp_path), "resume_from_checkpoint": str(cut)}, True)
