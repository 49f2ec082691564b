"""``data.streaming: true``: sharded JSONL read as an endless stream, each row exactly once per epoch over ranks x
dataloader workers, a resumed run continuing exactly where its checkpoint left off, bad rows per policy, and
``training.max_steps`` required."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmtrain.collate import CompletionOnlyCollator
from vlmtrain.config import load_config
from vlmtrain.data.stream import StreamDataset
from vlmtrain.errors import ConfigError, DataError
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.train import streaming
from vlmtrain.train.resume import incomplete_reason
from vlmtrain.train.streaming import STATE_FILE, StreamCollator, StreamLoader, StreamTracker


def _row(shard: int, i: int) -> dict[str, Any]:
    """Every third row is text only, so batches mix image and text rows."""
    text = f"shard {shard} row {i}: what is it?"
    if i % 3 == 2:
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": f"Text {i}."}]}
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
                         {"role": "assistant", "content": f"Shape {shard}.{i}."}],
            "images": [f"images/{(shard + i) % 3}.png"]}


def write_shards(folder: Path, shards: int = 3, rows: int = 5, bad: dict[tuple[int, int], str] | None = None) -> Path:
    """``shard-K.jsonl`` files of ``rows`` lines each (``bad[(K, line)]`` replaces a line), images beside them."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k, size in enumerate([(32, 32), (48, 32), (32, 48)]):
        Image.new("RGB", size, (60 * k, 120, 200)).save(folder / "images" / f"{k}.png")
    for s in range(shards):
        lines = [(bad or {}).get((s, i + 1)) or json.dumps(_row(s, i)) for i in range(rows)]
        (folder / f"shard-{s}.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def all_rows(folder: Path, shards: int = 3, rows: int = 5) -> set[str]:
    return {f"{folder / f'shard-{s}.jsonl'}:{i + 1}" for s in range(shards) for i in range(rows)}


def stream_cfg(model: Path, data: Path, tmp_path: Path, *overrides: str) -> Any:
    return load_config(None, [f"model.name_or_path={model}", f"data.train.0.path={data / 'shard-*.jsonl'}",
                              f"data.cache_dir={tmp_path / 'cache'}", "data.max_length=256", "data.streaming=true",
                              "data.shuffle_buffer=4", *overrides])


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


@pytest.fixture(scope="module")
def renderer(qwen_model: Path) -> Any:
    return make_renderer(load_config(None, [f"model.name_or_path={qwen_model}"]))


def consume(cfg: Any, renderer: Any, rank: int, world: int, workers: int, batches: int,
            start: dict | None = None, rotation: int = 0) -> tuple[list[tuple[int, int, int, str]], StreamTracker]:
    """``batches`` batches of one rank through real DataLoader workers and the real collator, as the trainer gets
    them: (worker, epoch, position, where) of every row, and the tracker's record."""
    dataset = StreamDataset(cfg, renderer, list(cfg.data.train), rank=rank, world_size=world, start=start,
                            rotation=rotation)
    collator = StreamCollator(CompletionOnlyCollator(renderer.chat, renderer.media_ids))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collator)
    tracker = StreamTracker(rank, world, workers, [s.path for s in dataset.shards], dataset.seed, dataset.buffer)
    rows: list[tuple[int, int, int, str]] = []
    for n, batch in enumerate(StreamLoader(loader, tracker)):
        assert batch["labels"].ne(-100).any()
        rows.extend((w, e, p, where) for (w, e, p), where in zip(tracker.last_tags, tracker.last_where, strict=True))
        if n + 1 == batches:
            break
    return rows, tracker


@pytest.fixture(autouse=True)
def _record_last_batch(monkeypatch):
    """Let ``consume`` read each batch's tags back from the tracker."""
    original = StreamTracker.consume

    def consume_and_keep(self: StreamTracker, marker: dict) -> None:
        original(self, marker)
        self.last_tags, self.last_where = marker["tags"], marker["where"]

    monkeypatch.setattr(StreamTracker, "consume", consume_and_keep)


@pytest.mark.parametrize("world,workers", [(2, 2), (1, 2)], ids=["rows-round-robin", "whole-files"])
def test_each_row_exactly_once_per_epoch_over_ranks_and_workers(renderer, qwen_model, tmp_path, world, workers):
    """3 shards over 2 ranks x 2 workers (fewer shards than slots: rows round-robin) and over 1 rank x 2 workers
    (whole files per worker): every row of epoch 0 and of epoch 1 is seen exactly once, image and text rows mixed
    in batches, and epoch 1 comes in another order."""
    data = write_shards(tmp_path / "data")
    cfg = stream_cfg(qwen_model, data, tmp_path)
    seen = [consume(cfg, renderer, rank, world, workers, batches=20)[0] for rank in range(world)]
    for epoch in (0, 1):
        rows = [where for rank_rows in seen for _, e, _, where in rank_rows if e == epoch]
        assert Counter(rows) == Counter(all_rows(data)), f"epoch {epoch}"
    per_slot = {(r, w) for r, rank_rows in enumerate(seen) for w, *_ in rank_rows}
    assert len(per_slot) == world * workers, "every rank x worker slot contributes"
    order = {e: [where for w, ep, _, where in seen[0] if ep == e and w == 0] for e in (0, 1)}
    assert order[0] != order[1] and sorted(order[0]) == sorted(order[1])


def test_a_resumed_stream_continues_without_repeating_or_skipping(renderer, qwen_model, tmp_path):
    """Stopping after k batches and restarting from the tracker's state gives exactly the rows the uninterrupted
    stream would have given next (across an epoch boundary, with 2 workers)."""
    data = write_shards(tmp_path / "data")
    cfg = stream_cfg(qwen_model, data, tmp_path)
    full, _ = consume(cfg, renderer, 0, 1, 2, batches=14)
    first, tracker = consume(cfg, renderer, 0, 1, 2, batches=5)
    assert first == full[:10]
    assert tracker.batches == 5
    rest, _ = consume(cfg, renderer, 0, 1, 2, batches=9, start=dict(tracker.positions), rotation=5 % 2)
    assert [r[3] for r in first + rest] == [r[3] for r in full]


def test_bad_rows_stop_naming_file_row_or_are_counted(renderer, qwen_model, tmp_path):
    data = write_shards(tmp_path / "data", bad={(1, 3): "{not json", (2, 2): json.dumps({"messages": []})})
    cfg = stream_cfg(qwen_model, data, tmp_path, "data.shuffle_buffer=0")
    with pytest.raises(DataError) as caught:
        consume(cfg, renderer, 0, 1, 2, batches=20)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert f"{data / 'shard-1.jsonl'}:3: malformed JSON" in message or f"{data / 'shard-2.jsonl'}:2:" in message

    cfg = stream_cfg(qwen_model, data, tmp_path, "data.shuffle_buffer=0", "data.on_bad_row=skip")
    rows, tracker = consume(cfg, renderer, 0, 1, 2, batches=20)
    epoch0 = [where for _, e, _, where in rows if e == 0]
    assert set(epoch0) == all_rows(data) - {f"{data / 'shard-1.jsonl'}:3", f"{data / 'shard-2.jsonl'}:2"}
    assert tracker.report.dropped["malformed JSON"] >= 1 and tracker.report.dropped["malformed row"] >= 1
    assert any("shard-1.jsonl:3" in m for m in tracker.report.examples["malformed JSON"])
    assert any("rows dropped (malformed JSON)" in line for line in tracker.report.lines())


def test_max_steps_and_unsupported_settings_are_one_line_errors(qwen_model, tmp_path):
    from vlmtrain.train.fit import fit

    data = write_shards(tmp_path / "data")
    base = [f"training.output_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"data.streaming: true needs training.max_steps"):
        fit(stream_cfg(qwen_model, data, tmp_path, *base))
    with pytest.raises(ConfigError, match=r"data.pack_buffer=0: packing a stream needs a window"):
        fit(stream_cfg(qwen_model, data, tmp_path, *base, "training.max_steps=2", "data.packing=true",
                       "data.pack_buffer=0"))
    with pytest.raises(DataError, match=r"data.train\[0\].path .*matches no files"):
        fit(stream_cfg(qwen_model, tmp_path / "nowhere", tmp_path, *base, "training.max_steps=2"))


_FIT = ("training.max_steps=6", "training.save_steps=3", "training.per_device_train_batch_size=2",
        "training.learning_rate=1e-3", "training.logging_steps=1", "training.report_to=none",
        "training.dataloader_num_workers=2", "training.warmup_steps=2")


def _fit_rows(cfg: Any) -> list[list[str]]:
    from vlmtrain.train.fit import fit

    batches: list[list[str]] = []
    streaming.ROW_LISTENERS.append(batches.append)
    try:
        fit(cfg)
    finally:
        streaming.ROW_LISTENERS.remove(batches.append)
    return batches


@pytest.mark.slow
def test_fit_resumes_the_stream_where_the_checkpoint_left_it(qwen_model, tmp_path):
    """A real fit (2 dataloader workers) stopped at step 3's checkpoint and resumed: the rows the collator got
    after resuming are exactly the uninterrupted run's steps 4-6, and the weights end equal."""
    data = write_shards(tmp_path / "data")
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = _fit_rows(stream_cfg(qwen_model, data, tmp_path, *_FIT, f"training.output_dir={full_dir}"))
    assert [len(b) for b in full] == [2] * 6
    checkpoint = full_dir / "checkpoint-3"
    assert incomplete_reason(checkpoint) is None
    state = json.loads((checkpoint / STATE_FILE.format(rank=0)).read_text())
    assert state["rows_consumed"] == 6 and state["num_workers"] == 2
    assert "stream_state_rank0.json" in json.loads((checkpoint / "vlmtrain_checkpoint.json").read_text())["files"]

    resumed_dir.mkdir()
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-3")
    rest = _fit_rows(stream_cfg(qwen_model, data, tmp_path, *_FIT, f"training.output_dir={resumed_dir}",
                                "training.resume_from_checkpoint=true"))
    assert rest == full[3:], "the resumed run continues the stream: no row repeated, none skipped"
    a, b = load_file(str(full_dir / "model.safetensors")), load_file(str(resumed_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_torchrun_two_ranks_each_consume_their_own_share(qwen_model, tmp_path):
    """Under real torchrun (2 CPU processes), each rank reads its own half of 4 shards: after 4 steps of 2 rows,
    both ranks have consumed exactly their whole epoch-0 share (accelerate neither broadcasts rank 0's batches nor
    re-slices the stream), and the state files say so."""
    data = write_shards(tmp_path / "data", shards=4, rows=4)
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"model: {{name_or_path: {qwen_model}}}\n"
        f"data: {{train: [{{path: '{data}/shard-*.jsonl'}}], streaming: true, shuffle_buffer: 4,\n"
        f"       cache_dir: {tmp_path / 'cache'}, max_length: 256}}\n"
        f"training: {{output_dir: {out}, max_steps: 4, save_steps: 4, per_device_train_batch_size: 2,\n"
        "           logging_steps: 1, report_to: none}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vlmtrain", "fit", str(config), "--nproc-per-node", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        state = json.loads((out / "checkpoint-4" / STATE_FILE.format(rank=rank)).read_text())
        assert state["world_size"] == 2 and state["rows_consumed"] == 8
        assert state["workers"] == {"0": {"epoch": 0, "position": 8}}, rank


def test_a_pretraining_stream_of_pages_is_tiled_like_the_cached_path(qwen_model, tmp_path):
    """Multimodal CPT at scale: a sharded pretraining stream with data.image_transform renders each page as its
    overview + grid tiles (as the cached path does), and the collator's id check passes on the tiled rows."""
    from test_tiling import GRID, TILE, page

    folder = tmp_path / "pages"
    size, cols, rows = GRID["landscape"]
    page(folder / "p.png", size)
    for s in range(2):
        (folder / f"shard-{s}.jsonl").write_text(json.dumps({"text": f"<image> page {s} reads fine",
                                                             "images": ["p.png"]}) + "\n")
    cfg = stream_cfg(qwen_model, folder, tmp_path, "data.train.0.format=pretrain",
                     "data.train.0.image_placeholder=<image>", "data.image_transform.type=tiling",
                     f"data.image_transform.tile_size={TILE}")
    renderer = make_renderer(cfg)
    dataset = StreamDataset(cfg, renderer, list(cfg.data.train), rank=0, world_size=1)
    items = []
    for item in dataset:
        assert "_error" not in item, item
        items.append(item)
        if len(items) == 2:
            break
    assert all(len(item["media"]) == 1 + cols * rows for item in items)
    assert all((m["width"], m["height"]) == (TILE, TILE) for item in items for m in item["media"])
    batch = StreamCollator(CompletionOnlyCollator(renderer.chat, renderer.media_ids))(items)
    assert batch["image_grid_thw"].shape[0] == 2 * (1 + cols * rows) and batch["labels"].ne(-100).any()
