"""Benchmark 3 — training throughput and peak memory: `vlmtrain fit` vs a plain TRL SFTTrainer.

Same model, rows, batch, steps, seed, optimizer and gradient-checkpointing settings (TRL's SFTConfig turns
checkpointing on by default, and vlmtrain passes its ``training`` section to SFTConfig, so both are set
explicitly); each run in a fresh process
(``fit_probe.py``), vlmtrain from a warm preprocess cache (built before the timed runs), TRL with its default
VLM collator (``DataCollatorForVisionLanguageModeling``: renders and tokenizes each batch on the fly).
Throughput = non-pad tokens through forward+backward per second, the median of per-step rates after the
warm-up (both runs see the same batches in the same order — same rows, sampler and seed; vlmtrain puts the loss
on the sampled tokens, TRL's default on all of them).
Peak memory = the process's peak RSS, plus CUDA max allocated on a GPU. Target: vlmtrain/TRL >= 1.0.

On a GPU machine: ``--device cuda --dtype bfloat16 --size real`` trains a random-init model with the
Qwen2-VL-2B architecture (text: hidden 1536, 28 layers; vision: 32 blocks of width 1280; nothing is
downloaded) on larger images and reports MFU = 6 * params * tokens/s / peak FLOP/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import common
from common import Figure, Report, median, spread

REAL_TEXT = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
REAL_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
REAL_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}


def real_model(out: Path, tiny_dir: Path, dtype: str, device: str) -> Path:
    """A random-init Qwen2-VL-2B-architecture model + a processor with the real image settings (patch 14,
    merge 2), around the tiny tokenizer and the real chat template. Written once to ``out``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLConfig

    marker = out / "bench_real.json"
    if marker.exists():
        return out
    processor = AutoProcessor.from_pretrained(tiny_dir)
    image = processor.image_processor
    image.patch_size, image.merge_size, image.temporal_patch_size = 14, 2, 2
    image.size = dict(REAL_PIXELS)
    for name in ("min_pixels", "max_pixels"):  # older processors keep these beside `size`
        if hasattr(image, name):
            setattr(image, name, REAL_PIXELS["shortest_edge" if name == "min_pixels" else "longest_edge"])
    processor.save_pretrained(out)
    raw = json.loads((tiny_dir / "config.json").read_text())
    raw["text_config"].update(REAL_TEXT, layer_types=["full_attention"] * REAL_TEXT["num_hidden_layers"])
    raw["vision_config"].update(REAL_VISION)
    raw["tie_word_embeddings"] = True  # as Qwen2-VL-2B
    raw.pop("dtype", None)
    config = Qwen2VLConfig.from_dict(raw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the timed runs are other processes
    marker.write_text(json.dumps({"text": REAL_TEXT, "vision": REAL_VISION}))
    return out


def throughput(probe: dict[str, Any], warmup: int) -> tuple[float, float, float, float]:
    """(tokens/s, trained tokens/s, median step seconds, vision patches/s) over the steps after ``warmup``.

    Rates are medians of per-step rates: a neighbour's burst on a shared 2-core machine stalls a few steps
    by seconds, which would swamp a total-time average.
    """
    steps, tokens, trained = probe["steps"], probe["tokens"], probe["trained"]
    if len(steps) <= warmup + 1:
        raise RuntimeError(f"only {len(steps)} steps recorded; raise --steps above --warmup")
    durations = [b - a for a, b in zip(steps[warmup:], steps[warmup + 1:], strict=False)]
    patches = probe.get("patches") or [0] * len(tokens)
    return (median([n / d for n, d in zip(tokens[warmup + 1:], durations, strict=True)]),
            median([n / d for n, d in zip(trained[warmup + 1:], durations, strict=True)]), median(durations),
            median([n / d for n, d in zip(patches[warmup + 1:], durations, strict=True)]))


STAGES = (  # per-step stages of a training loop, as cProfile names them: (label, [(path fragment, function)])
    ("row fetch (dataloader)", [("arrow_dataset.py", "__getitems__")]),
    ("collate", [("vlmtrain/collate.py", "__call__"), ("trl/trainer/sft_trainer.py", "torch_call")]),
    ("forward + loss", [("trl/trainer/sft_trainer.py", "compute_loss")]),
    ("backward", [("accelerate/accelerator.py", "backward")]),
    ("optimizer step", [("accelerate/optimizer.py", "step")]),
    ("whole loop", [("transformers/trainer.py", "_inner_training_loop")]),
)


def stage_profile(folder: Path, runs: dict[str, list[str]], steps: int) -> list[str]:
    """One profiled run of each; milliseconds per step in each stage, side by side, and the top entries."""
    import pstats

    per_step: dict[str, dict[str, float]] = {}
    lines = []
    for who, run_args in runs.items():
        target = folder / f"{who}.prof"
        common.run_probe(run_args, folder / f"{who}-profiled.json", timeout=900, profile_to=target)
        stats = pstats.Stats(str(target))
        per_step[who] = {label: 1e3 * common.cumulative(stats, *where) / steps for label, where in STAGES}
        lines += [f"  {who} profile:", *("    " + line for line in common.summarize(stats).lines(5))]
    head = [f"ms per step under cProfile ({steps} steps; profiling inflates Python-heavy stages):",
            f"  {'stage':24} {'vlmtrain':>9} {'TRL':>9}"]
    head += [f"  {label:24} {per_step['vlmtrain'][label]:9.1f} {per_step['trl'][label]:9.1f}" for label, _ in STAGES]
    return head + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--size", default="tiny", choices=("tiny", "real"))
    parser.add_argument("--attn", default="sdpa", help="attn_implementation for both (sdpa, flash_attention_2)")
    parser.add_argument("--gradient-checkpointing", default="true", choices=("true", "false"),
                        help="for both runs (TRL's SFTConfig default: true)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers for both (default: 0, as TRL)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: 4 tiny, 8 real)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--profile", action="store_true", help="profile one run of each even if the target is met")
    parser.add_argument("--peak-flops", type=float, default=989e12,
                        help="peak FLOP/s for MFU (default: H100 SXM bf16 dense)")
    args = parser.parse_args()
    batch = args.batch or (8 if args.size == "real" else 4)
    name = "train" if args.size == "tiny" and args.device == "cpu" else f"train-{args.size}-{args.device}"
    name += f"-workers{args.workers}" if args.workers else ""
    report = Report(name, f"training throughput, {args.size} Qwen2-VL, {args.device} {args.dtype}, {args.attn}, "
                          f"batch {batch}, {args.steps} steps, gradient checkpointing {args.gradient_checkpointing}, "
                          f"{args.workers} dataloader workers")
    report.settings = {k: v for k, v in vars(args).items()} | {"batch": batch}
    common.quiet()
    from vlmtrain.config import load_config

    tiny = common.tiny_model(with_model=args.size == "tiny")
    model_dir = tiny if args.size == "tiny" else real_model(common.WORK / "real-qwen2_vl", tiny, args.dtype,
                                                           args.device)
    folder = common.WORK / name
    sizes = common.SMALL_SIZES if args.size == "tiny" else common.REAL_SIZES
    pool = common.image_pool(folder / "images", sizes)
    data = common.write_dataset(folder, common.synth_rows(args.rows, pool, seed=2))
    extra = {"model.dtype": args.dtype, "model.attn_implementation": args.attn,
             "training.bf16": args.dtype == "bfloat16",
             "training.gradient_checkpointing": args.gradient_checkpointing == "true",
             "training.dataloader_num_workers": args.workers}
    config = common.fit_config(folder / "fit.yaml", model_dir=model_dir, data=data, cache_dir=folder / "cache",
                               output_dir=folder / "out", steps=args.steps, batch=batch, extra=extra)
    cfg = load_config(config)
    common.prepare(cfg, common.make_renderer(model_dir))  # warm cache: the timed runs measure training only

    ours_args = ["vlmtrain", str(config)]
    trl_args = ["trl", "--model", str(model_dir), "--data", str(data), "--output-dir", str(folder / "out-trl"),
                "--steps", str(args.steps), "--batch", str(batch), "--dtype", args.dtype, "--device", args.device,
                "--attn", args.attn, "--gradient-checkpointing", args.gradient_checkpointing,
                "--workers", str(args.workers)]
    probes: dict[str, list[dict[str, Any]]] = {"vlmtrain": [], "trl": []}
    for r in range(args.repeats):
        order = (("vlmtrain", ours_args), ("trl", trl_args))
        for who, run_args in order if r % 2 == 0 else order[::-1]:
            _, probe = common.run_probe(run_args, folder / f"{who}-{r}.json", timeout=900)
            tps, trained, step, pps = throughput(probe, args.warmup)
            probe.update(tps=tps, trained_tps=trained, step_s=step, pps=pps)
            probes[who].append(probe)
            report.note(f"{who} #{r}: {tps:,.0f} tokens/s ({trained:,.0f} trained tokens/s), median step "
                  f"{step * 1e3:.0f} ms, peak RSS {probe['peak_rss_mb']:,.0f} MiB"
                  + (f", CUDA max allocated {probe['cuda_max_allocated_mb']:,.0f} MiB"
                     if "cuda_max_allocated_mb" in probe else ""))
    if probes["vlmtrain"][0]["tokens"] != probes["trl"][0]["tokens"]:
        report.note("WARNING: vlmtrain and TRL trained different token streams (batches differ)")
    if "cache hit" not in (folder / "vlmtrain-0.log").read_text():
        report.note("WARNING: the vlmtrain run did not report a cache hit (vlmtrain's code changed meanwhile?); "
                    "only its start-up, not its throughput, included preprocessing")

    def med(who: str, key: str) -> float:
        return median([p[key] for p in probes[who]])

    ours, theirs = med("vlmtrain", "tps"), med("trl", "tps")
    ratio = ours / theirs
    fig = report.add(Figure("vlmtrain fit tokens/s", ours, "tokens/s", theirs, ratio, ">= 1.0x TRL", ratio >= 1.0,
                            note=f"spread vlmtrain {spread([p['tps'] for p in probes['vlmtrain']])}, "
                                 f"TRL {spread([p['tps'] for p in probes['trl']])}"))
    report.add(Figure("vlmtrain trained (loss) tokens/s", med("vlmtrain", "trained_tps"), "tokens/s",
                      med("trl", "trained_tps"), note="not comparable: TRL's default puts the loss on prompt, "
                      "template and image tokens too"))
    rss_ours, rss_trl = med("vlmtrain", "peak_rss_mb"), med("trl", "peak_rss_mb")
    report.add(Figure("vlmtrain peak RSS", rss_ours, "MiB", rss_trl, rss_ours / rss_trl, note="lower is better"))
    if "cuda_max_allocated_mb" in probes["vlmtrain"][0]:
        c_ours, c_trl = med("vlmtrain", "cuda_max_allocated_mb"), med("trl", "cuda_max_allocated_mb")
        report.add(Figure("vlmtrain CUDA max allocated", c_ours, "MiB", c_trl, c_ours / c_trl, note="lower is better"))
    params = probes["vlmtrain"][0]["params"]
    report.note(f"model: {params / 1e6:,.1f} M parameters on {probes['vlmtrain'][0]['device']}; median step "
                f"vlmtrain {med('vlmtrain', 'step_s') * 1e3:.0f} ms, TRL {med('trl', 'step_s') * 1e3:.0f} ms")
    mfu = ""
    if args.device == "cuda":
        m_ours, m_trl = (6 * params * v / args.peak_flops for v in (ours, theirs))
        report.add(Figure("vlmtrain MFU", 100 * m_ours, "%", 100 * m_trl, m_ours / m_trl,
                          note=f"6 * params * non-pad tokens/s / {args.peak_flops:.3g} FLOP/s"))
        mfu = f", MFU {100 * m_ours:.1f}% vs {100 * m_trl:.1f}%"
        vision = probes["vlmtrain"][0].get("vision_params", 0)
        if vision and med("vlmtrain", "pps"):
            # The vision tower runs on every patch (4 per merged image token with merge 2), the decoder on tokens.
            v_ours, v_trl = ((6 * (params - vision) * med(w, "tps") + 6 * vision * med(w, "pps")) / args.peak_flops
                             for w in ("vlmtrain", "trl"))
            report.add(Figure("vlmtrain MFU, vision tower per patch", 100 * v_ours, "%", 100 * v_trl, v_ours / v_trl,
                              note=f"6 * (decoder params * tokens/s + vision params ({vision / 1e6:,.0f} M) * "
                                   f"patches/s ({med('vlmtrain', 'pps'):,.0f})) / peak"))
    if not fig.met or args.profile:
        if not fig.met:
            report.note(f"vlmtrain/TRL {ratio:.2f} misses 1.0 by {100 * (1 - ratio):.1f}%; where the steps go:")
        report.note(*stage_profile(folder, {"vlmtrain": ours_args, "trl": trl_args}, args.steps))
    report.finish(f"vlmtrain/TRL tokens/s {ratio:.2f}x ({common.status(fig.met)}, >=1.0): {ours:,.0f} vs "
                  f"{theirs:,.0f} tokens/s, peak RSS {rss_ours:,.0f} vs {rss_trl:,.0f} MiB{mfu}")


if __name__ == "__main__":
    main()
