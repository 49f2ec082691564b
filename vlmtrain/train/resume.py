"""Resuming a run: which checkpoint (``training.resume_from_checkpoint: true | last | PATH``), when a checkpoint
is complete, refusing to train over old checkpoints silently, and loading full-model weights strictly.

Complete means: the Trainer's files are all there (``trainer_state.json``, model or adapter weights, optimizer
and scheduler) *and* vlmtrain's marker ``vlmtrain_checkpoint.json``, written by ``CheckpointMarker`` after every
rank has finished saving, lists every file with its size. The Trainer writes ``checkpoint-N/`` in place, so a
run killed mid-save leaves a folder without a (matching) marker: ``true``/``last`` skip it and say so. "The
Trainer's files" depend on the engine: FSDP's ``pytorch_model_fsdp*``/``optimizer*`` (files, or DCP folders with
their ``.metadata``), DeepSpeed's ``global_stepN/`` named by ``latest`` with one optimizer-state file per rank, and
one ``rng_state_<rank>.pth`` per rank; an explicit path without a marker is checked by those alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmtrain.errors import VlmtrainError

log = logging.getLogger("vlmtrain")

MARKER = "vlmtrain_checkpoint.json"
VLMTRAIN_KEYS = ("resume_from_checkpoint", "overwrite_output_dir")  # popped before SFTConfig sees them
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "adapter_model.bin", "pytorch_model.bin.index.json")
_FSDP_MODEL = "pytorch_model_fsdp"


class ResumeError(VlmtrainError):
    """A resume / output-directory problem (the CLI prints it as one line)."""


@dataclass
class RunStart:
    """What the run starts from: the checkpoint to resume (None = from scratch) and SFTConfig's own keys."""

    checkpoint: str | None
    training: dict[str, Any]


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def incomplete_reason(checkpoint: Path, require_marker: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    if not checkpoint.is_dir():
        return "no such folder"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable trainer_state.json"
    names = {p.name for p in checkpoint.iterdir()}
    reason = _layout_reason(checkpoint, names)
    if reason is not None:
        return reason
    try:
        marker = json.loads((checkpoint / MARKER).read_text())
    except (OSError, ValueError):
        return "no completion marker (interrupted while saving?)" if require_marker else None
    if marker.get("global_step") != state["global_step"]:
        return f"completion marker is for step {marker.get('global_step')}, trainer_state.json for step " \
               f"{state['global_step']} (interrupted while re-saving?)"
    sizes = _file_sizes(checkpoint)
    for name, size in marker.get("files", {}).items():
        if sizes.get(name) != size:
            return f"{name} is missing or has a different size than when it was saved"
    return None


def _layout_reason(checkpoint: Path, names: set[str]) -> str | None:
    """What the Trainer's own files lack, by engine: DeepSpeed (``global_stepN/`` named by ``latest``), FSDP
    (``pytorch_model_fsdp*``/``optimizer*`` files or DCP folders) or a plain ``optimizer.pt`` checkpoint."""
    if any(n.startswith("global_step") for n in names) or "latest" in names:
        reason = _deepspeed_reason(checkpoint)
    elif any(n.startswith(_FSDP_MODEL) for n in names):
        reason = _fsdp_reason(checkpoint, names)
    elif not names & set(_WEIGHTS):
        reason = "no model or adapter weights"
    elif "optimizer.pt" not in names:
        reason = "no optimizer state (saved with save_only_model?)"
    else:
        reason = None
    if reason is None and "scheduler.pt" not in names and not (checkpoint / "latest").is_file():
        reason = "no scheduler state"  # DeepSpeed may keep the scheduler in its own model states instead
    return reason or _rank_files_reason("rng_state_", names)


def _deepspeed_reason(checkpoint: Path) -> str | None:
    """DeepSpeed writes ``global_stepN/`` (model states and one optimizer-state file per rank), then ``latest``."""
    try:
        tag = (checkpoint / "latest").read_text().strip()
    except OSError:
        return "no DeepSpeed 'latest' file (interrupted while saving?)"
    states = checkpoint / tag
    if not tag or not states.is_dir():
        return f"DeepSpeed's 'latest' names '{tag}', which is not a folder of the checkpoint"
    files = {p.name for p in states.iterdir() if p.is_file()}
    if not any(n.endswith("_model_states.pt") for n in files):
        return f"no DeepSpeed model states in {tag}/"
    optim = {n for n in files if n.endswith("_optim_states.pt")}
    if not optim:
        return f"no DeepSpeed optimizer states in {tag}/ (saved with save_only_model?)"
    gap = _rank_files_reason("zero_pp_rank_", optim, where=f"{tag}/")
    if gap is not None:
        return gap
    rng = [n for n in checkpoint.iterdir() if re.match(r"^rng_state_\d+\.pth$", n.name)]
    if rng and len(rng) != len(optim):  # one of each per rank: fewer optimizer states means a rank never wrote
        return f"{len(optim)} DeepSpeed optimizer-state file(s) in {tag}/ for {len(rng)} ranks' RNG states"
    return None


def _fsdp_reason(checkpoint: Path, names: set[str]) -> str | None:
    """FSDP writes ``pytorch_model_fsdp.bin``/``optimizer.bin`` (full state dict, rank 0) or DCP folders
    ``pytorch_model_fsdp_0/``/``optimizer_0/`` (sharded), whose ``.metadata`` is written after every rank's shard."""
    for prefix, what in ((_FSDP_MODEL, "model"), ("optimizer", "optimizer")):
        files = [n for n in names if n.startswith(prefix) and n.endswith(".bin") and (checkpoint / n).is_file()]
        folders = [n for n in names if n.startswith(prefix) and (checkpoint / n).is_dir()]
        if not files and not folders:
            return f"no FSDP {what} state (saved with save_only_model?)"
        unfinished = [n for n in folders if not (checkpoint / n / ".metadata").is_file()]
        if unfinished:
            return f"FSDP {what} shards in {unfinished[0]}/ have no .metadata (interrupted while saving?)"
    return None


def _rank_files_reason(prefix: str, names: set[str], where: str = "") -> str | None:
    """Per-rank files (``rng_state_<r>.pth``, ``[bf16_]zero_pp_rank_<r>_...``) must cover ranks 0..N-1."""
    ranks = {int(m.group(1)) for n in names if (m := re.match(rf"^(?:bf16_|fp16_)?{prefix}(\d+)", n))}
    missing = sorted(set(range(max(ranks, default=-1) + 1)) - ranks)
    if missing:
        return f"{where}{prefix}* files of rank(s) {missing} are missing (interrupted while saving?)"
    return None


def last_complete(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``output_dir``; newer incomplete ones are skipped with a warning."""
    for checkpoint in reversed(checkpoints(output_dir)):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint
        log.warning("skipping %s: incomplete (%s)", checkpoint, reason)
    return None


def _wants_last(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "last"))


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false"))


def start_run(training: dict[str, Any], rank0: bool) -> RunStart:
    """Resolve ``resume_from_checkpoint`` and refuse to start over existing checkpoints unless told.

    ``overwrite_output_dir: true`` (vlmtrain's key; transformers 5 dropped it) removes the old ``checkpoint-N``
    folders on rank 0, so a later ``resume: last`` can never pick a checkpoint of the previous run.
    """
    training = dict(training)
    resume = training.pop("resume_from_checkpoint", None)
    overwrite = bool(training.pop("overwrite_output_dir", False))
    output_dir = Path(str(training.get("output_dir", "outputs/run")))
    if _is_off(resume):
        existing = checkpoints(output_dir)
        if existing and not overwrite:
            raise ResumeError(
                f"training.output_dir {output_dir} already holds {len(existing)} checkpoint(s) (newest "
                f"{existing[-1].name}): continue that run with training.resume_from_checkpoint=true, or start over "
                "with training.overwrite_output_dir=true (deletes them), or pick another training.output_dir")
        if existing and rank0:
            for old in existing:
                shutil.rmtree(old)
            log.info("overwrite_output_dir: removed %d checkpoint(s) of the previous run from %s", len(existing),
                     output_dir)
        return RunStart(None, training)
    if _wants_last(resume):
        found = last_complete(output_dir)
        if found is None:
            raise ResumeError(
                f"training.resume_from_checkpoint=true: no complete checkpoint in {output_dir} "
                f"({len(checkpoints(output_dir))} checkpoint folder(s), none complete); point it at a checkpoint "
                "folder, or set it to false to start from scratch")
    else:
        found = Path(str(resume)).expanduser()
        reason = incomplete_reason(found, require_marker=False)
        if reason is not None:
            raise ResumeError(f"training.resume_from_checkpoint={resume}: cannot resume from it ({reason}); "
                              f"use a complete checkpoint-N folder, or true for the newest complete one")
        if not (found / MARKER).exists():  # e.g. written by plain transformers: its files are all there
            log.warning("%s has no vlmtrain completion marker: resuming from it as the Trainer wrote it", found)
    log.info("resuming from %s (step %d)", found, json.loads((found / "trainer_state.json").read_text())["global_step"])
    return RunStart(str(found), training)


class CheckpointMarker(TrainerCallback):
    """Writes ``vlmtrain_checkpoint.json`` into each checkpoint once every rank has finished saving it.

    Before a step that saves, a stale marker of the same folder (a complete checkpoint being overwritten after
    resuming from an earlier one) is removed first, so a save interrupted there is never taken as complete.
    """

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save and state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARKER).unlink(missing_ok=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its own rng_state_<rank>.pth
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir():
            return
        marker = {"global_step": state.global_step, "files": _file_sizes(folder)}
        temp = folder / f".{MARKER}.tmp"
        with open(temp, "w") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, folder / MARKER)


def load_full_weights(model: Any, checkpoint: str | Path) -> bool:
    """Load a ``save_pretrained`` full-model checkpoint into ``model`` in place, every tensor or an error.

    ``save_pretrained`` writes the original (hub) key names, e.g. Qwen2-VL's ``visual.*`` for the model's
    ``model.visual.*``; the Trainer's resume path loads the raw keys non-strictly and keeps random or stale
    weights for every renamed one (transformers issue 43701). This applies the model's own renamings first, as
    ``from_pretrained`` does. Returns False when the folder holds no full-model safetensors (caller falls back).
    """
    from safetensors.torch import load_file
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    folder = Path(checkpoint)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return False
    transforms = getattr(model, "_weight_conversions", None) or get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    own = model.state_dict()
    loaded: dict[str, Any] = {}
    for file in files:
        for key, tensor in load_file(str(file)).items():
            name, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, own)
            if converter is not None:
                raise ResumeError(f"{folder}: weight {key} needs a conversion ({converter}) that resuming cannot "
                                  "apply; resume is not supported for this model's checkpoint format")
            loaded[name] = tensor
    unexpected = sorted(set(loaded) - set(own))
    shared = {own[k].data_ptr() for k in loaded if k in own}
    missing = sorted(k for k in set(own) - set(loaded) if own[k].data_ptr() not in shared)  # tied weights are fine
    if unexpected or missing:
        raise ResumeError(f"{folder}: checkpoint weights do not match the model ({len(missing)} missing, e.g. "
                          f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); resume with the "
                          "model this checkpoint was trained from")
    model.load_state_dict(loaded, strict=False)
    log.info("resumed %d weight tensors from %s", len(loaded), folder)
    return True
