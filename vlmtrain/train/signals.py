"""Preemption: SIGTERM, SIGINT and SIGUSR1 (SLURM's ``--signal`` warning) stop training cleanly.

The handler only records the signal; at the end of the current optimizer step every rank agrees (an
all-reduce of the flag, so a signal seen by one rank stops all of them at the same step), the Trainer saves a
checkpoint and stops, and ``fit`` raises ``Preempted``, whose one-line message names the resume command.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from vlmtrain.errors import VlmtrainError

log = logging.getLogger("vlmtrain")

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)
EXIT_CODE = 3  # what the CLI should exit with for Preempted (distinct from errors' 2)


class Preempted(VlmtrainError):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume."""

    exit_code = EXIT_CODE


class PreemptionCallback(TrainerCallback):
    """Turns a termination signal into "finish this step, save a checkpoint, stop" on every rank."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal this process got
        self.stopped: int | None = None  # the signal training stopped on (any rank's), once agreed
        self.step: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def install(self) -> None:
        """Replace the handlers (main thread only; Python allows no other)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.install()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        agreed = _agree(self.received or 0)
        if agreed and self.stopped is None and state.global_step < state.max_steps:  # else the run is done anyway
            self.stopped, self.step = agreed, state.global_step
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                log.warning("got %s: saving a checkpoint at step %d and stopping", signal.Signals(agreed).name,
                            state.global_step)


def _agree(flag: int) -> int:
    """The largest flag over all ranks (0 = no rank got a signal); the flag itself without a process group."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([flag], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def preempted_message(signum: int, step: int, checkpoint: str, resume_command: str) -> str:
    return (f"training stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to "
            f"{checkpoint}; resume with: {resume_command}")


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same ``vlmtrain fit`` call plus resume=true."""
    import shlex
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "fit":
        return "vlmtrain fit <config> training.resume_from_checkpoint=true"
    kept = [a for a in args if not a.startswith("training.resume_from_checkpoint=")]
    return shlex.join(["vlmtrain", *kept, "training.resume_from_checkpoint=true"])
