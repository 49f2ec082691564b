"""Benchmark — packing: padded vs packed vs TRL's collator, training the same rows, same run.

A variable-length multimodal mix (1-4 images, 1-4 turns, short and long answers) on the tiny Qwen2-VL model:
one epoch of forward + backward + SGD step per arm (the fastest of ``--repeats``, arms interleaved), on the
same cached rows, with micro-batch tensors of the same size:

- padded: vlmtrain's ``CompletionOnlyCollator``, ``--batch`` rows per micro-batch, padded to the longest;
- packed: ``data.packing``'s plan (best-fit-decreasing into ``max_length`` = the longest row), ``--batch``
  packs per micro-batch, no padding inside a pack;
- TRL: ``DataCollatorForVisionLanguageModeling`` on messages + images, ``--batch`` rows per micro-batch.

Figures: non-pad share of the token grid (target packed >= 95%), trained tokens/s (the sampled tokens the
rows train, the same count for every arm, per second of wall time on CUDA and of process CPU time on the
CPU, where other processes share the cores; targets packed >= 1.5x padded and >= 1.5x TRL), peak memory (CUDA:
``max_memory_allocated``; CPU: the largest micro-batch grid, batch x length, as a proxy — RSS is process-wide).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch


def _epoch(model: Any, batches: list[Any], collate: Any, device: str) -> dict[str, float]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    real = grid = 0
    peak_grid = 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter() if device == "cuda" else time.process_time()  # CPU: immune to neighbours
    for items in batches:
        batch = collate(items)
        ids = batch["input_ids"]
        if "vlmtrain_packed" in batch:  # packs: every row's tokens are real, only pack tails pad
            real += sum(len(row["input_ids"]) for pack in items for row in pack)
        else:
            real += int((batch["attention_mask"] == 1).sum())
        grid += ids.numel()
        peak_grid = max(peak_grid, ids.numel())
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["use_cache"] = False
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() if device == "cuda" else time.process_time()) - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float(peak_grid)
    return {"seconds": seconds, "non_pad": real / grid, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per arm, interleaved; the fastest counts")
    args = parser.parse_args()
    common.quiet()
    from transformers import AutoModelForImageTextToText
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtrain.collate import CompletionOnlyCollator
    from vlmtrain.config import load_config
    from vlmtrain.pack import PackedDataset, PackingCollator
    from vlmtrain.pack.guard import find_rope_index, install

    model_dir = common.tiny_model(with_model=True)
    folder = common.WORK / "packing"
    pool = common.image_pool(folder / "images", common.SMALL_SIZES)
    rows = common.synth_rows(args.rows, pool, seed=2, images=(1, 4), turns=(1, 4))
    data = common.write_dataset(folder, rows)
    config = common.fit_config(folder / "fit.yaml", model_dir=model_dir, data=data, cache_dir=folder / "cache",
                               output_dir=folder / "out", steps=1, batch=args.batch)
    cfg = load_config(config)
    renderer = common.make_renderer(model_dir)
    cached = common.prepare(cfg, renderer).dataset
    lengths = list(cached["length"])
    trained = int(sum(cached["num_trained"]))
    table = common.trainer_rows(cached)
    max_length = max(lengths)
    packed_rows = PackedDataset(table, lengths, max_length, seed=0)

    def load() -> Any:
        torch.manual_seed(0)
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        return AutoModelForImageTextToText.from_pretrained(model_dir, attn_implementation=args.attn,
                                                           dtype=dtype).to(args.device).train()

    single = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    trl_collator = DataCollatorForVisionLanguageModeling(renderer.chat.processing_class)
    trl_table = __import__("bench_collate").trl_table(rows, folder)
    by_rows = [list(range(i, min(len(rows), i + args.batch))) for i in range(0, len(rows), args.batch)]
    by_packs = [list(range(i, min(len(packed_rows), i + args.batch)))
                for i in range(0, len(packed_rows), args.batch)]
    results: dict[str, dict[str, float]] = {}
    for _, arm in [(r, a) for r in range(args.repeats) for a in ("padded", "packed", "trl")]:  # interleaved
        model = load()
        previous = results.get(arm)
        if arm == "padded":
            results[arm] = _epoch(model, [table.__getitems__(b) for b in by_rows], single, args.device)
        elif arm == "packed":
            tokenizer = renderer.chat.tokenizer
            collate = PackingCollator(single, "mrope", tokenizer.pad_token_id, rope_index=find_rope_index(model),
                                      flat="flash" in args.attn)
            install(model, "mrope")
            results[arm] = _epoch(model, [[packed_rows[i] for i in b] for b in by_packs], collate, args.device)
        else:
            results[arm] = _epoch(model, [trl_table.__getitems__(b) for b in by_rows], trl_collator, args.device)
        if previous is not None and previous["seconds"] < results[arm]["seconds"]:  # the fastest repeat
            results[arm] = previous
    for r in results.values():
        r["tokens_per_s"] = trained / r["seconds"]
    stats = packed_rows.stats
    unit = "MiB" if args.device == "cuda" else "grid tokens"
    print(f"rows {len(rows)}, lengths {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}), "
          f"trained tokens {trained}; {stats.line()}; batch {args.batch}, {args.device}, {args.attn}")
    print(f"| arm | non-pad share | trained tokens/s | vs padded | vs TRL | peak memory ({unit}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arm, r in results.items():
        print(f"| {arm} | {100 * r['non_pad']:.1f}% | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / results['padded']['tokens_per_s']:.2f}x | "
              f"{r['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}x | {r['peak']:,.0f} |")
    p = results["packed"]
    print(f"SUMMARY packing: non-pad {100 * p['non_pad']:.1f}% (target >= 95%), "
          f"{p['tokens_per_s'] / results['padded']['tokens_per_s']:.2f}x padded, "
          f"{p['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}x TRL (targets >= 1.5x)")


if __name__ == "__main__":
    main()
