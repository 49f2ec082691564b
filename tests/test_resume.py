"""Resume, preemption and the start-of-run record, judged by the weights a run ends with.

A resumed run must end with exactly the weights of the run that was never interrupted: that only holds when
the weights (Qwen2-VL's renamed ``visual.*`` keys included, transformers issue 43701), optimizer, scheduler,
RNG and data position all come back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtrain.config import load_config
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.train.fit import fit
from vlmtrain.train.resume import MARKER, ResumeError, incomplete_reason, last_complete, load_full_weights, start_run
from vlmtrain.train.signals import resume_command

VLMTRAIN = Path(sys.executable).parent / "vlmtrain"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=8)


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


_COMMON = ("training.max_steps=6", "training.save_steps=3", "training.per_device_train_batch_size=2",
           "training.learning_rate=1e-3", "training.logging_steps=1", "training.report_to=none",
           "training.warmup_steps=2")  # 4 steps an epoch: the checkpoint at step 3 is mid-epoch


def _cfg(model: Path, data: Path, out: Path, *overrides: str):
    return load_config(None, [f"model.name_or_path={model}", f"data.train.0.path={data}",
                              f"data.train.0.image_dir={data.parent}", f"training.output_dir={out}",
                              *_COMMON, *overrides])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def _resume_matches_uninterrupted(model: Path, data: Path, tmp_path: Path, *overrides: str) -> None:
    full = tmp_path / "full"
    fit(_cfg(model, data, full, *overrides))
    assert incomplete_reason(full / "checkpoint-3") is None
    halfway, final = _weights(full / "checkpoint-3"), _weights(full)
    assert any(not torch.equal(halfway[k], final[k]) for k in final), "the last 3 steps must move the weights"

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    fit(_cfg(model, data, resumed, "training.resume_from_checkpoint=true", *overrides))
    _assert_same(_weights(resumed), final)
    record = json.loads((resumed / "vlmtrain_run.json").read_text())
    assert record["resumed_from"] == str(resumed / "checkpoint-3")


def test_full_model_resume_ends_with_the_uninterrupted_weights(qwen_model, shapes, tmp_path):
    _resume_matches_uninterrupted(qwen_model, shapes, tmp_path)


def test_lora_resume_ends_with_the_uninterrupted_weights(qwen_model, shapes, tmp_path):
    """LoRA dropout draws from the RNG, so this also needs the RNG state restored."""
    _resume_matches_uninterrupted(qwen_model, shapes, tmp_path, "adapter.type=lora", "adapter.r=4",
                                  "adapter.dropout=0.2")


def test_full_weights_load_under_the_models_own_names(qwen_model, tmp_path):
    """save_pretrained writes Qwen2-VL's hub names (visual.*, model.layers.*); every tensor must come back."""
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(qwen_model)
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(torch.randn_like(p))
    saved.save_pretrained(tmp_path / "ckpt")
    assert any(k.startswith("visual.") for k in load_file(str(tmp_path / "ckpt" / "model.safetensors")))

    model = AutoModelForImageTextToText.from_pretrained(qwen_model)
    assert load_full_weights(model, tmp_path / "ckpt")
    _assert_same(model.state_dict(), saved.state_dict())


def _fake_checkpoint(folder: Path, step: int, marker: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"x" * 10)
    if marker:
        files = {p.name: p.stat().st_size for p in folder.iterdir()}
        (folder / MARKER).write_text(json.dumps({"global_step": step, "files": files}))
    return folder


def test_last_skips_checkpoints_interrupted_mid_write(tmp_path, caplog):
    good = _fake_checkpoint(tmp_path / "checkpoint-10", 10)
    _fake_checkpoint(tmp_path / "checkpoint-20", 20, marker=False)  # killed before the marker
    truncated = _fake_checkpoint(tmp_path / "checkpoint-30", 30)
    (truncated / "optimizer.pt").write_bytes(b"x")  # killed while re-saving over a complete one
    half = tmp_path / "checkpoint-40"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"x")  # killed before trainer_state.json
    with caplog.at_level("WARNING", logger="vlmtrain"):
        assert last_complete(tmp_path) == good
        assert start_run({"output_dir": str(tmp_path), "resume_from_checkpoint": "last"}, True).checkpoint == \
            str(good)
    assert "checkpoint-20: incomplete (no completion marker" in caplog.text
    assert "checkpoint-30: incomplete (optimizer.pt" in caplog.text


def test_start_refuses_old_checkpoints_and_bad_paths(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-5", 5)
    with pytest.raises(ResumeError, match=r"resume_from_checkpoint=true.*overwrite_output_dir=true"):
        start_run({"output_dir": str(tmp_path)}, True)
    with pytest.raises(ResumeError, match="missing.*no such folder"):
        start_run({"output_dir": str(tmp_path), "resume_from_checkpoint": str(tmp_path / "missing")}, True)
    (tmp_path / "checkpoint-5" / "optimizer.pt").unlink()
    with pytest.raises(ResumeError, match="no optimizer state"):
        start_run({"output_dir": str(tmp_path), "resume_from_checkpoint": str(tmp_path / "checkpoint-5")}, True)
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        start_run({"output_dir": str(tmp_path), "resume_from_checkpoint": True}, True)
    run = start_run({"output_dir": str(tmp_path), "overwrite_output_dir": True, "seed": 1}, True)
    assert run.checkpoint is None and run.training == {"output_dir": str(tmp_path), "seed": 1}
    assert not (tmp_path / "checkpoint-5").exists()


def test_seeded_lora_runs_save_the_same_adapter(qwen_model, shapes, tmp_path):
    def adapter(out: str, seed: int) -> dict[str, torch.Tensor]:
        fit(_cfg(qwen_model, shapes, tmp_path / out, "adapter.type=lora", "adapter.r=4", "training.max_steps=1",
                 "training.save_strategy=no", f"training.seed={seed}"))
        return _weights(tmp_path / out)

    first, second, other = adapter("a", 7), adapter("b", 7), adapter("c", 8)
    _assert_same(first, second)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_record_is_written_before_training_starts(qwen_model, shapes, tmp_path):
    """A run that fails after the data stage still leaves its resolved config and data cache keys."""
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="qlora"):
        fit(_cfg(qwen_model, shapes, out, "adapter.type=qlora"))  # refused on the CPU, after the data stage
    assert "qlora" in (out / "vlmtrain_config.yaml").read_text()
    train = json.loads((out / "vlmtrain_run.json").read_text())["data_cache"]["train"]
    assert (Path(train["path"]) / "vlmtrain_cache.json").exists() and Path(train["path"]).name == train["key"]


def test_resume_command_repeats_the_call():
    assert resume_command(["fit", "my run.yaml", "training.resume_from_checkpoint=false", "launch.nproc_per_node=2"]) \
        == "vlmtrain fit 'my run.yaml' launch.nproc_per_node=2 training.resume_from_checkpoint=true"


# ------------------------------------------------------------------ real processes: kill -9 and SIGTERM


def _config_file(tmp_path: Path, model: Path, data: Path, out: Path, max_steps: int, save_steps: int) -> Path:
    config = tmp_path / f"{out.name}.yaml"
    config.write_text(
        f"model: {{name_or_path: {model}}}\n"
        f"data: {{train: [{{path: {data}, image_dir: {data.parent}}}]}}\n"
        f"training: {{output_dir: {out}, max_steps: {max_steps}, save_steps: {save_steps}, logging_steps: 1,\n"
        "           per_device_train_batch_size: 2, learning_rate: 1.0e-3, warmup_steps: 2, report_to: none}\n")
    return config


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VLMTRAIN), "fit", str(config), *overrides], capture_output=True, text=True,
                          env=_env(), timeout=600)


def _start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(VLMTRAIN), "fit", str(config)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=_env())


def _wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


STEPS = 40


@pytest.fixture(scope="module")
def reference(qwen_model, shapes, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted run (as a subprocess too, so both see the same threads)."""
    root = tmp_path_factory.mktemp("reference")
    proc = _run(_config_file(root, qwen_model, shapes, root / "out", STEPS, 1000))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _weights(root / "out")


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_resumes_to_the_uninterrupted_weights(qwen_model, shapes, tmp_path, reference):
    out = tmp_path / "killed"
    config = _config_file(tmp_path, qwen_model, shapes, out, STEPS, 4)
    proc = _start(config, tmp_path / "killed.log")
    _wait_until(proc, lambda: (out / "checkpoint-4" / MARKER).exists(), "the first complete checkpoint")
    proc.kill()
    proc.wait()
    assert not (out / "model.safetensors").exists(), "killed before the end"

    again = _run(config)
    assert again.returncode == 2 and "training.resume_from_checkpoint=true" in again.stderr  # refuses to start over
    resumed = _run(config, "training.resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(_weights(out), reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_run_saves_stops_and_resumes_to_the_uninterrupted_weights(qwen_model, shapes, tmp_path, sig,
                                                                             reference):
    out = tmp_path / "preempted"
    config = _config_file(tmp_path, qwen_model, shapes, out, STEPS, 1000)
    log = tmp_path / "preempted.log"
    proc = _start(config, log)
    _wait_until(proc, lambda: "'loss'" in log.read_text(), "the first logged step")
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == 3  # preempted: saved and resumable (errors exit 2)
    text = log.read_text()
    assert f"error: training stopped by {sig.name} after step" in text
    assert f"resume with: vlmtrain fit {config} training.resume_from_checkpoint=true" in text
    saved = last_complete(out)
    assert saved is not None and 0 < int(saved.name.split("-")[1]) < STEPS
    assert not (out / "model.safetensors").exists()

    resumed = _run(config, "training.resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(_weights(out), reference)


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step(qwen_model, shapes, tmp_path):
    """The signal reaches the parent `vlmtrain fit`; it passes through torchrun to both workers, which agree on
    the step, save one complete checkpoint (with each rank's RNG state) and stop."""
    out = tmp_path / "ddp"
    config = _config_file(tmp_path, qwen_model, shapes, out, 300, 1000)
    log = tmp_path / "ddp.log"
    proc = subprocess.Popen([str(VLMTRAIN), "fit", str(config), "--nproc-per-node", "2"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=_env())
    _wait_until(proc, lambda: "'loss'" in log.read_text(), "the first logged step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) != 0
    stops = [line for line in log.read_text().splitlines() if "error: training stopped by SIGTERM" in line]
    assert len(stops) == 2 and len({s[s.index("error:"):] for s in stops}) == 1, "both ranks, the same step"
    saved = last_complete(out)
    assert saved is not None and {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in saved.iterdir()}
    assert len(list(out.glob("checkpoint-*"))) == 1
