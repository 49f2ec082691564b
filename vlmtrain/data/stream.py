"""``data.streaming: true``: the train split read from sharded files as an endless ``IterableDataset``, rendered
and masked on the fly in dataloader workers, under the same row policies as the cached path.

Why a stream is laid out the way it is (each row exactly once per epoch, resumable exactly):

- The rank x dataloader-worker pairs are *slots* (``slot = rank * workers + worker``). With at least as many
  shard files as slots, each slot reads whole files (``shards[perm][slot::slots]``); with fewer, every slot
  reads every file and keeps the rows whose index in the epoch is ``slot`` modulo the number of slots. Either
  way the slots partition the epoch's rows.
- ``shuffle_buffer > 0`` permutes the shard order per epoch (one generator seeded by ``(seed, epoch)``, the
  same in every slot, so the partition stays a partition) and shuffles each slot's rows through a buffer of
  that many raw rows (seeded by ``(seed, epoch, slot)``).
- A slot's output is therefore a deterministic sequence per epoch. Every item carries its ``(worker, epoch,
  position)``; the trainer side (``vlmtrain.train.streaming``) records the position of the last row it
  consumed per worker and saves it with each checkpoint. Resuming replays the sequence up to that position
  *without validating or rendering* the skipped rows (only reading them) and continues from there.
- The stream never ends: after an epoch a slot starts the next one, so ranks always have a batch and
  ``training.max_steps`` decides the length of the run.

Problems are never raised inside a worker (the DataLoader would wrap the one-line message in a traceback):
a fatal row becomes an error item the collator turns into a batch marker, raised in the main process; rows
dropped under the policies travel with the next kept row so the main process counts them in the order they
were consumed.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from vlmtrain.data.cache import cache_root
from vlmtrain.data.examples import ExampleContext, context_for, example_from_raw
from vlmtrain.data.policies import BuildSettings
from vlmtrain.data.rows import render_example
from vlmtrain.data.sources import JSONL_SUFFIXES, RawRow, iter_rows, source_kind
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.checks import EmptyMaskError, find_issues
from vlmtrain.mask.pipeline import MaskedRenderer
from vlmtrain.render.messages import drop_nulls

log = logging.getLogger("vlmtrain")

SHARD_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")
STREAM_KEY = "_stream"  # (worker, epoch, position after this row) on every item
ERROR_KEY = "_error"


@dataclass(frozen=True)
class Shard:
    """One file (or ``save_to_disk`` folder) of a source; ``source`` is the source's config with ``path`` set to
    this file, so image paths resolve next to the shard and ``where`` names it."""

    path: str
    index: int  # the source's index in data.train
    source: Any


def _matches(text: str) -> list[str]:
    if glob.has_magic(text):
        return sorted(glob.glob(os.path.expanduser(text), recursive=True))
    path = Path(text).expanduser()
    if path.is_dir() and source_kind(str(path)) == "folder":
        return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SHARD_SUFFIXES)
    return [str(path)] if path.exists() else []


def shards_of(sources: list[Any], split: str = "train") -> list[Shard]:
    """Every shard of every source, sorted per source; a pattern matching nothing is an error naming the key."""
    shards: list[Shard] = []
    for index, source in enumerate(sources):
        key = f"data.{split}[{index}]"
        if float(source.weight) != 1.0:
            raise DataError(f"{key}.weight={source.weight}: source weights are not supported with data.streaming "
                            "yet (the stream reads every row once per epoch); set it to 1 or data.streaming: false",
                            Reason.CONFIG)
        if source.max_rows is not None:
            raise DataError(f"{key}.max_rows: not supported with data.streaming (a stream has no row count); "
                            "remove it and bound the run with training.max_steps", Reason.CONFIG)
        found = _matches(str(source.path))
        if not found:
            raise DataError(f"{key}.path {str(source.path)!r} matches no files; give a file, a folder of shards or "
                            "a glob such as data/shard-*.jsonl", Reason.CONFIG)
        for path in found:
            kind = source_kind(path)
            if kind not in ("jsonl", "json", "parquet", "saved"):
                raise DataError(f"{key}.path: {path} is not a JSON Lines, JSON or Parquet file or a save_to_disk "
                                "folder, which is what data.streaming reads", Reason.CONFIG)
            shards.append(Shard(path, index, OmegaConf.merge(source, {"path": path})))
    return shards


def _iter_parquet(path: str) -> Iterator[RawRow]:
    """Record batches straight from the file (nothing converted or cached); ``where`` as the cached path's."""
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for record in batch.to_pylist():
            yield RawRow(f"{path}:row {row}", drop_nulls(record))
            row += 1


def read_shard(shard: Shard, hf_cache: str) -> Iterator[RawRow]:
    if source_kind(shard.path) == "parquet":
        rows = _iter_parquet(shard.path)
        first = next(rows, None)
        if first is None:
            raise DataError(f"{shard.path}: the shard holds no rows; remove it or point the glob elsewhere",
                            Reason.EMPTY_SOURCE)
        yield first
        yield from rows
        return
    yield from iter_rows(shard.source, hf_cache)


def slot_order(shards: int, slots: int, seed: int, epoch: int, shuffle: bool) -> tuple[np.ndarray, bool]:
    """The epoch's shard order and whether slots take whole files (True) or rows round-robin (False)."""
    order = np.random.default_rng([seed, epoch]).permutation(shards) if shuffle else np.arange(shards)
    return order, shards >= slots


def buffered(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A seeded shuffle buffer of ``size`` items (``size`` <= 1: the order unchanged)."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[int(j)]


class StreamDataset(torch.utils.data.IterableDataset):
    """The endless, sharded, shuffled, rendered train stream of one rank (see the module docstring).

    ``start`` maps a worker id to the ``(epoch, position)`` its sequence resumes at (from a checkpoint);
    ``rotation`` is which worker's batch the trainer takes next: the DataLoader always starts with its worker 0,
    so physical worker ``i`` plays worker ``(i + rotation) % workers`` and the batches keep their order.
    """

    def __init__(self, cfg: Any, renderer: MaskedRenderer, sources: list[Any], *, rank: int = 0,
                 world_size: int = 1, start: dict[int, tuple[int, int]] | None = None, rotation: int = 0,
                 split: str = "train") -> None:
        self.cfg, self.renderer, self.split = cfg, renderer, split
        self.shards = shards_of(sources, split)
        self.settings = BuildSettings.from_config(cfg.data, cfg.mask, sources)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(cfg.data.seed)
        self.buffer = int(cfg.data.shuffle_buffer)
        self.start, self.rotation = dict(start or {}), int(rotation)
        root = cache_root(cfg.data)
        self.hf_cache, self.media_dir = str(root / "hf"), root / "media"

    # ------------------------------------------------------------------------------------------ layout

    def slot(self) -> tuple[int, int, int]:
        """(worker id, this worker's slot, number of slots) in the current process."""
        info = torch.utils.data.get_worker_info()
        worker, workers = ((info.id + self.rotation) % info.num_workers, info.num_workers) if info else (0, 1)
        return worker, self.rank * workers + worker, self.world_size * workers

    def raw_sequence(self, slot: int, slots: int, epoch: int) -> Iterator[tuple[Shard, RawRow]]:
        """This slot's raw rows of ``epoch``, shuffled: a pure function of (shards, seed, epoch, slot, slots)."""
        order, by_file = slot_order(len(self.shards), slots, self.seed, epoch, self.buffer > 1)

        def unshuffled() -> Iterator[tuple[Shard, RawRow]]:
            if by_file:
                for i in order[slot::slots]:
                    shard = self.shards[int(i)]
                    yield from ((shard, raw) for raw in read_shard(shard, self.hf_cache))
                return
            count = 0
            for i in order:
                shard = self.shards[int(i)]
                for raw in read_shard(shard, self.hf_cache):
                    if count % slots == slot:
                        yield shard, raw
                    count += 1

        rng = np.random.default_rng([self.seed, epoch, slot, 1])
        return buffered(unshuffled(), self.buffer, rng)

    # ------------------------------------------------------------------------------------------ rows

    def _context(self, shard: Shard, contexts: dict[str, ExampleContext],
                 formats: dict[int, dict[str, Any]]) -> ExampleContext:
        if shard.path not in contexts:
            ctx = context_for(shard.source, shard.index, self.cfg, self.media_dir)
            contexts[shard.path] = replace(ctx, formats=formats.setdefault(shard.index, {}))
        return contexts[shard.path]

    def render(self, shard: Shard, raw: RawRow, ctx: ExampleContext) -> tuple[dict[str, Any] | None, DataError | None]:
        """One raw row -> its record, or the problem (a DataError carrying the row's reason)."""
        try:
            row = render_example(self.renderer, example_from_raw(raw, shard.source, ctx), self.settings)
        except (DataError, EmptyMaskError) as err:
            return None, DataError(str(err), err.reason)
        if len(row) > self.settings.max_length:
            return None, DataError(f"{raw.where}: {len(row)} tokens exceed data.max_length="
                                   f"{self.settings.max_length}; rows are never truncated (that would cut through "
                                   "images): raise data.max_length or set data.on_too_long: drop", Reason.TOO_LONG)
        assert row.loss_mask is not None
        issues = find_issues(row, row.loss_mask)
        record = row.to_record()
        record["_checks"] = (len(issues.untrained_stop_turns), len(issues.turns_without_stop))
        return record, None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, slot, slots = self.slot()
        epoch, skip = self.start.get(worker, (0, 0))
        contexts: dict[str, ExampleContext] = {}
        formats: dict[int, dict[str, Any]] = {}
        dropped: list[tuple[str, str]] = []
        while True:
            position, kept = 0, 0
            try:
                for shard, raw in self.raw_sequence(slot, slots, epoch):
                    position += 1
                    if position <= skip:
                        continue
                    record, problem = self.render(shard, raw, self._context(shard, contexts, formats))
                    tag = (worker, epoch, position)
                    if problem is not None:
                        if problem.reason.is_source_problem or self.settings.is_fatal(problem.reason):
                            yield {STREAM_KEY: tag, ERROR_KEY: str(problem), "_reason": str(problem.reason)}
                            return
                        label = (f"{problem.reason}={self.settings.max_length}" if problem.reason == Reason.TOO_LONG
                                 else str(problem.reason))
                        dropped.append((label, str(problem)))
                        continue
                    assert record is not None
                    kept += 1
                    record[STREAM_KEY], record["_dropped"], dropped = tag, dropped, []
                    yield record
            except DataError as err:  # a source problem (unreadable or empty shard): fatal
                yield {STREAM_KEY: (worker, epoch, position), ERROR_KEY: str(err), "_reason": str(err.reason)}
                return
            if kept == 0 and skip == 0:
                what = ("every row of this slot's share was dropped: " + "; ".join(m for _, m in dropped[:3])
                        if position else f"this slot gets no rows ({len(self.shards)} shard(s) over {slots} "
                        "rank x worker slots and fewer rows than slots)")
                message = (f"data.{self.split} stream: rank {self.rank} worker {worker}, epoch {epoch}: {what}; "
                           "fix the data, or use fewer training.dataloader_num_workers")
                yield {STREAM_KEY: (worker, epoch, position), ERROR_KEY: message, "_reason": str(Reason.NO_ROWS)}
                return
            epoch, skip = epoch + 1, 0


def stream_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment (the process group may not exist yet)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


__all__ = ["ERROR_KEY", "STREAM_KEY", "Shard", "StreamDataset", "buffered", "shards_of", "slot_order",
           "stream_rank"]
