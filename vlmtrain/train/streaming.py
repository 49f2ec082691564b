"""``data.streaming: true`` in ``fit``: the stream dataset, what the main process records of it, and its state in
every checkpoint (``stream_state_rank{N}.json``), so a resumed run continues exactly where the checkpoint left it.

The stream is sharded by rank *inside* ``StreamDataset``, so the Trainer's own handling of iterable datasets is
turned off: accelerate would broadcast rank 0's batches (``dispatch_batches``) or make every rank read all rows
and keep a slice (``IterableDatasetShard``, neutralised here as transformers does for its own rank-aware
samplers), and the Trainer would fast-forward the stream on resume (``ignore_data_skip``) — the stream state
does that instead, without rendering the skipped rows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmtrain.collate import COLLATOR_COLUMNS
from vlmtrain.data.policies import BuildReport
from vlmtrain.data.stream import ERROR_KEY, STREAM_KEY, StreamDataset, stream_rank
from vlmtrain.errors import ConfigError, DataError, Reason
from vlmtrain.pack.stream import PACK_KEY, PackedStream
from vlmtrain.train.resume import CheckpointMarker, ResumeError

log = logging.getLogger("vlmtrain")

STREAM_MARKER = "vlmtrain_stream"
STATE_FILE = "stream_state_rank{rank}.json"
REPORT_SECONDS = 60.0
# Called in the main process with the ``where`` of every row of each batch the trainer takes (tests, audits).
ROW_LISTENERS: list[Callable[[list[str]], None]] = []


def require_max_steps(training: dict[str, Any]) -> int:
    steps = int(training.get("max_steps", -1) or -1)
    if steps <= 0:
        raise ConfigError("data.streaming: true needs training.max_steps (a stream has no length, so epochs cannot "
                          "set the run's length); set training.max_steps=N")
    return steps


class StreamCollator:
    """Wraps the row collator (in the dataloader workers): strips the stream's bookkeeping off the rows and puts it
    into the batch under ``STREAM_MARKER``; a batch holding an error item becomes only the marker."""

    def __init__(self, inner: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.inner = inner

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        rows = [r for f in features for r in (f if isinstance(f, list) else [f])]  # packs are lists of rows
        marker: dict[str, Any] = {"tags": [tuple(r[STREAM_KEY]) for r in rows],
                                  "where": [r.get("where", "") for r in rows],
                                  "dropped": [d for r in rows for d in r.get("_dropped", [])],
                                  "checks": [tuple(r.get("_checks", (0, 0))) for r in rows],
                                  "trained": [int(r.get("num_trained", 0)) for r in rows],
                                  "tokens": [int(r.get("length", 0)) for r in rows],
                                  "packs": [tuple(f[0][PACK_KEY]) for f in features
                                            if isinstance(f, list) and f and PACK_KEY in f[0]]}
        failed = next((r for r in rows if ERROR_KEY in r), None)
        if failed is not None:
            marker["error"], marker["reason"] = failed[ERROR_KEY], failed["_reason"]
            return {STREAM_MARKER: marker}
        strip = [[_columns(r) for r in f] if isinstance(f, list) else _columns(f) for f in features]
        batch = dict(self.inner(strip))
        batch[STREAM_MARKER] = marker
        return batch


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in COLLATOR_COLUMNS}


@dataclass
class StreamTracker:
    """What the trainer has consumed: per worker the ``(epoch, position)`` of its last row (packed: the
    ``(epoch, position, packs taken)`` of its current pack window, ``vlmtrain.pack.stream``), and the row report."""

    rank: int
    world_size: int
    num_workers: int
    shards: list[str]
    seed: int
    shuffle_buffer: int
    pack_buffer: int = 0  # rows per pack window; 0 = not packed
    pack_max_length: int = 0
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    windows: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    rows: int = 0
    batches: int = 0  # taken by the trainer; modulo the workers, whose batch comes next
    report: BuildReport = field(default_factory=BuildReport)
    _reported: tuple[int, float] = (0, 0.0)

    def consume(self, marker: dict[str, Any]) -> None:
        """Record one batch the trainer takes (raises the stream's one-line error for an error batch)."""
        if "error" in marker:
            raise DataError(marker["error"], Reason(marker["reason"]))
        for worker, epoch, position in marker["tags"]:
            self.positions[int(worker)] = (int(epoch), int(position))
        for worker, epoch, position, done in marker.get("packs", []):
            self.windows[int(worker)] = (int(epoch), int(position), int(done))
        for label, message in marker["dropped"]:
            self.report.drop(label, message)
        self.rows += len(marker["tags"])
        self.batches += 1
        self.report.kept += len(marker["tags"])
        self.report.trained_tokens += sum(marker["trained"])
        self.report.total_tokens += sum(marker["tokens"])
        self.report.untrained_stop_turns += sum(c[0] for c in marker["checks"])
        self.report.turns_without_stop += sum(c[1] for c in marker["checks"])
        for listener in ROW_LISTENERS:
            listener(list(marker["where"]))
        self.maybe_report()

    def maybe_report(self, force: bool = False) -> None:
        """Log the row report when rows were dropped since the last one (at most once a minute), or ``force``."""
        dropped = sum(self.report.dropped.values())
        last_dropped, last_time = self._reported
        now = time.monotonic()
        if force or (dropped > last_dropped and now - last_time >= REPORT_SECONDS):
            for line in self.report.lines():
                (log.warning if line.startswith("WARNING") else log.info)("train stream (rank %d): %s", self.rank,
                                                                          line)
            self._reported = (dropped, now)

    def state(self) -> dict[str, Any]:
        workers = ({str(w): {"epoch": e, "position": p, "packs": k} for w, (e, p, k) in sorted(self.windows.items())}
                   if self.pack_buffer else
                   {str(w): {"epoch": e, "position": p} for w, (e, p) in sorted(self.positions.items())})
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": self.num_workers,
                "seed": self.seed, "shuffle_buffer": self.shuffle_buffer, "pack_buffer": self.pack_buffer,
                "pack_max_length": self.pack_max_length, "shards": self.shards,
                "rows_consumed": self.rows, "batches_consumed": self.batches, "workers": workers,
                "report": self.report.to_dict()}


class StreamLoader:
    """The prepared train dataloader, minus the marker: each batch it yields is recorded as consumed."""

    def __init__(self, loader: Any, tracker: StreamTracker) -> None:
        self.loader, self.tracker = loader, tracker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.tracker.consume(batch.pop(STREAM_MARKER))
            yield batch

    def set_epoch(self, epoch: int) -> None:  # the stream cycles its own epochs; the Trainer runs one
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class StreamStateCallback(TrainerCallback):
    """Writes this rank's stream state into each checkpoint; listed before ``CheckpointMarker`` in ``fit`` so
    the completion marker covers it."""

    def __init__(self, tracker: StreamTracker) -> None:
        self.tracker = tracker

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STATE_FILE.format(rank=self.tracker.rank)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps({"global_step": state.global_step, **self.tracker.state()}, indent=1) + "\n")
        os.replace(temp, path)
        self.tracker.maybe_report(force=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.maybe_report(force=True)


def load_state(checkpoint: str | None, tracker: StreamTracker) -> tuple[dict[int, tuple[int, int]], int]:
    """Where each worker resumes and which worker's batch comes next (nothing when starting fresh); a state that
    does not fit this run is an error."""
    if checkpoint is None:
        return {}, 0
    path = Path(checkpoint) / STATE_FILE.format(rank=tracker.rank)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path}: no readable stream state, so the stream cannot continue where the checkpoint "
                          "left it (was it saved without data.streaming?); resume with the settings it was saved "
                          "with, or start a new run") from err
    for key in ("world_size", "num_workers", "seed", "shuffle_buffer", "pack_buffer", "pack_max_length", "shards"):
        now, then = getattr(tracker, key), saved.get(key, 0 if key.startswith("pack_") else None)
        if now != then:
            shown = (f"{len(then or [])} shard(s), now {len(now)}" if key == "shards" else f"{then}, now {now}")
            raise ResumeError(f"{path}: the stream was saved with {key} {shown}; the position cannot be carried "
                              "over: resume with the same processes, training.dataloader_num_workers, data.seed, "
                              "data.shuffle_buffer, data.packing, data.pack_buffer, data.max_length (packed) and "
                              "shard files")
    tracker.rows, tracker.batches = int(saved["rows_consumed"]), int(saved["batches_consumed"])
    tracker.report = BuildReport.from_dict(saved.get("report", {}))
    tracker.positions = {int(w): (int(s["epoch"]), int(s["position"])) for w, s in saved["workers"].items()}
    if tracker.pack_buffer:
        tracker.windows = {int(w): (int(s["epoch"]), int(s["position"]), int(s["packs"]))
                           for w, s in saved["workers"].items()}
    log.info("train stream (rank %d): resuming after %d rows (%s)", tracker.rank, tracker.rows,
             ", ".join(f"worker {w}: epoch {e} row {p}" for w, (e, p) in sorted(tracker.positions.items())))
    return dict(tracker.positions), tracker.batches % max(1, tracker.num_workers)


@dataclass
class StreamRun:
    dataset: StreamDataset | PackedStream
    tracker: StreamTracker
    callback: StreamStateCallback

    @property
    def stand_in(self) -> Any:
        """What TRL's constructor is given (it takes only ``datasets`` types); ``attach`` puts the stream in."""
        import datasets

        return datasets.IterableDataset.from_generator(_no_rows)

    def attach(self, trainer: Any) -> None:
        """Wire the stream into a constructed trainer: its collator wrapped, its train dataloader wrapped in
        ``StreamLoader`` with accelerate's re-sharding undone, the state callback ahead of ``CheckpointMarker``,
        and neither rank-0 broadcasting nor the Trainer's own fast-forward on resume."""
        from accelerate.data_loader import IterableDatasetShard

        trainer.train_dataset = self.dataset
        trainer.args.ignore_data_skip = True
        trainer.accelerator.dataloader_config.dispatch_batches = False
        trainer.data_collator = StreamCollator(trainer.data_collator)
        callbacks = trainer.callback_handler.callbacks
        at = next((i for i, c in enumerate(callbacks) if isinstance(c, CheckpointMarker)), len(callbacks))
        callbacks.insert(at, self.callback)
        original, tracker = trainer.get_train_dataloader, self.tracker

        def get_train_dataloader() -> StreamLoader:
            loader = original()
            shard = getattr(loader, "dataset", None)
            if isinstance(shard, IterableDatasetShard):  # the stream is rank-sharded already
                shard.num_processes, shard.process_index = 1, 0
            return StreamLoader(loader, tracker)

        trainer.get_train_dataloader = get_train_dataloader


def _no_rows() -> Iterator[dict[str, Any]]:
    """One empty row of the collator's columns: TRL's constructor peeks at a sample (never trained on)."""
    yield {"where": "", "text": "", "media": [], "input_ids": [], "loss_mask": []}


def open_stream(cfg: Any, renderer: Any, training: dict[str, Any], checkpoint: str | None) -> StreamRun:
    """The train stream of this rank, resumed from ``checkpoint``'s stream state when given."""
    require_max_steps(training)
    pack_buffer = int(cfg.data.get("pack_buffer", 256)) if cfg.data.packing else 0
    if cfg.data.packing and pack_buffer < 1:
        raise ConfigError(f"data.pack_buffer={pack_buffer}: packing a stream needs a window of at least 1 row "
                          "(a few hundred pack well); set data.pack_buffer=256")
    rank, world = stream_rank()
    workers = int(training.get("dataloader_num_workers", 0) or 0)
    rows = StreamDataset(cfg, renderer, list(cfg.data.train), rank=rank, world_size=world)
    tracker = StreamTracker(rank=rank, world_size=world, num_workers=workers,
                            shards=[s.path for s in rows.shards], seed=rows.seed, shuffle_buffer=rows.buffer,
                            pack_buffer=pack_buffer, pack_max_length=int(cfg.data.max_length) if pack_buffer else 0)
    rows.start, rows.rotation = load_state(checkpoint, tracker)
    dataset: StreamDataset | PackedStream = rows
    if pack_buffer:  # packs of whole rows from windows of pack_buffer rows (vlmtrain/pack/stream.py)
        rows.start = {w: (e, p) for w, (e, p, _) in tracker.windows.items()}
        dataset = PackedStream(rows, pack_buffer, int(cfg.data.max_length),
                               skip={w: k for w, (_, _, k) in tracker.windows.items()})
    log.info("train stream (rank %d of %d): %d shard(s), %d dataloader worker(s), shuffle buffer %d%s", rank, world,
             len(rows.shards), workers, rows.buffer,
             f", packed {pack_buffer} rows at a time into <= {cfg.data.max_length} tokens" if pack_buffer else "")
    return StreamRun(dataset, tracker, StreamStateCallback(tracker))


__all__ = ["ROW_LISTENERS", "STATE_FILE", "STREAM_MARKER", "StreamCollator", "StreamLoader", "StreamRun",
           "StreamTracker", "load_state", "open_stream", "require_max_steps"]
