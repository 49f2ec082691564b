"""One split, end to end: read every source, render, apply the row policies, mix, and cache (or just check).

``prepare_split`` is the single entry that ``fit`` (``load_split``), ``preprocess`` and ``preprocess --check``
share, so the three can never disagree about which rows exist or what they contain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from vlmtrain.data.cache import CacheEntry, cache_root, load_or_build
from vlmtrain.data.examples import Example, context_for, example_from_raw
from vlmtrain.data.fingerprint import cache_key, key_components
from vlmtrain.data.mix import mix_indices
from vlmtrain.data.policies import BuildReport, BuildSettings
from vlmtrain.data.rows import apply_policies, examples_dataset, no_rows_message, render_rows
from vlmtrain.data.sources import iter_rows
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.pipeline import MaskedRenderer

log = logging.getLogger("vlmtrain")


@dataclass
class SplitResult:
    """What ``prepare_split`` did: the rows (None for --check), the report, and where the cache is."""

    split: str
    report: BuildReport
    dataset: datasets.Dataset | None = None
    key: str | None = None
    path: Path | None = None
    hit: bool = False
    seconds: float = 0.0
    sources: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def split_sources(cfg: Any, split: str) -> list[Any]:
    if split not in ("train", "eval"):
        raise DataError(f"unknown split {split!r}: use train or eval", Reason.CONFIG)
    return list(cfg.data[split])


def validated_rows(cfg: Any, sources: list[Any]) -> Iterator[tuple[str, Example | DataError]]:
    """Every raw row of every source, in storage order: its validated Example, or the DataError rejecting it."""
    root = cache_root(cfg.data)
    for index, source in enumerate(sources):
        ctx = context_for(source, index, cfg, root / "media")
        for raw in iter_rows(source, str(root / "hf")):
            try:
                yield raw.where, example_from_raw(raw, source, ctx)
            except DataError as err:
                yield raw.where, err


def read_examples(cfg: Any, sources: list[Any], settings: BuildSettings, report: BuildReport, *,
                  raise_fatal: bool = True) -> list[Example]:
    """Validate every raw row of every source; problems are raised or counted per the row policies."""
    examples: list[Example] = []
    for _, item in validated_rows(cfg, sources):
        if isinstance(item, Example):
            examples.append(item)
            continue
        if item.reason.is_source_problem or (raise_fatal and settings.is_fatal(item.reason)):
            raise item
        report.drop(item.reason, str(item))
        report.fatal += settings.is_fatal(item.reason)
    return examples


def build_split(cfg: Any, renderer: MaskedRenderer, sources: list[Any], *, num_proc: int = 1,
                raise_fatal: bool = True, desc: str = "rendering") -> tuple[datasets.Dataset, BuildReport]:
    """Read, render, filter and mix one split's sources (nothing written)."""
    settings = BuildSettings.from_config(cfg.data, cfg.mask, sources)
    report = BuildReport()
    examples = read_examples(cfg, sources, settings, report, raise_fatal=raise_fatal)
    rendered = render_rows(examples_dataset(examples), renderer, settings, num_proc=num_proc,
                           raise_fatal=raise_fatal, desc=desc)
    kept = apply_policies(rendered, settings, report)
    if not len(kept):
        if raise_fatal:
            raise DataError(no_rows_message(report), Reason.NO_ROWS)
        return kept, report
    order = mix_indices(kept["source"], [float(s.weight) for s in sources], int(cfg.data.seed))
    if len(order) != len(kept) or (order != np.arange(len(kept))).any():
        kept = kept.select(order)
        report.kept = len(kept)
        report.trained_tokens = int(sum(kept["num_trained"]))
        report.total_tokens = int(sum(kept["length"]))
    return kept, report


def prepare_split(cfg: Any, renderer: MaskedRenderer, split: str, *, num_proc: int = 1,
                  check: bool = False) -> SplitResult | None:
    """Build (or load from the cache) one split; with ``check`` validate every row and write nothing."""
    sources = split_sources(cfg, split)
    if not sources:
        return None
    start = time.perf_counter()
    desc = f"rendering {split}"
    if check:
        _, report = build_split(cfg, renderer, sources, num_proc=num_proc, raise_fatal=False, desc=desc)
        return SplitResult(split, report, seconds=time.perf_counter() - start, sources=len(sources))
    root = cache_root(cfg.data)
    components = key_components(cfg, renderer, sources, str(root / "hf"))
    entry = CacheEntry(root, cache_key(components))
    built: dict[str, BuildReport] = {}

    def build(_: Path) -> tuple[datasets.Dataset, dict[str, Any]]:
        dataset, report = build_split(cfg, renderer, sources, num_proc=num_proc, desc=desc)
        built["report"] = report
        return dataset, {"split": split, "report": report.to_dict(), "components": components,
                         "build_seconds": round(time.perf_counter() - start, 3)}

    dataset, meta, hit = load_or_build(entry, build)
    if hit:
        log.info("%s: cache hit %s (%s)", split, entry.key, entry.path)
    else:
        log.info("%s: built data cache %s (%s)", split, entry.key, entry.path)
    report = built.get("report") or BuildReport.from_dict(meta.get("report", {}))
    return SplitResult(split, report, dataset=dataset, key=entry.key, path=entry.path, hit=hit,
                       seconds=time.perf_counter() - start, sources=len(sources), meta=meta)


def load_split(cfg: Any, renderer: MaskedRenderer, split: str) -> datasets.Dataset:
    """The split's rendered, masked rows via the cache (logs ``cache hit <key>`` when it is reused)."""
    result = prepare_split(cfg, renderer, split)
    if result is None or result.dataset is None:
        raise DataError(f"data.{split} has no sources; add one (data.{split}[0].path)", Reason.CONFIG)
    for line in result.report.lines():
        (log.warning if line.startswith("WARNING") else log.info)("%s: %s", split, line)
    return result.dataset
