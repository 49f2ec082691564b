"""The run's record in ``output_dir``, written by rank 0 when the run starts, so a crashed run leaves one:
``vlmtrain_config.yaml`` (the fully resolved config) and ``vlmtrain_run.json`` (the data cache keys)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import datasets

CONFIG_FILE = "vlmtrain_config.yaml"
RUN_FILE = "vlmtrain_run.json"


def is_rank0() -> bool:
    """Global rank 0 (the process group may not exist yet, so read torchrun's environment)."""
    return int(os.environ.get("RANK", "0")) == 0


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def write_config(cfg: Any, output_dir: str | Path) -> None:
    """The resolved config, as ``fit`` will run it (rank 0 only)."""
    if not is_rank0():
        return
    from vlmtrain.config import to_yaml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / CONFIG_FILE, to_yaml(cfg))


def cache_entry(rows: datasets.Dataset) -> dict[str, Any]:
    """Which data cache folder a split was read from (its name is the cache key)."""
    files = [f["filename"] for f in rows.cache_files]
    if not files:
        return {"key": None, "path": None, "note": "not read from the data cache"}
    folder = Path(files[0]).parent
    return {"key": folder.name, "path": str(folder)}


def write_run(output_dir: str | Path, splits: dict[str, datasets.Dataset], resumed_from: str | None) -> None:
    """The data cache keys of every split and the checkpoint this run resumed from (rank 0 only)."""
    if not is_rank0():
        return
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": resumed_from,
              "data_cache": {split: cache_entry(rows) for split, rows in splits.items()}}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
