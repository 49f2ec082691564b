"""Multi-process launch: ``fit`` re-executes itself under ``torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launch(launch_cfg: Any) -> bool:
    return not under_torchrun() and (launch_cfg.nproc_per_node > 1 or launch_cfg.nnodes > 1)


def torchrun_args(launch_cfg: Any) -> list[str]:
    """torchrun flags from the ``launch`` section (CLI flags were merged into it as overrides)."""
    args = [f"--nproc-per-node={launch_cfg.nproc_per_node}", f"--nnodes={launch_cfg.nnodes}"]
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
    """Run ``python -m torch.distributed.run <flags> -m vlmtrain fit <argv>`` and return its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(launch_cfg), "-m", "vlmtrain", "fit",
           *fit_argv]
    return subprocess.call(cmd)
