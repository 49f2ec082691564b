"""Run one training job with timing probes and write what it saw as JSON (a helper of the benchmarks).

    python benchmarks/fit_probe.py --out probe.json vlmtrain CONFIG [key=value ...]
    python benchmarks/fit_probe.py --out probe.json trl --model DIR --data train.jsonl --steps N --batch B ...

``vlmtrain`` runs the real ``vlmtrain fit`` command (the CLI entry, same config and overrides) with the
trainer class swapped for a subclass that records, per optimizer step, the wall-clock time and the tokens of
the batch (and, with ``VLMTRAIN_PROBE_PROFILE=path``, dumps a cProfile of ``trainer.train`` there); ``trl`` runs a
plain TRL ``SFTTrainer`` with its default VLM collator on the same JSONL. Neither
saves the final model (not part of what is measured). Times are ``time.time()`` so the parent can relate
them to when it launched the process.
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # before the heavy imports: what `vlmtrain fit` start means to a user

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

PROBE: dict[str, Any] = {"t_process": T_PROCESS, "steps": [], "tokens": [], "trained": [], "patches": [], "t_fit": None,
                         "t_data": None, "t_train_begin": None}


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def probed(trainer_cls: type) -> type:
    """``trainer_cls`` recording each step's end time and tokens, never saving the model."""
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            PROBE["t_train_begin"] = time.time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _cuda_sync()
            PROBE["steps"].append(time.time())
            if len(PROBE["steps"]) == 1:
                print(f"PROBE first optimizer step at {PROBE['steps'][0] - T_PROCESS:.2f} s", flush=True)

    class Probed(trainer_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(Marks())
            PROBE["params"] = sum(p.numel() for p in self.model.parameters())
            PROBE["vision_params"] = sum(p.numel() for n, p in self.model.named_parameters() if "visual" in n)
            PROBE["device"] = str(self.args.device)

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            PROBE["tokens"].append(int(inputs["attention_mask"].sum()))
            PROBE["trained"].append(int((inputs["labels"][:, 1:] != -100).sum()))
            pixels = inputs.get("pixel_values")  # Qwen2-VL: one row per vision patch
            PROBE["patches"].append(int(pixels.shape[0]) if pixels is not None and pixels.dim() == 2 else 0)
            return super().training_step(model, inputs, *args, **kwargs)

        def save_model(self, *args: Any, **kwargs: Any) -> None:
            pass

        def train(self, *args: Any, **kwargs: Any) -> Any:
            target = os.environ.get("VLMTRAIN_PROBE_PROFILE")
            if not target:
                return super().train(*args, **kwargs)
            import cProfile

            profiler = cProfile.Profile()
            try:
                return profiler.runcall(super().train, *args, **kwargs)
            finally:
                profiler.dump_stats(target)

    return Probed


def run_vlmtrain(config: str, overrides: list[str]) -> None:
    import vlmtrain.data.split as datasets_module
    import vlmtrain.train.fit as fit_module
    from vlmtrain.cli import app

    fit_module.VlmSFTTrainer = probed(fit_module.VlmSFTTrainer)  # type: ignore[misc]
    load_split, fit = datasets_module.load_split, fit_module.fit

    def timed_load_split(*args: Any, **kwargs: Any) -> Any:
        dataset = load_split(*args, **kwargs)
        PROBE["t_data"] = time.time()
        return dataset

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        PROBE["t_fit"] = time.time()
        return fit(*args, **kwargs)

    datasets_module.load_split = timed_load_split  # fit imports it at call time
    fit_module.fit = timed_fit  # the CLI imports it at call time
    try:
        app(["fit", config, *overrides])
    except SystemExit as done:
        if done.code:
            raise


def run_trl(args: argparse.Namespace) -> None:
    """A plain TRL run: the dataset a TRL user writes (messages + decoded images), TRL's defaults."""
    PROBE["t_fit"] = time.time()
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    data = Path(args.data)
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    table = datasets.Dataset.from_list(
        [{"messages": r["messages"], "images": [str(data.parent / p) for p in r["images"]]} for r in rows])
    table = table.cast_column("images", datasets.List(datasets.Image()))
    PROBE["t_data"] = time.time()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn)
    processor = AutoProcessor.from_pretrained(args.model)
    config = SFTConfig(output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch,
                       learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, logging_steps=10,
                       save_strategy="no", report_to="none", seed=0, bf16=args.dtype == "bfloat16",
                       use_cpu=args.device == "cpu", max_length=None,
                       gradient_checkpointing=args.gradient_checkpointing == "true",
                       dataloader_num_workers=int(args.workers))
    trainer = probed(SFTTrainer)(model=model, args=config, train_dataset=table, processing_class=processor)
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    sub = parser.add_subparsers(dest="mode", required=True)
    ours = sub.add_parser("vlmtrain")
    ours.add_argument("config")
    ours.add_argument("overrides", nargs="*")
    theirs = sub.add_parser("trl")
    for name, default in (("--model", None), ("--data", None), ("--output-dir", None), ("--steps", "10"),
                          ("--batch", "4"), ("--dtype", "float32"), ("--device", "cpu"), ("--attn", "sdpa"),
                          ("--gradient-checkpointing", "true"), ("--workers", "0")):
        theirs.add_argument(name, required=default is None, default=default)
    args = parser.parse_args()
    if args.mode == "trl":
        args.steps, args.batch = int(args.steps), int(args.batch)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import common

    common.quiet(keep_vlmtrain=True)  # its log says whether the cache was hit
    if args.mode == "vlmtrain":
        run_vlmtrain(args.config, args.overrides)
    else:
        run_trl(args)
    PROBE["peak_rss_mb"] = common.peak_rss_mb()
    import torch

    if torch.cuda.is_available():
        PROBE["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.out).write_text(json.dumps(PROBE))


if __name__ == "__main__":
    main()
