"""One split's training rows: examples from every source, rendered and masked, with the report logged."""

from __future__ import annotations

import logging
from typing import Any

import datasets

from vlmtrain.data.build import build_rows
from vlmtrain.data.examples import Example, load_examples
from vlmtrain.render.pipeline import MaskedRenderer

log = logging.getLogger("vlmtrain")


def split_examples(cfg: Any, split: str) -> list[Example]:
    sources = cfg.data.train if split == "train" else cfg.data.eval
    examples: list[Example] = []
    for source in sources:
        examples.extend(load_examples(source, cfg.data))
    return examples


def load_split(cfg: Any, renderer: MaskedRenderer, split: str) -> datasets.Dataset:
    dataset, report = build_rows(split_examples(cfg, split), renderer, cfg.data, cfg.mask)
    for line in report.lines():
        (log.warning if line.startswith("WARNING") else log.info)("%s: %s", split, line)
    return dataset
