"""``data.packing: true`` with ``data.streaming: true``: each dataloader worker packs windows of
``data.pack_buffer`` rendered rows (best-fit decreasing, whole rows, <= ``data.max_length`` tokens) through the
packing collator; every row of an epoch lands in exactly one pack, and a resumed stream continues exactly."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_stream import all_rows, stream_cfg, write_shards

from vlmtrain.config import load_config
from vlmtrain.data.packing import plan_packs
from vlmtrain.data.stream import StreamDataset
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.pack import PACK_MARKER
from vlmtrain.pack.setup import packing_collator
from vlmtrain.pack.stream import PackedStream
from vlmtrain.train import streaming
from vlmtrain.train.streaming import STATE_FILE, StreamCollator, StreamTracker, load_state

MAX_LENGTH = 160  # the tiny Qwen2-VL rows here are ~40-80 tokens: two or three to a pack


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


@pytest.fixture(scope="module")
def renderer(qwen_model: Path) -> Any:
    return make_renderer(load_config(None, [f"model.name_or_path={qwen_model}"]))


@pytest.fixture(scope="module")
def collator(qwen_model: Path, renderer: Any) -> Any:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(qwen_model, dtype=torch.float32)
    return packing_collator(model, renderer, "mrope", "sdpa")[0]


def packed_cfg(model: Path, data: Path, tmp_path: Path, *overrides: str) -> Any:
    return stream_cfg(model, data, tmp_path, "data.packing=true", f"data.max_length={MAX_LENGTH}",
                      "data.pack_buffer=5", *overrides)


class SizedPacking:
    """The packing collator, also reporting how many rows each pack holds (for the test's bookkeeping)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, packs: list[list[dict[str, Any]]]) -> dict[str, Any]:
        return {**self.inner(packs), "_sizes": [len(p) for p in packs]}


def consume_packs(cfg: Any, renderer: Any, collator: Any, rank: int, world: int, workers: int, batches: int,
                  tracker: StreamTracker | None = None) -> tuple[list[list[tuple[int, str]]], StreamTracker]:
    """``batches`` batches of 2 packs of one rank through real DataLoader workers, the packing collator and the
    stream wrapper, recorded by the tracker as the trainer's would be: per pack, the (epoch, where) of its rows.
    Given a ``tracker`` restored from a saved state, the stream resumes where that state says."""
    rows = StreamDataset(cfg, renderer, list(cfg.data.train), rank=rank, world_size=world)
    if tracker is None:
        tracker = StreamTracker(rank, world, workers, [s.path for s in rows.shards], rows.seed, rows.buffer,
                                pack_buffer=int(cfg.data.pack_buffer), pack_max_length=MAX_LENGTH)
    rows.start = {w: (e, p) for w, (e, p, _) in tracker.windows.items()}
    rows.rotation = tracker.batches % max(1, workers)
    dataset = PackedStream(rows, int(cfg.data.pack_buffer), MAX_LENGTH,
                           skip={w: k for w, (_, _, k) in tracker.windows.items()})
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers,
                                         collate_fn=StreamCollator(SizedPacking(collator)))
    seen: list[list[tuple[int, str]]] = []
    for n, batch in enumerate(loader):
        marker = batch.pop(streaming.STREAM_MARKER)
        tracker.consume(marker)
        assert batch["input_ids"].shape[1] <= MAX_LENGTH and batch["labels"].ne(-100).any()
        start = 0
        for segments, size in zip(batch[PACK_MARKER].lengths, batch.pop("_sizes"), strict=True):
            assert sum(segments[:size]) <= MAX_LENGTH, "a pack holds at most data.max_length tokens"
            seen.append([(int(marker["tags"][i][1]), marker["where"][i]) for i in range(start, start + size)])
            start += size
        if n + 1 == batches:
            break
    return seen, tracker


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 2)], ids=["one-rank", "two-ranks"])
def test_every_row_of_an_epoch_is_in_exactly_one_pack(renderer, qwen_model, collator, tmp_path, world, workers):
    """3 shards of 5 rows, 2 dataloader workers (and 2 ranks): over the emitted packs every row of epoch 0 and of
    epoch 1 appears exactly once, packs hold several rows but never more than data.max_length tokens, and no pack
    mixes epochs."""
    data = write_shards(tmp_path / "data")
    cfg = packed_cfg(qwen_model, data, tmp_path)
    packs = [p for rank in range(world) for p in consume_packs(cfg, renderer, collator, rank, world, workers, 12)[0]]
    assert max(len(p) for p in packs) >= 2, "rows are really packed together"
    assert all(len({e for e, _ in p}) == 1 for p in packs), "a pack never spans two epochs"
    for epoch in (0, 1):
        rows = [where for p in packs for e, where in p if e == epoch]
        assert Counter(rows) == Counter(all_rows(data)), f"epoch {epoch}"


def test_a_resumed_packed_stream_continues_exactly(renderer, qwen_model, collator, tmp_path):
    """Stopped mid-window after 3 batches, the tracker's state written and read back as a checkpoint's: the
    resumed stream's packs are exactly the uninterrupted stream's next ones (across an epoch boundary)."""
    data = write_shards(tmp_path / "data")
    cfg = packed_cfg(qwen_model, data, tmp_path)
    full, _ = consume_packs(cfg, renderer, collator, 0, 1, 2, batches=10)
    first, tracker = consume_packs(cfg, renderer, collator, 0, 1, 2, batches=3)
    assert first == full[:6]
    assert any(k > 0 and p > 0 for _, p, k in tracker.windows.values()), "resumes inside a later window"
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / STATE_FILE.format(rank=0)).write_text(json.dumps(tracker.state()))
    restored = StreamTracker(0, 1, 2, tracker.shards, tracker.seed, tracker.shuffle_buffer,
                             pack_buffer=tracker.pack_buffer, pack_max_length=MAX_LENGTH)
    load_state(str(checkpoint), restored)
    assert restored.windows == tracker.windows
    rest, _ = consume_packs(cfg, renderer, collator, 0, 1, 2, batches=7, tracker=restored)
    assert first + rest == full, "no row repeated, none skipped"
    assert len({e for p in full for e, _ in p}) >= 2, "the runs cross an epoch boundary"


def test_a_state_saved_with_another_pack_buffer_is_refused(tmp_path):
    from vlmtrain.train.resume import ResumeError

    saved = StreamTracker(0, 1, 2, ["a.jsonl"], 0, 4, pack_buffer=5, pack_max_length=MAX_LENGTH)
    (tmp_path / STATE_FILE.format(rank=0)).write_text(json.dumps(saved.state()))
    with pytest.raises(ResumeError, match="pack_buffer 5, now 8"):
        load_state(str(tmp_path), StreamTracker(0, 1, 2, ["a.jsonl"], 0, 4, pack_buffer=8,
                                                pack_max_length=MAX_LENGTH))


_FIT = ("training.max_steps=4", "training.save_steps=2", "training.per_device_train_batch_size=2",
        "training.learning_rate=1e-3", "training.logging_steps=1", "training.report_to=none",
        "training.dataloader_num_workers=2", "training.warmup_steps=1")


def _fit(cfg: Any) -> tuple[Any, list[list[str]]]:
    from vlmtrain.train.fit import fit

    batches: list[list[str]] = []
    streaming.ROW_LISTENERS.append(batches.append)
    try:
        result = fit(cfg)
    finally:
        streaming.ROW_LISTENERS.remove(batches.append)
    return result, batches


@pytest.mark.slow
def test_fit_streams_packs_and_resumes_them(qwen_model, tmp_path):
    """A real fit, streaming + packing with 2 dataloader workers: finite losses, the checkpoint's stream state
    names the pack window, and a run resumed from step 2 takes exactly the rows of the uninterrupted run's
    steps 3-4 and ends with the same weights."""
    data = write_shards(tmp_path / "data")
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    result, full = _fit(packed_cfg(qwen_model, data, tmp_path, *_FIT, f"training.output_dir={full_dir}"))
    assert result.steps == 4 and math.isfinite(result.first_loss) and math.isfinite(result.final_loss)
    assert len(full) == 4 and sum(len(b) for b in full) > 4 * 2, "batches of 2 packs hold more than 2 rows"
    state = json.loads((full_dir / "checkpoint-2" / STATE_FILE.format(rank=0)).read_text())
    assert state["pack_buffer"] == 5 and all("packs" in w for w in state["workers"].values())

    resumed_dir.mkdir()
    shutil.copytree(full_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    _, rest = _fit(packed_cfg(qwen_model, data, tmp_path, *_FIT, f"training.output_dir={resumed_dir}",
                              "training.resume_from_checkpoint=true"))
    assert rest == full[2:], "the resumed run continues the packed stream: no row repeated, none skipped"
    a, b = load_file(str(full_dir / "model.safetensors")), load_file(str(resumed_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_fit_packed_stream_takes_the_same_first_step_as_padded(qwen_model, renderer, tmp_path):
    """The first 4 rows of a stream (storage order, no workers): one SGD step on them padded (batch 4) and packed
    (one window of 4 rows, two to a pack, one pack per micro-batch, accumulated over every pack) gives the same
    loss and the same weights."""
    from transformers import AutoModelForImageTextToText

    data = write_shards(tmp_path / "data", shards=1, rows=4)
    base = ("training.max_steps=1", "training.optim=sgd", "training.learning_rate=1.0",
            "training.lr_scheduler_type=constant", "training.weight_decay=0.0", "training.max_grad_norm=0.0",
            "training.logging_steps=1", "training.save_strategy='no'", "training.report_to=none",
            "data.shuffle_buffer=0")
    probe = stream_cfg(qwen_model, data, tmp_path, *base)
    lengths = [len(r["input_ids"]) for r, _ in zip(StreamDataset(probe, renderer, list(probe.data.train)),
                                                   range(4), strict=False)]
    longest = sorted(lengths)[-1] + sorted(lengths)[-2]  # room for any two of the rows
    packs = len(plan_packs(lengths, longest))
    assert 2 <= packs < 4, "the test needs packs of several rows"
    padded, _ = _fit(stream_cfg(qwen_model, data, tmp_path, *base, f"data.max_length={longest}",
                                "training.per_device_train_batch_size=4", f"training.output_dir={tmp_path / 'pad'}"))
    packed, _ = _fit(stream_cfg(qwen_model, data, tmp_path, *base, "data.packing=true", "data.pack_buffer=4",
                                f"data.max_length={longest}", "training.per_device_train_batch_size=1",
                                f"training.gradient_accumulation_steps={packs}",
                                f"training.output_dir={tmp_path / 'pack'}"))
    assert packed.first_loss == pytest.approx(padded.first_loss, rel=1e-5)
    start = AutoModelForImageTextToText.from_pretrained(qwen_model).state_dict()
    a = AutoModelForImageTextToText.from_pretrained(tmp_path / "pad").state_dict()
    b = AutoModelForImageTextToText.from_pretrained(tmp_path / "pack").state_dict()
    moved = [n for n in start if not torch.equal(start[n], a[n])]
    assert moved
    for name in moved:
        torch.testing.assert_close(b[name] - start[name], a[name] - start[name], rtol=1e-3, atol=1e-5)
