"""`vlmtrain fit` end to end on tiny offline models: loss falls, checkpoints reload, adapters, freezing,
gradient accumulation, over-long rows, and a 2-process torchrun run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlmtrain.config import load_config
from vlmtrain.data.examples import DataError
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.train.fit import fit


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=16)


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


def _cfg(model: Path, data: Path, out: Path, *overrides: str):
    return load_config(None, [
        f"model.name_or_path={model}", f"data.train.0.path={data}", f"data.train.0.image_dir={data.parent}",
        f"training.output_dir={out}", "training.max_steps=2", "training.per_device_train_batch_size=2",
        "training.logging_steps=1", "training.save_strategy='no'", "training.report_to=none", *overrides,
    ])


def test_fit_overfits_and_checkpoint_reloads(qwen_model, shapes, tmp_path):
    from transformers import AutoModelForImageTextToText

    cfg = _cfg(qwen_model, shapes, tmp_path / "run", "training.max_steps=25", "training.learning_rate=3e-3",
               "training.per_device_train_batch_size=4", "training.lr_scheduler_type=constant")
    result = fit(cfg)
    assert result.steps == 25
    assert result.final_loss < 0.5 * result.first_loss
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "run")
    assert reloaded.config.model_type == "qwen2_vl"
    resolved = (tmp_path / "run" / "vlmtrain_config.yaml").read_text()
    assert str(qwen_model) in resolved and "max_steps: 25" in resolved


def test_lora_targets_language_model_only_and_merges(qwen_model, shapes, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmtrain.families import lookup
    from vlmtrain.train.model import attach_adapter, language_linear_names

    cfg = _cfg(qwen_model, shapes, tmp_path / "lora", "adapter.type=lora", "adapter.r=4",
               "adapter.merge_on_save=true")
    base = AutoModelForImageTextToText.from_pretrained(qwen_model)
    family = lookup("qwen2_vl")
    targets = language_linear_names(base, family)
    assert targets and all(t.startswith("model.language_model.") for t in targets)
    peft_model = attach_adapter(base, cfg.adapter, family)
    lora_params = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n in lora_params)
    assert not any(".visual." in n for n in lora_params), "LoRA must never touch the vision tower by default"

    fit(cfg)
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(qwen_model), tmp_path / "lora")
    assert any("lora_" in n for n, _ in reloaded.named_parameters())
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "lora" / "merged")
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_freeze_vision_tower_keeps_projector_trainable(qwen_model, shapes, tmp_path):
    from transformers import AutoModelForImageTextToText

    from vlmtrain.families import lookup
    from vlmtrain.train.model import apply_freeze

    cfg = _cfg(qwen_model, shapes, tmp_path / "frozen", "model.freeze.vision_tower=true")
    model = AutoModelForImageTextToText.from_pretrained(qwen_model)
    apply_freeze(model, cfg.model.freeze, lookup("qwen2_vl"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.visual.") and ".merger." not in n for n in trainable)
    assert any(n.startswith("model.visual.merger.") for n in trainable)
    assert any(n.startswith("model.language_model.") for n in trainable)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(cfg)
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "frozen").state_dict()
    vision = [n for n in before if n.startswith("model.visual.") and ".merger." not in n]
    assert all(torch.equal(before[n], after[n]) for n in vision)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.language_model."))


def _one_sgd_step(model: Path, data: Path, out: Path, batch: int, accumulation: int) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    cfg = _cfg(model, data, out, "training.max_steps=1", f"training.per_device_train_batch_size={batch}",
               f"training.gradient_accumulation_steps={accumulation}", "training.optim=sgd",
               "training.learning_rate=1.0", "training.lr_scheduler_type=constant", "training.weight_decay=0.0",
               "training.max_grad_norm=0.0", "data.train.0.max_rows=4")
    fit(cfg)
    return AutoModelForImageTextToText.from_pretrained(out).state_dict()


def test_gradient_accumulation_is_the_true_token_mean(qwen_model, shapes, tmp_path, tiny_dir):
    """batch 4 x accumulation 1 and batch 1 x accumulation 4 take the same step on rows of different lengths."""
    from transformers import AutoModelForImageTextToText

    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    cfg = _cfg(qwen_model, shapes, tmp_path / "x", "data.train.0.max_rows=4")
    trained = load_split(cfg, make_renderer(cfg), "train")["num_trained"]
    assert len(set(trained)) > 1, "the test needs rows with different numbers of trained tokens"

    start = AutoModelForImageTextToText.from_pretrained(qwen_model).state_dict()
    big = _one_sgd_step(qwen_model, shapes, tmp_path / "b4", batch=4, accumulation=1)
    small = _one_sgd_step(qwen_model, shapes, tmp_path / "b1", batch=1, accumulation=4)
    moved = [n for n in start if not torch.equal(start[n], big[n])]
    assert moved
    for name in moved:
        torch.testing.assert_close(small[name] - start[name], big[name] - start[name], rtol=1e-3, atol=1e-5)


def test_over_long_rows_are_dropped_and_counted_or_refused(qwen_model, shapes, tmp_path, caplog):
    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    cfg = _cfg(qwen_model, shapes, tmp_path / "long", "data.max_length=60")
    renderer = make_renderer(cfg)
    full = load_split(_cfg(qwen_model, shapes, tmp_path / "all"), renderer, "train")
    expected_kept = sum(1 for n in full["length"] if n <= 60)
    assert 0 < expected_kept < len(full)
    with caplog.at_level("INFO", logger="vlmtrain"):
        kept = load_split(cfg, renderer, "train")
    assert len(kept) == expected_kept and max(kept["length"]) <= 60
    assert f"longer than max_length=60): {len(full) - expected_kept}" in caplog.text
    cfg.data.on_too_long = "error"
    with pytest.raises(DataError, match="never truncated"):
        load_split(cfg, renderer, "train")


def test_torchrun_two_processes_on_cpu(qwen_model, shapes, tmp_path):
    """`--nproc-per-node 2` relaunches under torchrun (DDP over gloo on the CPU); only rank 0 writes outputs,
    and 2 processes x batch 2 take the same SGD step as 1 process x batch 4 (token mean across ranks)."""
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"model: {{name_or_path: {qwen_model}}}\n"
        f"data: {{train: [{{path: {shapes}, image_dir: {shapes.parent}, max_rows: 4}}]}}\n"
        f"training: {{output_dir: {out}, max_steps: 1, per_device_train_batch_size: 2, logging_steps: 1,\n"
        "           save_strategy: 'no', report_to: none, optim: sgd, learning_rate: 1.0,\n"
        "           lr_scheduler_type: constant, weight_decay: 0.0, max_grad_norm: 0.0}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vlmtrain", "fit", str(config), "--nproc-per-node", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes: 2" in proc.stderr
    assert proc.stdout.count("steps: 1 ") == 1, "only rank 0 prints the summary"
    assert (out / "vlmtrain_config.yaml").exists() and (out / "model.safetensors").exists()

    start = AutoModelForImageTextToText.from_pretrained(qwen_model).state_dict()
    ddp = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    single = _one_sgd_step(qwen_model, shapes, tmp_path / "single", batch=4, accumulation=1)
    moved = [n for n in start if not torch.equal(start[n], single[n])]
    assert moved
    for name in moved:
        torch.testing.assert_close(ddp[name] - start[name], single[name] - start[name], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_torchrun_embedded_default_from_a_fresh_home(tmp_path):
    """The quickstart config under real torchrun, 2 CPU processes, nothing built yet: every rank materialises
    the embedded default, computes the same data cache key and trains (it used to hang forever)."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLMTRAIN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([str(Path(sys.executable).parent / "vlmtrain"), "fit", str(repo / "configs/quickstart.yaml"),
                           "--nproc-per-node", "2", "training.max_steps=2", f"training.output_dir={out}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes: 2" in proc.stderr and proc.stdout.count("steps: 2 ") == 1
    assert len(list((tmp_path / "home" / "data").glob("[0-9a-f]*"))) == 1, "both ranks used one cache entry"
    assert (out / "model.safetensors").exists()


def test_waiting_rank_fails_at_once_when_rank_0_uses_another_key(tmp_path, monkeypatch):
    """A rank whose data cache key differs from local rank 0's, or whose rank 0 died, errors out naming both
    keys / the dead process instead of waiting for hours."""
    from vlmtrain.data import cache

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cache, "_CALLS", {})
    announcement = tmp_path / f".builder-{cache._launch_id()}.json"
    announcement.write_text(json.dumps({"pid": os.getpid(), "keys": ["aaaa"]}))

    def build(_):
        raise AssertionError("a non-zero local rank never builds")

    start = time.monotonic()
    with pytest.raises(DataError, match="computed data cache key bbbb but local rank 0 uses aaaa"):
        cache.load_or_build(cache.CacheEntry(tmp_path, "bbbb"), build)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    announcement.write_text(json.dumps({"pid": dead.pid, "keys": ["cccc"]}))
    monkeypatch.setattr(cache, "_CALLS", {})
    with pytest.raises(DataError, match=f"local rank 0 \\(pid {dead.pid}\\) exited without building"):
        cache.load_or_build(cache.CacheEntry(tmp_path, "cccc"), build)
    assert time.monotonic() - start < 10


def test_shapes_dataset_is_never_rewritten_once_complete(tmp_path):
    """Every torchrun rank materialises the embedded dataset; the cache key includes the file's mtime."""
    from vlmtrain.tiny.shapes import MARKER

    path = make_shapes_dataset(tmp_path, rows=4)
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert make_shapes_dataset(tmp_path, rows=4).stat().st_mtime_ns == stamp
    (tmp_path / MARKER).unlink()  # a build killed before its marker is redone, never reused
    time.sleep(0.01)
    assert make_shapes_dataset(tmp_path, rows=4).stat().st_mtime_ns != stamp
