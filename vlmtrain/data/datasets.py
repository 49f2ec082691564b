"""The rows ``fit`` trains on: one split from the fingerprinted cache, built first when the key is new."""

from __future__ import annotations

import logging
from typing import Any

import datasets

from vlmtrain.data.prepare import prepare_split
from vlmtrain.render.pipeline import MaskedRenderer

log = logging.getLogger("vlmtrain")


def load_split(cfg: Any, renderer: MaskedRenderer, split: str) -> datasets.Dataset:
    """The split's rendered, masked rows via the cache (logs ``cache hit <key>`` when it is reused)."""
    result = prepare_split(cfg, renderer, split)
    if result is None or result.dataset is None:
        raise ValueError(f"data.{split} has no sources")
    for line in result.report.lines():
        (log.warning if line.startswith("WARNING") else log.info)("%s: %s", split, line)
    return result.dataset
