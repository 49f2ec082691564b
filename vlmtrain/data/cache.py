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

from vlmtrain.data.fingerprint import CACHE_FORMAT_VERSION
from vlmtrain.errors import DataError

log = logging.getLogger("vlmtrain")

MARKER = "vlmtrain_cache.json"
IN_PROGRESS = "BUILDING"
WAIT_TIMEOUT_S = 6 * 3600.0  # how long non-zero local ranks wait for rank 0 to build a cache


def cache_root(data_cfg: Any) -> Path:
    """``data.cache_dir``, or the per-user default next to the embedded tiny models."""
    if data_cfg.cache_dir:
        return Path(str(data_cfg.cache_dir)).expanduser()
    from vlmtrain.paths import home

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


def _launch_id() -> str | None:
    """This node's share of one torchrun launch: the agent is the parent of every local rank; None without one."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return f"{socket.gethostname()}-{os.getppid()}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


_CALLS: dict[str, int] = {}  # load_or_build calls per cache root in this process: ranks call in the same order


def _announcement(root: Path) -> Path | None:
    launch = _launch_id()
    return None if launch is None else root / f".builder-{launch}.json"


def _announce(root: Path, index: int, key: str) -> None:
    """Local rank 0 records, in call order, which key it builds or loads, so a waiter can compare its own."""
    path = _announcement(root)
    if path is None:
        return
    if index == 0:  # the first call of this launch: drop records of launches whose agent is gone
        for old in root.glob(f".builder-{socket.gethostname()}-*.json"):
            agent = old.name.split("-")[-2]
            if old != path and agent.isdigit() and not _alive(int(agent)):
                old.unlink(missing_ok=True)
    try:
        keys = json.loads(path.read_text())["keys"] if index else []
    except (OSError, ValueError, KeyError):
        keys = []
    keys = [*keys[:index], key]
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps({"pid": os.getpid(), "keys": keys}))
    os.replace(temp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(entry: CacheEntry, timeout_s: float | None = None, poll_s: float = 0.5, index: int | None = None
             ) -> None:
    """Block a non-building rank until the builder has published ``entry``.

    Fails at once, with both keys, when local rank 0 announced a different key for this call (the ranks see
    different data, tokenizer or config), and when rank 0 exited without publishing; logs while it waits.
    """
    timeout_s = WAIT_TIMEOUT_S if timeout_s is None else timeout_s
    start = time.monotonic()
    announcement = _announcement(entry.root)
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "?"))
    next_log = 10.0
    while not entry.is_valid():
        waited = time.monotonic() - start
        record = _read_json(announcement) if announcement is not None and index is not None else None
        if record is not None:
            keys = record.get("keys", [])
            if len(keys) > index and keys[index] != entry.key:
                raise DataError(
                    f"rank {rank} computed data cache key {entry.key} but local rank 0 uses {keys[index]} "
                    f"(under {entry.root}): the ranks see different data files, tokenizer or config; make the "
                    "inputs identical on every rank, or run `vlmtrain preprocess` first", "cache")
            if not _alive(int(record.get("pid", 0))):
                raise DataError(f"rank {rank}: local rank 0 (pid {record.get('pid')}) exited without building "
                                f"data cache {entry.key} ({entry.path}); see that rank's error", "cache")
        if waited > timeout_s:
            raise DataError(f"waited {timeout_s:.0f} s for local rank 0 to build data cache {entry.path}; "
                            "check that rank's log, or run `vlmtrain preprocess` first", "cache")
        if waited > next_log:
            log.warning("rank %s: still waiting (%.0f s) for local rank 0 to build data cache %s (%s)", rank, waited,
                        entry.key, entry.path)
            next_log = waited + 60.0
        time.sleep(poll_s)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_or_build(entry: CacheEntry, build: Callable[[Path], tuple[datasets.Dataset, dict[str, Any]]]
                  ) -> tuple[datasets.Dataset, dict[str, Any], bool]:
    """The entry's rows and marker, built first if needed; the bool says whether it was a cache hit."""
    entry.root.mkdir(parents=True, exist_ok=True)
    index = _CALLS.get(str(entry.root), 0)
    _CALLS[str(entry.root)] = index + 1
    if is_builder():
        _announce(entry.root, index, entry.key)
    if entry.is_valid():
        return entry.load(), entry.meta() or {}, True
    if not is_builder():
        log.info("waiting for local rank 0 to build data cache %s (%s)", entry.key, entry.path)
        wait_for(entry, index=index)
        return entry.load(), entry.meta() or {}, True
    with FileLock(str(entry.lock_path)):
        hit = entry.is_valid()  # another process may have built it while we waited for the lock
        if not hit:
            entry.write(build)
    return entry.load(), entry.meta() or {}, hit
