"""Multi-process launch: ``fit`` re-executes itself under ``torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")  # torchrun's defaults plus SIGUSR1
PASSED_ON = ("SIGTERM", "SIGINT", "SIGUSR1")  # what this parent passes to torchrun
SHUTDOWN_TIMEOUT_S = 300


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launch(launch_cfg: Any, training: Any = None) -> bool:
    """Several processes, or a sharding engine (FSDP2 / DeepSpeed need a process group even on one GPU)."""
    sharded = bool(training and (training.get("fsdp") or training.get("deepspeed")))
    return not under_torchrun() and (launch_cfg.nproc_per_node > 1 or launch_cfg.nnodes > 1 or sharded)


def torchrun_args(launch_cfg: Any) -> list[str]:
    """torchrun flags from the ``launch`` section (CLI flags were merged into it as overrides)."""
    args = [f"--nproc-per-node={launch_cfg.nproc_per_node}", f"--nnodes={launch_cfg.nnodes}",
            # torchrun forwards these to every worker, which saves a checkpoint and stops (train/signals.py);
            # SIGUSR1 is SLURM's advance warning. Workers get SHUTDOWN_TIMEOUT_S to save before SIGKILL.
            f"--signals-to-handle={','.join(FORWARDED)}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}"]
    if launch_cfg.rdzv_endpoint:
        args += [f"--rdzv-backend={launch_cfg.rdzv_backend}", f"--rdzv-endpoint={launch_cfg.rdzv_endpoint}"]
    else:
        args.append(f"--node-rank={launch_cfg.node_rank}")
        if launch_cfg.master_addr:
            args.append(f"--master-addr={launch_cfg.master_addr}")
        if launch_cfg.master_port:
            args.append(f"--master-port={launch_cfg.master_port}")
        elif launch_cfg.nnodes == 1:
            args.append("--standalone")
    return args


def relaunch(launch_cfg: Any, fit_argv: Sequence[str]) -> int:
    """Run ``python -m torch.distributed.run <flags> -m vlmtrain fit <argv>`` and return its exit code.

    A SIGTERM / SIGINT / SIGUSR1 sent to this process is passed on to torchrun (which passes it to the
    workers) instead of killing this process and orphaning the run.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(launch_cfg), "-m", "vlmtrain", "fit",
           *fit_argv]
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _signals(PASSED_ON)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signals(names: Sequence[str]) -> list[signal.Signals]:
    return [getattr(signal, n) for n in names if hasattr(signal, n)]
