"""Sharded training (FSDP2, DeepSpeed ZeRO-2/3) on the CPU with 2 processes over gloo: one SGD step of
2 processes x batch 2 moves every weight (lm_head included) exactly as 1 process x batch 4 does; LoRA adapters
are saved whole and merged from the saved adapter; settings that would fail silently are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import skip_outside_ci

from vlmtrain.config import load_config
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.train import sharding
from vlmtrain.train.fit import fit
from vlmtrain.train.sharding import ShardingError

REPO = Path(__file__).resolve().parents[1]
# accelerate never enables FSDP on the CPU; this test-only sitecustomize flips that one switch in the torchrun
# children (see its docstring). Without it the same run must be refused (test_fsdp_on_cpu_is_refused).
FSDP_ON_CPU = REPO / "tests" / "fsdp_on_cpu"
# An SGD step with lr 1 and no clipping/decay: the weight delta is exactly minus the gradient.
STEP = {"max_steps": 1, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "optim": "sgd",
        "learning_rate": 1.0, "lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": 0.0}
ENGINES = {"zero2": {"deepspeed": str(REPO / "configs/deepspeed/zero2.json")},
           "zero3": {"deepspeed": str(REPO / "configs/deepspeed/zero3.json")},
           "fsdp2": {"fsdp": True}}
DISTRIBUTED_TYPE = {"zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}


def _need_deepspeed(engine: str) -> None:
    """Skip only on a developer machine without the optional extra; in CI (`make test` installs it) never."""
    if engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        skip_outside_ci("DeepSpeed is not installed (pip install -e '.[dev]' or '.[deepspeed]')")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=16)


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


def _config(model_path: Path, data: Path, out: Path, batch: int, training: dict, model: dict | None = None,
            adapter: dict | None = None) -> dict:
    return {"model": {"name_or_path": str(model_path), **(model or {})}, "adapter": adapter or {"type": "none"},
            "data": {"train": [{"path": str(data), "image_dir": str(data.parent), "max_rows": 4}]},
            "training": {"output_dir": str(out), "per_device_train_batch_size": batch, **STEP, **training}}


def _run_single(config: dict, tmp_path: Path) -> Path:
    path = tmp_path / "single.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    fit(load_config(path))
    return Path(config["training"]["output_dir"])


def _torchrun(config: dict, tmp_path: Path, fsdp_on_cpu: bool, **extra_env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "sharded.yaml"
    path.write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra_env}
    if fsdp_on_cpu:
        env["VLMTRAIN_TEST_FSDP_ON_CPU"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FSDP_ON_CPU), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "vlmtrain", "fit", str(path), "--nproc-per-node", "2"],
                          capture_output=True, text=True, env=env, timeout=900, cwd=REPO)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


def _assert_same_step(start: dict, sharded: dict, single: dict, frozen_prefix: str) -> None:
    moved = [n for n in start if not torch.equal(start[n], single[n])]
    assert "lm_head.weight" in moved and any(n.startswith("model.visual.merger.") for n in moved)
    for name in start:
        if name.startswith(frozen_prefix) and ".merger." not in name:
            assert torch.equal(sharded[name], start[name]), f"{name} is frozen and must not move"
    for name in moved:
        torch.testing.assert_close(sharded[name] - start[name], single[name] - start[name], rtol=1e-3, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def single_full(qwen_model, shapes, tmp_path_factory) -> Path:
    """1 process x batch 4, vision tower frozen (so every engine also handles mixed frozen/trainable units)."""
    tmp = tmp_path_factory.mktemp("single_full")
    return _run_single(_config(qwen_model, shapes, tmp / "out", 4, {}, model={"freeze": {"vision_tower": True}}),
                       tmp)


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_sharded_step_equals_single_process(engine, qwen_model, shapes, single_full, tmp_path):
    _need_deepspeed(engine)
    out = tmp_path / "out"
    proc = _torchrun(_config(qwen_model, shapes, out, 2, ENGINES[engine], model={"freeze": {"vision_tower": True}}),
                     tmp_path, fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"processes: 2 (DistributedType.{DISTRIBUTED_TYPE[engine]})" in proc.stderr
    from transformers import AutoModelForImageTextToText

    total = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(qwen_model).parameters())
    # ZeRO-3 partitions weights at load time: the count must come from ds_numel, not the empty local tensors.
    assert f"trainable of {total:,} (" in proc.stderr
    start = _weights(qwen_model)
    _assert_same_step(start, _weights(out), _weights(single_full), frozen_prefix="model.visual.")
    # The file other tools read keeps the checkpoint's own names (ZeRO-3 once wrote model.model.layers...).
    assert _saved_names(out) == _saved_names(single_full)


def _saved_names(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@pytest.mark.slow
def test_fsdp2_lm_head_gradient_is_wrong_without_the_fix(qwen_model, shapes, single_full, tmp_path):
    """The bug the fix exists for: TRL's fused loss never calls lm_head, so its FSDP2 unit never unshards and
    each rank keeps its own gradient. With the fix off, lm_head alone takes a different step."""
    out = tmp_path / "out"
    proc = _torchrun(_config(qwen_model, shapes, out, 2, ENGINES["fsdp2"], model={"freeze": {"vision_tower": True}}),
                     tmp_path, fsdp_on_cpu=True, VLMTRAIN_TEST_NO_LM_HEAD_FIX="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    start, sharded, single = _weights(qwen_model), _weights(out), _weights(single_full)
    name = "lm_head.weight"
    error = (sharded[name] - single[name]).norm() / (single[name] - start[name]).norm()
    assert error > 0.1, f"lm_head step off by only {float(error):.3f} without the fix"
    norm = "model.language_model.norm.weight"
    torch.testing.assert_close(sharded[norm] - start[norm], single[norm] - start[norm], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_sharded_lora_adapter_is_whole_and_merges(engine, qwen_model, shapes, tmp_path):
    from safetensors.torch import load_file

    _need_deepspeed(engine)
    adapter = {"type": "lora", "r": 4, "dropout": 0.0, "merge_on_save": True}  # dropout: RNG differs per rank
    single = _run_single(_config(qwen_model, shapes, tmp_path / "single", 4, {}, adapter=adapter), tmp_path)
    out = tmp_path / "out"
    proc = _torchrun(_config(qwen_model, shapes, out, 2, ENGINES[engine], adapter=adapter), tmp_path,
                     fsdp_on_cpu=engine == "fsdp2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = load_file(single / "adapter_model.safetensors")
    saved = load_file(out / "adapter_model.safetensors")
    assert set(saved) == set(expected) and any("lora_B" in k for k in saved)
    for key, value in expected.items():
        assert saved[key].shape == value.shape, f"{key} saved as a shard"
        torch.testing.assert_close(saved[key], value, rtol=1e-3, atol=1e-5)
    assert any(float(v.abs().sum()) > 0 for k, v in saved.items() if "lora_B" in k), "the adapter was trained"
    merged, reference, start = _weights(out / "merged"), _weights(single / "merged"), _weights(qwen_model)
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert set(merged) == set(start) and not torch.equal(merged[q_proj], start[q_proj])
    for key in start:
        torch.testing.assert_close(merged[key], reference[key], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_fsdp_on_cpu_is_refused(qwen_model, shapes, tmp_path):
    """Without the test patch accelerate trains plain DDP for `fsdp: full_shard` on the CPU: that is an error."""
    proc = _torchrun(_config(qwen_model, shapes, tmp_path / "out", 2, {"fsdp": "full_shard"}), tmp_path,
                     fsdp_on_cpu=False)
    assert proc.returncode != 0
    assert "error: training.fsdp is set but accelerate did not enable FSDP (it chose MULTI_CPU)" in proc.stdout \
        + proc.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_fsdp_without_distributed_launch_is_refused(qwen_model, shapes, tmp_path):
    cfg = load_config(None, [f"model.name_or_path={qwen_model}", f"data.train.0.path={shapes}",
                             f"data.train.0.image_dir={shapes.parent}", f"training.output_dir={tmp_path}",
                             "training.fsdp=true", "training.max_steps=1"])
    with pytest.raises(ShardingError, match=r"training.fsdp needs a distributed launch.*--nproc-per-node"):
        fit(cfg)


def test_fsdp_settings_are_normalised_to_fsdp2():
    training, plan = sharding.plan({"fsdp": True, "learning_rate": 1.0})
    assert plan.engine == "fsdp" and training["fsdp"] is True and training["fsdp_config"]["version"] == 2
    training, _ = sharding.plan({"fsdp": "full_shard offload", "fsdp_config": {"fsdp_version": 2}})
    assert training["fsdp"] is True
    assert training["fsdp_config"] == {"version": 2, "reshard_after_forward": True, "cpu_offload": True}
    training, plan = sharding.plan({"fsdp": False, "learning_rate": 1.0})
    assert not plan.enabled and training == {"learning_rate": 1.0}


@pytest.mark.parametrize(("training", "message"), [
    ({"fsdp": True, "fsdp_config": {"version": 1}}, r"fsdp_config.version=1: FSDP1 .* set training.fsdp_config"),
    ({"fsdp": True, "fsdp_config": {"fsdp_version": 1}}, r"FSDP1"),
    ({"fsdp": True, "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}, r"state_dict_type.*FULL_STATE_DICT"),
    ({"fsdp": "hybrid_shard"}, r"'hybrid_shard' is not an FSDP2 option"),
    ({"fsdp_config": {"version": 2}}, r"training.fsdp is not: set training.fsdp: true"),
    ({"fsdp": True, "deepspeed": {"zero_optimization": {"stage": 2}}}, r"both set"),
    ({"deepspeed": "no/such/zero3.json"}, r"training.deepspeed: no such file 'no/such/zero3.json'"),
])
def test_sharding_settings_that_would_fail_silently_are_refused(training, message):
    with pytest.raises(ShardingError, match=message) as info:
        sharding.plan(training)
    assert "\n" not in str(info.value)


def test_zero3_without_gather_on_save_is_refused(tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        skip_outside_ci("DeepSpeed is not installed (pip install -e '.[dev]' or '.[deepspeed]')")
    config = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    with pytest.raises(ShardingError, match="saves no usable weights"):
        sharding.plan({"deepspeed": config})
    _, plan = sharding.plan({"deepspeed": str(REPO / "configs/deepspeed/zero3.json")})
    assert plan.zero3 and str(plan) == "DeepSpeed ZeRO-3"


def test_fit_launches_torchrun_itself_for_sharding_on_one_process(monkeypatch) -> None:
    """FSDP2 / DeepSpeed need a process group even on one GPU: `vlmtrain fit` re-launches under torchrun."""
    from omegaconf import OmegaConf

    from vlmtrain.launch import needs_launch

    for var in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    one = OmegaConf.create({"nproc_per_node": 1, "nnodes": 1})
    assert not needs_launch(one, OmegaConf.create({"learning_rate": 1e-4}))
    assert needs_launch(one, OmegaConf.create({"fsdp": True}))
    assert needs_launch(one, OmegaConf.create({"deepspeed": "configs/deepspeed/zero2.json"}))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not needs_launch(one, OmegaConf.create({"fsdp": True}))  # already under torchrun
