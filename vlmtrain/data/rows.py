"""Render, mask and length-check examples into the Arrow rows (``MaskedRow.to_record``) that every reader uses.

Rendering runs through ``datasets.Dataset.map`` (progress bar, ``num_proc`` workers). Each row either
renders or carries its problem (``_reason``/``_error``); the row policies (``policies.py``) then decide, per
reason, whether a problem stops the build (the default: a one-line error naming ``file:row``) or drops the
row and counts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import datasets
import numpy as np

from vlmtrain.data.examples import Example
from vlmtrain.data.policies import BuildReport, BuildSettings
from vlmtrain.data.transformed import transform_example
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.checks import EmptyMaskError, find_issues, require_trained_tokens
from vlmtrain.mask.pipeline import MaskedRenderer
from vlmtrain.media.item import MediaItem, arrow_feature
from vlmtrain.media.kinds import check_supported, kind_of
from vlmtrain.render.attributor import RenderInput
from vlmtrain.render.chat import TEMPLATE_ERRORS
from vlmtrain.render.row import TOKEN_ARRAYS, MaskedRow, arrow_features

# Per-row bookkeeping produced by rendering and removed before the rows are saved.
INTERNAL = datasets.Features({
    "_reason": datasets.Value("string"),
    "_error": datasets.Value("string"),
    "_untrained_stops": datasets.Value("int32"),
    "_turns_without_stop": datasets.Value("int32"),
})
EXAMPLE_FEATURES = datasets.Features({
    "where": datasets.Value("string"),
    "format": datasets.Value("string"),
    "messages": datasets.Value("string"),
    "media": arrow_feature(),
    "tools": datasets.Value("string"),
    "text": datasets.Value("string"),
    "source": datasets.Value("int16"),
})


def rendered_features() -> datasets.Features:
    return datasets.Features({**arrow_features(), **INTERNAL})


def examples_dataset(examples: Iterable[Example]) -> datasets.Dataset:
    """Examples as an Arrow table (messages as JSON text), ready for ``Dataset.map`` workers."""
    columns: dict[str, list[Any]] = {name: [] for name in EXAMPLE_FEATURES}
    for ex in examples:
        columns["where"].append(ex.where)
        columns["format"].append(ex.format)
        columns["messages"].append(json.dumps(ex.messages, ensure_ascii=False))
        columns["media"].append([m.to_record() for m in ex.media])
        columns["tools"].append(json.dumps(ex.tools, ensure_ascii=False) if ex.tools else "")
        columns["text"].append(ex.text)
        columns["source"].append(ex.source)
    return datasets.Dataset.from_dict(columns, features=EXAMPLE_FEATURES)


def _example(record: dict[str, Any]) -> Example:
    return Example(messages=json.loads(record["messages"]), media=[MediaItem.from_record(m) for m in record["media"]],
                   tools=json.loads(record["tools"]) if record["tools"] else None, where=record["where"],
                   format=record["format"], text=record["text"], source=int(record["source"]))


def _empty_row(record: dict[str, Any], reason: Reason, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: np.zeros(0, dtype=dtype) for name, dtype in TOKEN_ARRAYS.items()}
    row.update(where=record["where"], text="", roles=[], media=[], appended_stop=False, merged_spans=0,
               linear_fallbacks=0, length=0, num_trained=0, messages=record["messages"], source=record["source"],
               _reason=str(reason), _error=error,
               _untrained_stops=0, _turns_without_stop=0)
    return row


def render_example(renderer: MaskedRenderer, example: Example, settings: BuildSettings, *,
                   require_trained: bool = True) -> MaskedRow:
    """One example -> one masked row (raises DataError / EmptyMaskError naming the row; length unchecked here).

    ``require_trained=False`` (``inspect-mask``) returns a zero-trained row instead of raising EmptyMaskError.
    """
    chat = renderer.chat
    check_supported(example.media, chat.processing_class, chat.is_processor, example.where)
    limits = settings.limits.resolved(chat.processing_class)
    media = tuple(kind_of(m.modality).probe(m, example.where, limits) for m in example.media)
    pretrain = example.format == "pretrain"
    placeholder = settings.placeholders[example.source] if example.source < len(settings.placeholders) else None
    tiled = transform_example(renderer, example, media, settings, placeholder if pretrain else None)
    sample = RenderInput(messages=tiled.messages, media=tiled.media, tools=example.tools, text=tiled.text,
                         placeholder=placeholder if pretrain else None, where=example.where)
    try:
        row = renderer.build(sample, pretrain=pretrain)
    except (*TEMPLATE_ERRORS, ValueError) as err:  # processors raise ValueError on media/text mismatches
        first = " ".join(str(err).split())[:300]
        raise DataError(f"{example.where}: the chat template could not render this row ({first}); fix the "
                        "row or check that the model's template supports it", Reason.TEMPLATE_ERROR) from err
    row = tiled.finish(row, renderer)  # data.image_transform labels: input only, never trained
    assert row.loss_mask is not None
    if require_trained:
        require_trained_tokens(row.loss_mask, example.where)
    return replace(row, where=example.where, source=example.source,
                   messages=json.dumps(example.messages, ensure_ascii=False))


def _too_long_message(where: str, length: int, max_length: int) -> str:
    return (f"{where}: {length} tokens exceed data.max_length={max_length}; rows are never truncated (that "
            "would cut through images): raise data.max_length or set data.on_too_long: drop")


def render_record(record: dict[str, Any], renderer: MaskedRenderer, settings: BuildSettings,
                  raise_fatal: bool) -> dict[str, Any]:
    """``Dataset.map`` function: render one example row, or record (or raise, per policy) its problem."""
    try:
        row = render_example(renderer, _example(record), settings)
    except (DataError, EmptyMaskError) as err:
        if raise_fatal and settings.is_fatal(err.reason):
            raise
        return _empty_row(record, err.reason, str(err))
    assert row.loss_mask is not None
    issues = find_issues(row, row.loss_mask)
    out = {**row.to_record(), "_reason": "", "_error": "", "_untrained_stops": len(issues.untrained_stop_turns),
           "_turns_without_stop": len(issues.turns_without_stop)}
    if len(row) > settings.max_length:
        message = _too_long_message(record["where"], len(row), settings.max_length)
        if raise_fatal and settings.is_fatal(Reason.TOO_LONG):
            raise DataError(message, Reason.TOO_LONG)
        out.update(_reason=str(Reason.TOO_LONG), _error=message)
    return out


def render_rows(examples: datasets.Dataset, renderer: MaskedRenderer, settings: BuildSettings, *,
                num_proc: int = 1, raise_fatal: bool = True, desc: str = "rendering",
                fingerprint: str | None = None) -> datasets.Dataset:
    """Render every example (in parallel with ``num_proc`` > 1); problem rows keep their reason/message."""
    workers = max(1, min(num_proc, len(examples)))
    return examples.map(
        render_record, fn_kwargs={"renderer": renderer, "settings": settings, "raise_fatal": raise_fatal},
        features=rendered_features(), remove_columns=examples.column_names,
        num_proc=workers if workers > 1 else None, desc=desc, new_fingerprint=fingerprint or "vlmtrain-render",
        load_from_cache_file=False,
    )


def apply_policies(rendered: datasets.Dataset, settings: BuildSettings, report: BuildReport
                   ) -> datasets.Dataset:
    """Count every problem into ``report``; return only the kept rows (internal columns removed)."""
    reasons = rendered["_reason"]
    problems = [i for i, reason in enumerate(reasons) if reason]
    if problems:
        errors = rendered.select(problems)["_error"]
        for i, message in zip(problems, errors, strict=True):
            reason = Reason(reasons[i])
            label = f"{reason}={settings.max_length}" if reason == Reason.TOO_LONG else str(reason)
            report.drop(label, message)
            report.fatal += settings.is_fatal(reason)
    kept = rendered.select([i for i, reason in enumerate(reasons) if not reason]) if problems else rendered
    report.kept += len(kept)
    if len(kept):
        report.trained_tokens += int(np.sum(kept["num_trained"]))
        report.total_tokens += int(np.sum(kept["length"]))
        report.untrained_stop_turns += int(np.sum(kept["_untrained_stops"]))
        report.turns_without_stop += int(np.sum(kept["_turns_without_stop"]))
        report.merged_spans += int(np.sum(kept["merged_spans"]))
        report.linear_fallbacks += int(np.sum(kept["linear_fallbacks"]))
    return kept.remove_columns(list(INTERNAL))


def no_rows_message(report: BuildReport) -> str:
    reasons = ", ".join(f"{r}: {c}" for r, c in sorted(report.dropped.items())) or "the sources are empty"
    return (f"no usable rows: every row was dropped ({reasons}); run `vlmtrain preprocess --check` to list "
            "them")
