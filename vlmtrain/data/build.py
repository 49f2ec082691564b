"""Render, mask and length-check examples into the Arrow rows that training and inspect-mask read."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from vlmtrain.data.examples import DataError, Example
from vlmtrain.data.images import open_image
from vlmtrain.mask.checks import EmptyMaskError, find_issues, require_trained_tokens
from vlmtrain.render.pipeline import MaskedRenderer

log = logging.getLogger(__name__)

FEATURES = datasets.Features({
    "where": datasets.Value("string"),
    "text": datasets.Value("string"),
    "images": datasets.Sequence(datasets.Value("string")),
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "loss_mask": datasets.Sequence(datasets.Value("bool")),
    "message_index": datasets.Sequence(datasets.Value("int16")),
    "kind": datasets.Sequence(datasets.Value("int8")),
    "sampled": datasets.Sequence(datasets.Value("bool")),
    "ends_turn": datasets.Sequence(datasets.Value("int16")),
    "roles": datasets.Sequence(datasets.Value("string")),
    "length": datasets.Value("int32"),
    "num_trained": datasets.Value("int32"),
})


@dataclass
class BuildReport:
    """What happened to every row: kept, dropped by reason, and mask findings (never silent)."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    trained_tokens: int = 0
    total_tokens: int = 0
    untrained_stop_turns: int = 0
    turns_without_stop: int = 0

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def lines(self) -> list[str]:
        out = [f"rows kept: {self.kept}; trained tokens {self.trained_tokens} of {self.total_tokens}"]
        for reason, count in sorted(self.dropped.items()):
            out.append(f"rows dropped ({reason}): {count}, e.g. {', '.join(self.examples[reason])}")
        if self.untrained_stop_turns:
            out.append(f"WARNING: {self.untrained_stop_turns} assistant turn(s) end with a stop token the mask "
                       "does not train: the model will not learn to stop there (see mask.train_on_eos/mode)")
        return out


def render_example(renderer: MaskedRenderer, example: Example) -> dict[str, Any]:
    """One example -> one Arrow row (raises DataError / EmptyMaskError naming the row)."""
    images = [open_image(p, example.where) for p in example.images]
    try:
        row = renderer.render(example.messages, images=images or None, tools=example.tools)
    except (DataError, EmptyMaskError):
        raise
    except Exception as err:
        raise DataError(f"{example.where}: the chat template could not render this row: {err}") from err
    mask = renderer.mask(row)
    return {
        "where": example.where, "text": row.text, "images": example.images,
        "input_ids": row.input_ids.astype(np.int32), "loss_mask": mask,
        "message_index": row.message_index.astype(np.int16), "kind": row.kind,
        "sampled": row.sampled, "ends_turn": row.ends_turn.astype(np.int16), "roles": row.roles,
        "length": len(row), "num_trained": int(mask.sum()),
        "_issues": find_issues(row, mask),
    }


def build_rows(examples: Iterable[Example], renderer: MaskedRenderer, data_cfg: Any, mask_cfg: Any
               ) -> tuple[datasets.Dataset, BuildReport]:
    """Render every example; apply the over-length, empty-mask and bad-row policies; report every drop."""
    report = BuildReport()
    rows: list[dict[str, Any]] = []
    for example in examples:
        try:
            row = render_example(renderer, example)
            require_trained_tokens(row["loss_mask"], example.where)
        except EmptyMaskError:
            if mask_cfg.on_empty != "drop":
                raise
            report.drop("nothing to train", example.where)
            continue
        except (DataError, ValueError):
            if data_cfg.on_bad_row != "skip":
                raise
            report.drop("bad row", example.where)
            continue
        if row["length"] > data_cfg.max_length:
            if data_cfg.on_too_long == "error":
                raise DataError(f"{example.where}: {row['length']} tokens exceed data.max_length="
                                f"{data_cfg.max_length}; rows are never truncated (that would cut through images). "
                                "Raise data.max_length or set data.on_too_long: drop")
            report.drop(f"longer than max_length={data_cfg.max_length}", example.where)
            continue
        issues = row.pop("_issues")
        report.untrained_stop_turns += len(issues.untrained_stop_turns)
        report.turns_without_stop += len(issues.turns_without_stop)
        report.kept += 1
        report.trained_tokens += row["num_trained"]
        report.total_tokens += row["length"]
        rows.append(row)
    if not rows:
        raise DataError("no usable rows: every row was dropped (" +
                        ", ".join(f"{r}: {c}" for r, c in report.dropped.items()) + ")")
    return datasets.Dataset.from_list(rows, features=FEATURES), report
