"""Packed training across ranks: the loss stays the exact token mean of the whole effective batch.

Two CPU processes (torchrun, gloo) with ``data.packing: true`` take the same SGD step as one process on the
same packs, and as padded training on the same rows, although each rank trains a different number of tokens
(a mean of per-rank means would differ). With an odd number of packs, accelerate's sampler would repeat a pack
on one rank to even the ranks out; the repeat must train nothing (a filler pack), never count its rows twice.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmtrain.config import load_config
from vlmtrain.data.packing import plan_packs
from vlmtrain.tiny import make_shapes_dataset

RANKS = 2
SGD = ("training.max_steps=1", "training.optim=sgd", "training.learning_rate=1.0",
       "training.lr_scheduler_type=constant", "training.weight_decay=0.0", "training.max_grad_norm=0.0",
       "training.logging_steps=1", "training.save_strategy='no'", "training.report_to=none")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=8)


@pytest.fixture(scope="module")
def qwen_model(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


def _overrides(model: Path, data: Path, out: Path, rows: int, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train.0.path={data}", f"data.train.0.image_dir={data.parent}",
            f"data.train.0.max_rows={rows}", f"training.output_dir={out}", *SGD, *extra]


def _rank_splits(trained: list[int], ranks: int) -> list[tuple[int, ...]]:
    """Trained tokens per rank for every way the sampler can deal the packs (padded with empty fillers to a
    multiple of ``ranks``) out in equal shares."""
    items = trained + [0] * (-len(trained) % ranks)
    share = len(items) // ranks
    splits = []
    for first in itertools.combinations(range(len(items)), share):  # two ranks: the first share fixes the other
        rest = [i for i in range(len(items)) if i not in first]
        splits.append((sum(items[i] for i in first), sum(items[i] for i in rest)))
    return splits


def _choose_packs(model: Path, data: Path, tmp: Path, rows: int, odd: bool) -> tuple[int, list[list[int]]]:
    """A max_length whose plan has an odd / even number (>= 2) of packs, and where every dealing of the packs
    gives the two ranks different numbers of trained tokens."""
    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    cfg = load_config(None, _overrides(model, data, tmp / "probe", rows))
    split = load_split(cfg, make_renderer(cfg), "train")
    lengths, trained = list(split["length"]), list(split["num_trained"])
    for max_length in range(max(lengths), sum(lengths) + 1):
        plan = plan_packs(lengths, max_length, seed=int(cfg.data.seed), epoch=0)
        per_pack = [sum(trained[i] for i in pack) for pack in plan]
        if len(plan) >= 2 and len(plan) % 2 == int(odd) and \
                all(a != b for a, b in _rank_splits(per_pack, RANKS)):
            return max_length, plan
    raise AssertionError(f"no max_length gives the packs this test needs (lengths {lengths}, trained {trained})")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "odd"), [(4, False), (5, True)], ids=["even-packs", "odd-packs-filler"])
def test_two_ranks_packed_take_the_single_process_step(rows, odd, qwen_model, shapes, tmp_path) -> None:
    from vlmtrain.train.fit import fit

    max_length, plan = _choose_packs(qwen_model, shapes, tmp_path, rows, odd)
    packs = len(plan)
    packing = ("data.packing=true", f"data.max_length={max_length}", "training.per_device_train_batch_size=1")
    # one step over every pack: 2 ranks x 1 pack x ceil(P/2) accumulation == 1 process x 1 pack x P accumulation
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ddp_out, config = tmp_path / "ddp", tmp_path / "ddp.yaml"
    config.write_text(f"model: {{name_or_path: {qwen_model}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vlmtrain", "fit", str(config), "--nproc-per-node", str(RANKS),
         *_overrides(qwen_model, shapes, ddp_out, rows, *packing,
                     f"training.gradient_accumulation_steps={-(-packs // RANKS)}")],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"processes: {RANKS}" in proc.stderr
    fillers = re.search(r"(\d+) filler packs? \(no trained tokens\)", proc.stderr)
    assert (int(fillers.group(1)) if fillers else 0) == (-packs % RANKS), proc.stderr[-3000:]
    summary = re.search(r"steps: 1  loss: ([0-9.]+)", proc.stdout)
    assert summary, proc.stdout[-2000:]

    single = fit(load_config(None, _overrides(qwen_model, shapes, tmp_path / "single", rows, *packing,
                                              f"training.gradient_accumulation_steps={packs}")))
    padded = fit(load_config(None, _overrides(qwen_model, shapes, tmp_path / "padded", rows,
                                              f"training.per_device_train_batch_size={rows}")))
    assert single.steps == padded.steps == 1
    assert single.first_loss == pytest.approx(padded.first_loss, rel=1e-5)
    assert float(summary.group(1)) == pytest.approx(single.first_loss, abs=1e-4)

    start, ddp = _weights(qwen_model), _weights(ddp_out)
    one, pad = _weights(tmp_path / "single"), _weights(tmp_path / "padded")
    moved = [n for n in start if not torch.equal(start[n], pad[n])]
    assert moved
    for name in moved:
        want = pad[name] - start[name]
        torch.testing.assert_close(one[name] - start[name], want, rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(ddp[name] - start[name], want, rtol=1e-3, atol=1e-5, msg=name)


def _deal(dataset, ranks: int, batch: int) -> list[list[list[dict]]]:
    """The packs each rank gets in one epoch, dealt the way accelerate shards a map-style loader."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch, drop_last=False)
    return [[dataset[i] for b in BatchSamplerShard(sampler, ranks, rank, even_batches=True) for i in b]
            for rank in range(ranks)]


@pytest.mark.parametrize(("ranks", "batch"), [(2, 1), (2, 2), (3, 2)])
def test_every_row_trains_once_per_epoch_across_ranks(ranks, batch) -> None:
    """Packs that ranks x batch do not divide: accelerate repeats items to even the ranks out; the filler
    packs make those repeats train nothing, so every row trains exactly once, and the collator masks them."""
    from vlmtrain.pack import PackingCollator
    from vlmtrain.pack.dataset import FILLER, PackedDataset

    lengths = [9, 8, 7, 6, 5, 4, 3]
    rows = [{"input_ids": list(range(1, n + 1)), "row": i} for i, n in enumerate(lengths)]
    plain = PackedDataset(rows, lengths, max_length=10)
    assert len(plain) % (ranks * batch), "the case needs packs that do not divide evenly"
    dealt = [row["row"] for share in _deal(plain, ranks, batch) for pack in share for row in pack]
    assert len(dealt) > len(rows), "without fillers accelerate repeats packs (rows would train twice)"

    padded = PackedDataset(rows, lengths, max_length=10, multiple=ranks * batch)
    assert padded.fillers == -len(plain) % (ranks * batch) and f"{padded.fillers} filler pack" in \
        padded.filler_line(ranks, batch)
    shares = _deal(padded, ranks, batch)
    trained = [row["row"] for share in shares for pack in share for row in pack if not row.get(FILLER)]
    assert sorted(trained) == list(range(len(rows))), "every row trained exactly once"
    assert len({len(share) for share in shares}) == 1

    def rows_collator(features):  # stands in for CompletionOnlyCollator: every token trained
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features])
        assert not any(FILLER in f for f in features), "the row collator never sees the filler flag"
        return {"input_ids": ids, "labels": torch.where(ids > 0, ids, -100), "attention_mask": ids.gt(0).long()}

    collator = PackingCollator(rows_collator, "position_ids", pad_id=0)
    filler = padded[len(padded) - 1]
    out = collator([filler, padded[0]])
    n = sum(len(r["input_ids"]) for r in filler)
    assert out["labels"][0].eq(-100).all() and out["input_ids"][0, :n].gt(0).all(), "filler runs, trains nothing"
    assert out["labels"][1].ne(-100).any()
