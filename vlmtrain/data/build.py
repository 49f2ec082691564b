"""Render, mask and length-check examples into the Arrow rows that training and inspect-mask read.

Rendering runs through ``datasets.Dataset.map`` (progress bar, ``num_proc`` workers). Each row either
renders or carries its problem (``_reason``/``_error``); the row policies then decide, per reason, whether a
problem stops the build (the default: a one-line error naming ``file:row``) or drops the row and counts it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from vlmtrain.data.errors import DataError
from vlmtrain.data.examples import Example
from vlmtrain.data.images import blank_image, probe_image
from vlmtrain.data.pretrain import render_pretrain
from vlmtrain.mask.checks import EmptyMaskError, find_issues, require_trained_tokens
from vlmtrain.render.pipeline import MaskedRenderer

log = logging.getLogger(__name__)

TOO_LONG = "longer than max_length"
EMPTY_MASK = "nothing to train"
NO_TRAINED_TURN = "no assistant turn"

FEATURES = datasets.Features({
    "where": datasets.Value("string"),
    "text": datasets.Value("string"),
    "images": datasets.List(datasets.Value("string")),
    "input_ids": datasets.List(datasets.Value("int32")),
    "loss_mask": datasets.List(datasets.Value("bool")),
    "message_index": datasets.List(datasets.Value("int16")),
    "kind": datasets.List(datasets.Value("int8")),
    "sampled": datasets.List(datasets.Value("bool")),
    "ends_turn": datasets.List(datasets.Value("int16")),
    "roles": datasets.List(datasets.Value("string")),
    "length": datasets.Value("int32"),
    "num_trained": datasets.Value("int32"),
    "messages": datasets.Value("string"),  # JSON text: Arrow would merge schemas and inject null keys
    "image_sizes": datasets.List(datasets.List(datasets.Value("int32"))),  # [width, height] per image
    "source": datasets.Value("int16"),  # index of the data source in the split
})
# Per-row bookkeeping produced by rendering and removed before the rows are saved.
INTERNAL = datasets.Features({
    "_reason": datasets.Value("string"),
    "_error": datasets.Value("string"),
    "_untrained_stops": datasets.Value("int32"),
    "_turns_without_stop": datasets.Value("int32"),
})
RENDERED = datasets.Features({**FEATURES, **INTERNAL})
_ARRAY_DTYPES = {"input_ids": np.int32, "loss_mask": np.bool_, "message_index": np.int16, "kind": np.int8,
                 "sampled": np.bool_, "ends_turn": np.int16}
EXAMPLE_FEATURES = datasets.Features({
    "where": datasets.Value("string"),
    "format": datasets.Value("string"),
    "messages": datasets.Value("string"),
    "images": datasets.List(datasets.Value("string")),
    "tools": datasets.Value("string"),
    "text": datasets.Value("string"),
    "source": datasets.Value("int16"),
})


@dataclass(frozen=True)
class BuildSettings:
    """The row policies and limits rendering needs, taken from ``data``/``mask`` config and the sources."""

    max_length: int
    max_image_pixels: int | None
    on_too_long: str = "drop"
    on_bad_row: str = "error"
    on_empty: str = "error"
    placeholders: tuple[str | None, ...] = ()  # per source index (pretrain format)

    @classmethod
    def from_config(cls, data_cfg: Any, mask_cfg: Any, sources: Sequence[Any] = ()) -> BuildSettings:
        return cls(max_length=int(data_cfg.max_length), max_image_pixels=data_cfg.max_image_pixels,
                   on_too_long=str(data_cfg.on_too_long), on_bad_row=str(data_cfg.on_bad_row),
                   on_empty=str(mask_cfg.on_empty), placeholders=tuple(s.image_placeholder for s in sources))

    def is_fatal(self, reason: str) -> bool:
        """Whether a row with this problem stops the build (else it is dropped and counted)."""
        if reason == TOO_LONG:
            return self.on_too_long == "error"
        if reason in (EMPTY_MASK, NO_TRAINED_TURN):
            return self.on_empty != "drop" and self.on_bad_row != "skip"
        return self.on_bad_row != "skip"


@dataclass
class BuildReport:
    """What happened to every row: kept, dropped by reason (with the first offenders), mask findings."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    fatal: int = 0  # problems the policies would not let through (preprocess --check exits non-zero)
    trained_tokens: int = 0
    total_tokens: int = 0
    untrained_stop_turns: int = 0
    turns_without_stop: int = 0
    shown: int = 3

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] += 1
        offenders = self.examples.setdefault(reason, [])
        if len(offenders) < self.shown:
            offenders.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(self.dropped), "examples": self.examples,
                "trained_tokens": self.trained_tokens, "total_tokens": self.total_tokens,
                "untrained_stop_turns": self.untrained_stop_turns,
                "turns_without_stop": self.turns_without_stop}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        report = cls(**{k: v for k, v in data.items() if k not in ("dropped",)})
        report.dropped = Counter(data.get("dropped", {}))
        return report

    def lines(self) -> list[str]:
        out = [f"rows kept: {self.kept}; trained tokens {self.trained_tokens} of {self.total_tokens}"]
        for reason, count in sorted(self.dropped.items()):
            first = " | ".join(self.examples.get(reason, []))
            out.append(f"rows dropped ({reason}): {count}; first: {first}")
        if self.untrained_stop_turns:
            out.append(f"WARNING: {self.untrained_stop_turns} assistant turn(s) end with a stop token the "
                       "mask does not train: the model will not learn to stop there "
                       "(see mask.train_on_eos/mode)")
        if self.turns_without_stop:
            out.append(f"{self.turns_without_stop} assistant turn(s) have no stop token in the template's text "
                       "(the template writes none mid-conversation; the final turn gets one appended)")
        return out


def examples_dataset(examples: Iterable[Example]) -> datasets.Dataset:
    """Examples as an Arrow table (messages as JSON text), ready for ``Dataset.map`` workers."""
    columns: dict[str, list[Any]] = {name: [] for name in EXAMPLE_FEATURES}
    for ex in examples:
        columns["where"].append(ex.where)
        columns["format"].append(ex.format)
        columns["messages"].append(json.dumps(ex.messages, ensure_ascii=False))
        columns["images"].append(list(ex.images))
        columns["tools"].append(json.dumps(ex.tools, ensure_ascii=False) if ex.tools else "")
        columns["text"].append(ex.text)
        columns["source"].append(ex.source)
    return datasets.Dataset.from_dict(columns, features=EXAMPLE_FEATURES)


def _example(record: dict[str, Any]) -> Example:
    return Example(messages=json.loads(record["messages"]), images=list(record["images"]),
                   tools=json.loads(record["tools"]) if record["tools"] else None, where=record["where"],
                   format=record["format"], text=record["text"], source=int(record["source"]))


def _empty_row(record: dict[str, Any], reason: str, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: [] for name, feat in FEATURES.items() if isinstance(feat, datasets.List)}
    for name, dtype in _ARRAY_DTYPES.items():  # typed empties: Arrow cannot concatenate int32 with float64 []
        row[name] = np.zeros(0, dtype=dtype)
    row.update(where=record["where"], text="", length=0, num_trained=0, messages=record["messages"],
               source=record["source"], _reason=reason, _error=error, _untrained_stops=0,
               _turns_without_stop=0)
    return row


def as_parts(messages: list[dict]) -> list[dict]:
    """String ``content`` -> ``[{"type": "text", "text": ...}]`` for processors' templates.

    Processor templates are written for content parts: IDEFICS3, SmolVLM, LLaVA and LLaVA-OneVision silently
    render nothing for a string content (the answer would vanish from the training text) and LLaVA-NeXT
    fails; every registered VLM template renders the parts form.
    """
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str)
            else m for m in messages]


def render_example(renderer: MaskedRenderer, example: Example, settings: BuildSettings, *,
                   require_trained: bool = True) -> dict[str, Any]:
    """One example -> one row (raises DataError / EmptyMaskError naming the row; length unchecked here).

    ``require_trained=False`` (``inspect-mask``) returns a zero-trained row instead of raising EmptyMaskError.
    """
    if example.images and not renderer.renderer.is_processor:
        raise DataError(f"{example.where}: the row has {len(example.images)} image(s) but the model is text-only "
                        "(no processor); remove the images or use a vision-language model", "image count mismatch")
    sizes = [probe_image(path, example.where, settings.max_image_pixels) for path in example.images]
    blanks = [blank_image(size) for size in sizes]
    try:
        if example.format == "pretrain":
            known = example.source < len(settings.placeholders)
            placeholder = settings.placeholders[example.source] if known else None
            rendered = render_pretrain(renderer, example, blanks, placeholder)
        else:
            messages = as_parts(example.messages) if renderer.renderer.is_processor else example.messages
            rendered = renderer.render(messages, images=blanks or None, tools=example.tools)
    except (DataError, EmptyMaskError):
        raise
    except Exception as err:
        first = " ".join(str(err).split())[:300]
        raise DataError(f"{example.where}: the chat template could not render this row ({first}); fix the "
                        "row or check that the model's template supports it", "template error") from err
    mask = renderer.mask(rendered)
    if require_trained:
        require_trained_tokens(mask, example.where)
    issues = find_issues(rendered, mask)
    return {
        "where": example.where, "text": rendered.text, "images": example.images,
        "input_ids": rendered.input_ids.astype(np.int32), "loss_mask": mask,
        "message_index": rendered.message_index.astype(np.int16), "kind": rendered.kind,
        "sampled": rendered.sampled, "ends_turn": rendered.ends_turn.astype(np.int16),
        "roles": rendered.roles, "length": len(rendered), "num_trained": int(mask.sum()),
        "messages": json.dumps(example.messages, ensure_ascii=False),
        "image_sizes": [list(s) for s in sizes], "source": example.source, "_reason": "", "_error": "",
        "_untrained_stops": len(issues.untrained_stop_turns),
        "_turns_without_stop": len(issues.turns_without_stop),
    }


def _too_long_message(where: str, length: int, max_length: int) -> str:
    return (f"{where}: {length} tokens exceed data.max_length={max_length}; rows are never truncated (that "
            "would cut through images): raise data.max_length or set data.on_too_long: drop")


def render_record(record: dict[str, Any], renderer: MaskedRenderer, settings: BuildSettings,
                  raise_fatal: bool) -> dict[str, Any]:
    """``Dataset.map`` function: render one example row, or record (or raise, per policy) its problem."""
    try:
        row = render_example(renderer, _example(record), settings)
    except DataError as err:
        if raise_fatal and settings.is_fatal(err.reason):
            raise
        return _empty_row(record, err.reason, str(err))
    except EmptyMaskError as err:
        if raise_fatal and settings.is_fatal(EMPTY_MASK):
            raise
        return _empty_row(record, EMPTY_MASK, str(err))
    if row["length"] > settings.max_length:
        message = _too_long_message(record["where"], row["length"], settings.max_length)
        if raise_fatal and settings.is_fatal(TOO_LONG):
            raise DataError(message, TOO_LONG)
        row.update(_reason=TOO_LONG, _error=message)
    return row


def render_rows(examples: datasets.Dataset, renderer: MaskedRenderer, settings: BuildSettings, *,
                num_proc: int = 1, raise_fatal: bool = True, desc: str = "rendering",
                fingerprint: str | None = None) -> datasets.Dataset:
    """Render every example (in parallel with ``num_proc`` > 1); problem rows keep their reason/message."""
    workers = max(1, min(num_proc, len(examples)))
    return examples.map(
        render_record, fn_kwargs={"renderer": renderer, "settings": settings, "raise_fatal": raise_fatal},
        features=RENDERED, remove_columns=examples.column_names, num_proc=workers if workers > 1 else None,
        desc=desc, new_fingerprint=fingerprint or "vlmtrain-render", load_from_cache_file=False,
    )


def apply_policies(rendered: datasets.Dataset, settings: BuildSettings, report: BuildReport
                   ) -> datasets.Dataset:
    """Count every problem into ``report``; return only the kept rows (internal columns removed)."""
    reasons = rendered["_reason"]
    problems = [i for i, reason in enumerate(reasons) if reason]
    if problems:
        errors = rendered.select(problems)["_error"]
        for i, message in zip(problems, errors, strict=True):
            label = f"{TOO_LONG}={settings.max_length}" if reasons[i] == TOO_LONG else reasons[i]
            report.drop(label, message)
            report.fatal += settings.is_fatal(reasons[i])
    kept = rendered.select([i for i, reason in enumerate(reasons) if not reason]) if problems else rendered
    report.kept += len(kept)
    if len(kept):
        report.trained_tokens += int(np.sum(kept["num_trained"]))
        report.total_tokens += int(np.sum(kept["length"]))
        report.untrained_stop_turns += int(np.sum(kept["_untrained_stops"]))
        report.turns_without_stop += int(np.sum(kept["_turns_without_stop"]))
    return kept.remove_columns(list(INTERNAL))


def no_rows_message(report: BuildReport) -> str:
    reasons = ", ".join(f"{r}: {c}" for r, c in sorted(report.dropped.items())) or "the sources are empty"
    return (f"no usable rows: every row was dropped ({reasons}); run `vlmtrain preprocess --check` to list "
            "them")
