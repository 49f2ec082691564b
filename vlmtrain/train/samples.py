"""``eval.samples: N``: at every evaluation, answer the first N ``data.eval`` prompts and log the answers.

A run then shows what the model says as it trains, not only a number. Answers go to the console (the
``vlmtrain`` logger), to ``<output_dir>/eval_samples.jsonl`` (one line per prompt per evaluation), and to the
``report_to`` backends that can show text (TensorBoard text, a W&B table, an MLflow artifact); any other
backend is named in a warning, never skipped silently. Every rank generates (a sharded model needs all ranks
in each forward); only the main process logs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmtrain.config import ConfigError
from vlmtrain.generate.prompt import Prompt, PromptEncoder, read_prompts
from vlmtrain.generate.run import Answer, generate

log = logging.getLogger("vlmtrain")

SAMPLES_FILE = "eval_samples.jsonl"


def markdown(step: int, answers: list[Answer]) -> str:
    lines = [f"step {step}", "", "| where | question | answer | reference |", "| --- | --- | --- | --- |"]
    cell = lambda text: str(text or "").replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines += [f"| {cell(a.prompt.where)} | {cell(a.prompt.question)} | {cell(a.text)} | {cell(a.prompt.reference)} |"
              for a in answers]
    return "\n".join(lines)


def send_to_backends(callbacks: list[Any], report_to: list[str], step: int, answers: list[Answer]) -> list[str]:
    """Text to each ``report_to`` backend's own writer; returns the backends that cannot take it."""
    from transformers.integrations import get_reporting_integration_callbacks

    unsupported = []
    for name in report_to:
        classes = tuple(get_reporting_integration_callbacks([name]))
        backend = next((cb for cb in callbacks if isinstance(cb, classes)), None)
        writer = type(backend).__name__ if backend is not None else None
        if writer == "TensorBoardCallback" and getattr(backend, "tb_writer", None) is not None:
            backend.tb_writer.add_text("eval/samples", markdown(step, answers), step)
        elif writer == "WandbCallback" and getattr(backend, "_initialized", False):
            columns = ["step", "where", "question", "answer", "reference"]
            rows = [[step, a.prompt.where, a.prompt.question, a.text, a.prompt.reference] for a in answers]
            backend._wandb.log({"eval/samples": backend._wandb.Table(columns=columns, data=rows),
                                "train/global_step": step})
        elif writer == "MLflowCallback" and getattr(backend, "_initialized", False):
            backend._ml_flow.log_text(markdown(step, answers), f"eval_samples/step-{step:07d}.md")
        else:
            unsupported.append(name)
    return unsupported


class EvalSamplesCallback(TrainerCallback):
    """Generates for fixed prompts after each evaluation (``on_evaluate``) and logs the answers."""

    def __init__(self, trainer: Any, encoder: PromptEncoder, prompts: list[Prompt], max_new_tokens: int) -> None:
        self.trainer = trainer
        self.encoder = encoder
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.warned: set[str] = set()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model") or self.trainer.model
        answers = generate(model, self.encoder, self.prompts, max_new_tokens=self.max_new_tokens)
        if not state.is_world_process_zero:
            return
        step = state.global_step
        for a in answers:
            log.info("eval sample step %d · %s · Q: %s · A: %s%s", step, a.prompt.where, a.prompt.question, a.text,
                     f" · expected: {a.prompt.reference}" if a.prompt.reference is not None else "")
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
            for a in answers:
                handle.write(json.dumps({"step": step, **a.record()}, ensure_ascii=False) + "\n")
        report_to = [r for r in (args.report_to or []) if r != "none"]
        for name in send_to_backends(self.trainer.callback_handler.callbacks, report_to, step, answers):
            if name not in self.warned:
                self.warned.add(name)
                log.warning("eval samples are not sent to report_to backend %r (no text writer for it); they are "
                            "in the console log and %s", name, out / SAMPLES_FILE)


def attach_eval_samples(trainer: Any, cfg: Any, renderer: Any = None) -> EvalSamplesCallback | None:
    """Add the callback when ``eval.samples`` > 0; it needs ``data.eval`` rows and an ``eval_strategy``."""
    count = int(cfg.eval.samples)
    if count <= 0:
        return None
    if not cfg.data.eval:
        raise ConfigError(f"eval.samples: {count} needs eval prompts; add a data.eval source")
    if str(trainer.args.eval_strategy).split(".")[-1].lower() == "no":
        raise ConfigError(f"eval.samples: {count} runs at each evaluation, but training.eval_strategy is 'no'; set "
                          "training.eval_strategy: steps (with training.eval_steps) or epoch")
    prompts = read_prompts(cfg, list(cfg.data.eval), limit=count)
    if len(prompts) < count:
        log.warning("eval.samples: %d asked, data.eval holds %d rows; generating for %d", count, len(prompts),
                    len(prompts))
    encoder = PromptEncoder(cfg, renderer)
    callback = EvalSamplesCallback(trainer, encoder, prompts, int(cfg.eval.max_new_tokens))
    trainer.add_callback(callback)
    log.info("eval samples: %d prompt(s) from data.eval generated at each evaluation (max %d new tokens)",
             len(prompts), int(cfg.eval.max_new_tokens))
    return callback
