"""The on-disk cache: one folder per key, written atomically under a file lock, accepted only when complete.

Layout under ``data.cache_dir`` (default ``$VLMTRAIN_HOME/data``, i.e. ``~/.cache/vlmtrain/data``)::

    <key>/                   a datasets ``save_to_disk`` folder + vlmtrain_cache.json (written last)
    .<key>.lock              the file lock builders take
    .<key>.tmp-<host>-<pid>-<id>/   a build in progress (renamed to <key>/ when complete)
    media/                   embedded image bytes, content-addressed
    hf/                      datasets' own cache for parquet files and data folders

A build writes into a temporary folder and renames it into place only after the rows and the marker are
written, so a killed build leaves a temporary folder (removed by the next builder) and never a folder a later
run would accept. Builders of the same key serialise on the lock; whoever gets it second finds the finished
folder and loads it. Under torchrun only local rank 0 builds; the other ranks cannot use
``torch.distributed`` barriers yet (the process group does not exist while the data is prepared), so they
poll for the finished folder instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from filelock import FileLock

from vlmtrain.data.errors import DataError
from vlmtrain.data.fingerprint import CACHE_FORMAT_VERSION

log = logging.getLogger("vlmtrain")

MARKER = "vlmtrain_cache.json"
IN_PROGRESS = "BUILDING"
WAIT_TIMEOUT_S = 6 * 3600.0  # how long non-zero local ranks wait for rank 0 to build a cache


def cache_root(data_cfg: Any) -> Path:
    """``data.cache_dir``, or the per-user default next to the embedded tiny models."""
    if data_cfg.cache_dir:
        return Path(str(data_cfg.cache_dir)).expanduser()
    from vlmtrain.embedded import home

    return home() / "data"


def is_builder() -> bool:
    """Whether this process may build caches: local rank 0 (one per node; the lock covers the rest)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


@dataclass(frozen=True)
class CacheEntry:
    """One key's folder, its lock, and what makes it acceptable."""

    root: Path
    key: str

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def lock_path(self) -> Path:
        return self.root / f".{self.key}.lock"

    def meta(self) -> dict[str, Any] | None:
        """The marker of a complete entry for this key, else None."""
        try:
            meta = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != self.key or meta.get("cache_format") != CACHE_FORMAT_VERSION:
            return None
        return meta

    def is_valid(self) -> bool:
        return self.meta() is not None

    def load(self) -> datasets.Dataset:
        return datasets.load_from_disk(str(self.path))

    def _remove_stale(self) -> None:
        """Leftovers of killed builds (called while holding this key's lock).

        Every temporary folder of this key is stale (its builder held this lock); those of other keys are
        removed only when their builder ran on this host and its process is gone.
        """
        for temp in self.root.glob(".*.tmp-*"):
            if temp.name.startswith(f".{self.key}.tmp-") or _builder_is_dead(temp):
                shutil.rmtree(temp, ignore_errors=True)
        if self.path.exists() and not self.is_valid():
            shutil.rmtree(self.path, ignore_errors=True)

    def write(self, build: Callable[[Path], tuple[datasets.Dataset, dict[str, Any]]]) -> None:
        """Run ``build`` and publish its rows atomically (caller holds the lock)."""
        self._remove_stale()
        temp = self.root / f".{self.key}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir(parents=True)
        (temp / IN_PROGRESS).write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
        try:
            dataset, meta = build(temp)
            dataset.save_to_disk(str(temp))
            (temp / IN_PROGRESS).unlink()
            marker = {**meta, "key": self.key, "cache_format": CACHE_FORMAT_VERSION}
            (temp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
            os.replace(temp, self.path)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)


def _builder_is_dead(temp: Path) -> bool:
    """Whether the process that created temporary folder ``temp`` (``.<key>.tmp-<host>-<pid>-<id>``) is gone."""
    host, _, rest = temp.name.split(".tmp-", 1)[-1].rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def wait_for(entry: CacheEntry, timeout_s: float | None = None, poll_s: float = 0.5) -> None:
    """Block a non-building rank until the builder has published ``entry`` (or fail after ``timeout_s``)."""
    timeout_s = WAIT_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while not entry.is_valid():
        if time.monotonic() > deadline:
            raise DataError(f"waited {timeout_s:.0f} s for local rank 0 to build data cache {entry.path}; "
                            "check that rank's log, or run `vlmtrain preprocess` first", "cache")
        time.sleep(poll_s)


def load_or_build(entry: CacheEntry, build: Callable[[Path], tuple[datasets.Dataset, dict[str, Any]]]
                  ) -> tuple[datasets.Dataset, dict[str, Any], bool]:
    """The entry's rows and marker, built first if needed; the bool says whether it was a cache hit."""
    entry.root.mkdir(parents=True, exist_ok=True)
    if entry.is_valid():
        return entry.load(), entry.meta() or {}, True
    if not is_builder():
        log.info("waiting for local rank 0 to build data cache %s", entry.key)
        wait_for(entry)
        return entry.load(), entry.meta() or {}, True
    with FileLock(str(entry.lock_path)):
        hit = entry.is_valid()  # another process may have built it while we waited for the lock
        if not hit:
            entry.write(build)
    return entry.load(), entry.meta() or {}, hit
