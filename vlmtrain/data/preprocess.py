"""``vlmtrain preprocess``: build (or confirm) every split's cache and print what happened to every row."""

from __future__ import annotations

import logging
import time
from typing import Any

import typer

from vlmtrain.data.split import SplitResult, prepare_split

log = logging.getLogger("vlmtrain")


def summary_lines(result: SplitResult) -> list[str]:
    """The human summary of one split: rows kept, dropped by reason (first offenders), tokens, time, cache."""
    report = result.report
    dropped = sum(report.dropped.values())
    head = f"{result.split}: "
    if result.hit:
        head += f"cache hit {result.key}; "
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.dropped.items()))
    lines = [head + f"{report.kept} rows kept, {dropped} dropped" + (f" ({reasons})" if reasons else "")
             + f"; trained tokens {report.trained_tokens} of {report.total_tokens}; {result.seconds:.1f} s"]
    for reason, offenders in sorted(report.examples.items()):
        lines.append(f"  {reason} ({report.dropped[reason]}), first rows:")
        lines.extend(f"    {message}" for message in offenders)
    if report.untrained_stop_turns:
        lines.append(f"  WARNING: {report.untrained_stop_turns} assistant turn(s) end with a stop token the "
                     "mask does not train (see mask.train_on_eos)")
    if result.path is not None:
        lines.append(f"  cache: {result.path}")
    return lines


def packing_line(lengths: list[int], max_length: int, seed: int) -> str:
    """``data.packing``'s efficiency on these rows: the plan's non-pad share and rows per pack."""
    from vlmtrain.data.packing import pack_stats, plan_packs

    return pack_stats(plan_packs(lengths, max_length, seed=seed), lengths, max_length).line()


def run_preprocess(cfg: Any, *, num_proc: int = 1, check: bool = False) -> int:
    """Build every split's cache (or, with ``check``, validate every row and write nothing); the exit code.

    ``--check`` exits 1 when a real run would fail under the configured policies (and lists the rows).
    """
    from vlmtrain.embedded import materialize
    from vlmtrain.mask.pipeline import make_renderer

    start = time.perf_counter()
    materialize(cfg)
    renderer = make_renderer(cfg)
    results = [r for split in ("train", "eval")
               if (r := prepare_split(cfg, renderer, split, num_proc=num_proc, check=check)) is not None]
    if not results:
        typer.echo("error: no data sources: set data.train (and optionally data.eval)", err=True)
        return 2
    for result in results:
        for line in summary_lines(result):
            typer.echo(line)
        if cfg.data.get("packing", False) and result.dataset is not None:  # the plan fit will use (epoch 0)
            typer.echo(f"  {packing_line(result.dataset['length'], int(cfg.data.max_length), int(cfg.data.seed))}")
    fatal = sum(r.report.fatal for r in results)
    if check:
        verdict = (f"check failed: {fatal} row(s) would stop `fit` under the configured policies"
                   if fatal else "check passed: every row renders, masks and fits")
        typer.echo(f"{verdict} ({time.perf_counter() - start:.1f} s)")
        return 1 if fatal else 0
    typer.echo(f"done in {time.perf_counter() - start:.1f} s")
    return 0
