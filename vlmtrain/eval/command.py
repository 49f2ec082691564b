"""``vlmtrain eval``: a finished run on its ``data.eval`` split — token-weighted loss and CER, per source and overall.

The loss comes from the eval split's cached rows (the rows ``fit`` evaluated, same template, masks and
``data.image_transform``) through the training collator, as the exact token mean. The CER comes from answers
generated with the run's template, family stop ids and transform (``vlmtrain.generate``): each conversation's
final assistant turn is the reference and is regenerated. Rows without one (pretraining text) count towards the
loss only, and the report says how many.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from vlmtrain.errors import VlmtrainError
from vlmtrain.eval.cer import CerTotals

METRICS = ("cer",)


class EvalError(VlmtrainError):
    """``vlmtrain eval`` cannot run as asked (no eval split, unknown metric)."""


@dataclass
class SourceScore:
    """One ``data.eval`` source (or all of them): loss over its trained tokens, CER over its references."""

    name: str
    loss_sum: float = 0.0
    tokens: int = 0
    rows: int = 0
    cer: CerTotals = field(default_factory=CerTotals)
    no_reference: int = 0  # rows with no final assistant turn to compare against (loss only)
    stopped_by_length: int = 0  # answers cut off by max_new_tokens
    skipped: int = 0  # bad rows data.on_bad_row: skip let through (counted, not scored)

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.tokens if self.tokens else None

    def merge(self, other: SourceScore) -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.rows += other.rows
        self.cer.edits += other.cer.edits
        self.cer.chars += other.cer.chars
        self.cer.rows += other.cer.rows
        self.no_reference += other.no_reference
        self.stopped_by_length += other.stopped_by_length
        self.skipped += other.skipped

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.name, "loss": self.loss, "loss_tokens": self.tokens, "rows": self.rows,
                "cer": self.cer.cer, "cer_rows": self.cer.rows, "edits": self.cer.edits,
                "reference_chars": self.cer.chars, "no_reference": self.no_reference,
                "stopped_by_length": self.stopped_by_length, "skipped": self.skipped}


@dataclass
class EvalReport:
    sources: list[SourceScore]
    overall: SourceScore
    answers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.to_dict(), "sources": [s.to_dict() for s in self.sources]}

    def lines(self) -> list[str]:
        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        out = []
        for score in [*self.sources, self.overall]:
            extra = f"; {score.no_reference} row(s) without a reference (loss only)" if score.no_reference else ""
            if score.stopped_by_length:
                extra += f"; {score.stopped_by_length} answer(s) cut off by --max-new-tokens"
            if score.skipped:
                extra += f"; {score.skipped} bad row(s) skipped (data.on_bad_row: skip)"
            out.append(f"{score.name}: loss {fmt(score.loss, '.4f')} over {score.tokens} tokens ({score.rows} rows) · "
                       f"CER {fmt(score.cer.cer, '.4f')} ({score.cer.edits} edits / {score.cer.chars} chars, "
                       f"{score.cer.rows} rows){extra}")
        return out


def _source_name(index: int, source: Any) -> str:
    return f"eval[{index}] {source.path}"


def _loss(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Summed next-token loss over the labelled tokens, and their count."""
    import torch

    device = next(model.parameters()).device
    labels = batch.pop("labels").to(device)
    inputs = {k: (v.to(device, model.dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v)
              else v for k, v in batch.items()}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return float(loss), int((targets != -100).sum())


def _prompt(example: Any, masked: Any, settings: Any) -> Any:
    """The prompt (final assistant turn dropped, ``data.image_transform`` applied) or None without a reference."""
    from vlmtrain.data.transformed import transform_example
    from vlmtrain.generate.prompt import Prompt, message_text
    from vlmtrain.media.kinds import PART_TYPES, kind_of

    messages = list(example.messages)
    if example.format == "pretrain" or not messages or messages[-1].get("role") != "assistant":
        return None
    reference, messages = message_text(messages[-1]), messages[:-1]
    parts = sum(1 for m in messages if isinstance(m.get("content"), list)
                for p in m["content"] if isinstance(p, dict) and p.get("type") in PART_TYPES)
    kept = example.media[:parts]  # the dropped turn's media go with it
    if any(m.modality != "image" for m in kept):
        raise EvalError(f"{example.where}: eval generates from images only; this prompt has "
                        f"{', '.join(sorted({m.modality for m in kept}))} media")
    probed = tuple(kind_of(m.modality).probe(m, example.where, settings.limits) for m in kept)
    tiled = transform_example(masked, dataclasses.replace(example, messages=messages, media=list(kept)), probed,
                              settings, None)
    return Prompt(messages=tiled.messages, images=[m.path for m in tiled.media], where=example.where, transformed=True,
                  reference=reference, tools=example.tools)


def _examples(cfg: Any, sources: list[Any], settings: Any, max_rows: int | None,
              skipped: dict[int, int]) -> Iterator[Any]:
    """Validated eval examples, at most ``max_rows`` per source; bad rows raise or are counted per policy."""
    from vlmtrain.data.split import validated_rows

    taken: dict[int, int] = {}
    for index, source in enumerate(sources):
        for _, item in validated_rows(cfg, [source]):
            if max_rows is not None and taken.get(index, 0) >= max_rows:
                break
            if isinstance(item, Exception):
                if item.reason.is_source_problem or settings.is_fatal(item.reason):
                    raise item
                skipped[index] = skipped.get(index, 0) + 1
                continue
            taken[index] = taken.get(index, 0) + 1
            yield index, item


def run_eval(target: str, *, metric: str = "cer", device: str | None = None, max_new_tokens: int | None = None,
             max_rows: int | None = None, progress: bool = True, out: TextIO | None = None) -> EvalReport:
    """Evaluate the run ``target`` (its directory, or the config it was trained with) on its ``data.eval``."""
    from tqdm.auto import tqdm

    from vlmtrain.collate import CompletionOnlyCollator
    from vlmtrain.data.policies import BuildSettings
    from vlmtrain.data.split import prepare_split
    from vlmtrain.generate.command import default_device
    from vlmtrain.generate.prompt import PromptEncoder
    from vlmtrain.generate.run import generate
    from vlmtrain.generate.rundir import load_model, locate, read_run
    from vlmtrain.mask.pipeline import make_renderer

    if metric not in METRICS:
        raise EvalError(f"--metric {metric}: unknown metric; use one of {', '.join(METRICS)} (the loss is "
                        "always reported)")
    run = read_run(locate(target))
    cfg = run.render_cfg()
    sources = list(cfg.data.eval)
    if not sources:
        raise EvalError(f"{run.path}: the run's config has no data.eval sources; add data.eval[0].path to the "
                        "config and pass it to vlmtrain eval")
    masked = make_renderer(cfg)
    settings = BuildSettings.from_config(cfg.data, cfg.mask, sources)
    model = load_model(run, device=device or default_device())
    scores = [SourceScore(_source_name(i, s)) for i, s in enumerate(sources)]

    split = prepare_split(cfg, masked, "eval")
    assert split is not None and split.dataset is not None
    rows = split.dataset
    if max_rows is not None:
        seen: dict[int, int] = {}
        keep = []
        for i, source in enumerate(rows["source"]):
            seen[source] = seen.get(source, 0) + 1
            if seen[source] <= max_rows:
                keep.append(i)
        rows = rows.select(keep)
    collator = CompletionOnlyCollator(masked.chat, masked.media_ids)
    encoder = PromptEncoder(cfg, masked)
    with tqdm(total=len(rows), desc="eval loss", file=sys.stderr, disable=not progress) as bar:
        for row in rows:
            loss, tokens = _loss(model, dict(collator([row])))
            score = scores[int(row["source"])]
            score.loss_sum, score.tokens, score.rows = score.loss_sum + loss, score.tokens + tokens, score.rows + 1
            bar.update()
    answers: list[dict[str, Any]] = []
    skipped: dict[int, int] = {}
    examples = list(_examples(cfg, sources, settings, max_rows, skipped))
    with tqdm(total=len(examples), desc="eval generate", file=sys.stderr, disable=not progress, unit="row") as bar:
        for index, example in examples:
            prompt = _prompt(example, masked, settings)
            if prompt is None:
                scores[index].no_reference += 1
                bar.update()
                continue
            answer = generate(model, encoder, [prompt], max_new_tokens=max_new_tokens)[0]
            edits = scores[index].cer.add(answer.text, prompt.reference)
            scores[index].stopped_by_length += answer.finish == "length"
            answers.append({**answer.record(), "source": index, "edits": edits})
            bar.update()
    for index, count in skipped.items():
        scores[index].skipped = count
    overall = SourceScore("overall")
    for score in scores:
        overall.merge(score)
    report = EvalReport(scores, overall, answers)
    for line in report.lines():
        print(line, file=out or sys.stdout, flush=True)
    return report
