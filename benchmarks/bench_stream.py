"""Benchmark — streaming vs the cached path: rows per second into the collator, the same rows.

The same synthetic conversations (1-4 images, 1-4 turns, on the tiny Qwen2-VL processor) are written as
``--shards`` JSONL shards and read three ways, each until every row has gone through the real collator once:

- stream: ``data.streaming`` — read, validated, rendered and masked on the fly in ``--workers`` DataLoader
  workers, then collated (what ``fit`` does with a stream);
- cached, cold: ``prepare_split`` (read, render, mask, write the Arrow cache) and then the collator over it;
- cached, warm: the collator over the cache alone (a cache hit: what every later run pays).

The stream should be close to the cold cached path per row (the same render work, spread over workers) and
needs no preprocessing pass; the warm cache is the floor (collate only).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import common
from common import Figure, Report


def shards(folder: Path, rows: int, count: int) -> Path:
    pool = common.image_pool(folder / "images", common.SMALL_SIZES)
    data = common.synth_rows(rows, pool, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        common.write_dataset(folder, data[k::count], name=f"shard-{k}.jsonl")
    return folder


def collate_all(loader: Any) -> int:
    rows = 0
    for batch in loader:
        rows += int(batch["input_ids"].shape[0])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    common.quiet()
    import torch

    from vlmtrain.collate import CompletionOnlyCollator
    from vlmtrain.config import load_config
    from vlmtrain.data.split import prepare_split
    from vlmtrain.data.stream import StreamDataset
    from vlmtrain.mask.pipeline import make_renderer
    from vlmtrain.train.streaming import StreamCollator, StreamLoader, StreamTracker

    report = Report("stream", f"streaming vs cached: rows/s into the collator, {args.rows} rows in {args.shards} "
                              f"shards, {args.workers} workers")
    report.settings = vars(args)
    model_dir = common.tiny_model()
    folder = shards(common.WORK / f"stream-{args.rows}-{args.shards}", args.rows, args.shards)
    cache = common.WORK / "stream-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = load_config(None, [f"model.name_or_path={model_dir}", f"data.train.0.path={folder}/shard-*.jsonl",
                             f"data.cache_dir={cache}", "data.max_length=8192", "data.shuffle_buffer=64"])
    renderer = make_renderer(cfg)
    collator = CompletionOnlyCollator(renderer.chat, renderer.media_ids)

    # stream: exactly one epoch's rows (the stream itself is endless)
    dataset = StreamDataset(cfg, renderer, list(cfg.data.train))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=args.workers,
                                         collate_fn=StreamCollator(collator))
    tracker = StreamTracker(0, 1, args.workers, [s.path for s in dataset.shards], dataset.seed, dataset.buffer)
    start, seen = time.perf_counter(), 0
    for batch in StreamLoader(loader, tracker):
        seen += int(batch["input_ids"].shape[0])
        if seen >= args.rows:
            break
    stream_s = time.perf_counter() - start

    # cached: the same shards through the cache (one source per shard: the cached path reads no globs)
    cached_cfg = load_config(None, [f"model.name_or_path={model_dir}", f"data.cache_dir={cache}",
                                    "data.max_length=8192", *(f"data.train.{k}.path={folder}/shard-{k}.jsonl"
                                                              for k in range(args.shards))])
    start = time.perf_counter()
    result = prepare_split(cached_cfg, renderer, "train", num_proc=args.workers)
    build_s = time.perf_counter() - start
    rows = common.trainer_rows(result.dataset)
    start = time.perf_counter()
    collated = collate_all(torch.utils.data.DataLoader(rows, batch_size=args.batch, num_workers=args.workers,
                                                       collate_fn=collator))
    warm_s = time.perf_counter() - start
    assert collated == len(rows) == args.rows, (collated, len(rows))

    stream_rate, cold_rate, warm_rate = seen / stream_s, args.rows / (build_s + warm_s), args.rows / warm_s
    report.add(Figure("stream rows/s", stream_rate, "rows/s", cold_rate, stream_rate / cold_rate,
                      note="render + collate on the fly vs cached cold (preprocess + collate)"))
    report.add(Figure("cached warm rows/s", warm_rate, "rows/s", note="collate only (cache hit)"))
    report.note(f"stream {stream_s:.1f} s; cached cold: build ({args.workers} processes) {build_s:.1f} s + collate "
                f"{warm_s:.1f} s")
    shutil.rmtree(cache, ignore_errors=True)
    report.finish(f"stream {stream_rate:.1f} rows/s vs cached cold {cold_rate:.1f} rows/s "
                  f"({stream_rate / cold_rate:.2f}x), warm cache {warm_rate:.1f} rows/s")


if __name__ == "__main__":
    main()
