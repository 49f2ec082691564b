"""``vlmtrain inspect-mask``: rows token by token (terminal, JSON Lines or HTML) and a lint of the split.

Rows go through the training path: ``make_renderer`` (tokenizer/processor and config only, no weights) ->
``vlmtrain.data.rows.render_example`` (the family's real template, media expansion, attribution, mask).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vlmtrain.config import ConfigError
from vlmtrain.data.policies import BuildSettings
from vlmtrain.inspect.html import render_html
from vlmtrain.inspect.jsonl import write_jsonl
from vlmtrain.inspect.load import SourceRow, read_split
from vlmtrain.inspect.rows import InspectedRow, failed_row, inspect_example
from vlmtrain.inspect.select import parse_rows
from vlmtrain.inspect.summary import Summary, family_label
from vlmtrain.inspect.terminal import legend, print_row, print_summary
from vlmtrain.inspect.tokens import Pieces
from vlmtrain.mask.pipeline import MaskedRenderer

FORMATS = ("terminal", "json", "html")
DEFAULT_ROWS = "0:3"


class Inspector:
    """Renders rows of one split on demand, each at most once."""

    def __init__(self, renderer: MaskedRenderer, settings: BuildSettings, rows: list[SourceRow],
                 keep: frozenset[int] = frozenset()) -> None:
        self.renderer, self.settings, self.rows, self.keep = renderer, settings, rows, keep
        self._done: dict[int, InspectedRow] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> InspectedRow:
        if index not in self._done:
            source = self.rows[index]
            if source.example is None:
                assert source.error is not None
                self._done[index] = failed_row(index, source.where, source.error)
            else:
                self._done[index] = inspect_example(self.renderer, source.example, index, self.settings)
        return self._done[index]

    def scan(self, split: str, stderr: Console) -> Summary:
        summary = Summary.start(self.renderer, split, self.settings)
        columns = (TextColumn(f"scanning {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
            task = progress.add_task("scan", total=len(self))
            for index in range(len(self)):
                summary.add(self.get(index))
                if index not in self.keep:  # a large split is scanned without holding every row
                    self._done.pop(index, None)
                progress.advance(task)
        return summary


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Per-row transformers warnings would drown the output; errors still show."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _open_output(output: str | None) -> Iterator[TextIO]:
    if output is None:
        yield sys.stdout
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        yield handle


def _emit(fmt: str, out: TextIO, inspector: Inspector, items: list[InspectedRow], *, split: str,
          scan: bool, strict: bool, show_ids: bool, to_file: bool, stderr: Console) -> Summary | None:
    """Write the rows in ``fmt``, and the split summary when ``scan`` (json: on stderr, stdout is JSONL)."""
    renderer = inspector.renderer
    pieces = Pieces(renderer.chat.tokenizer)
    if fmt == "terminal":
        console = Console(file=out, highlight=False) if to_file else Console(highlight=False)
        if items:
            console.print(legend(console), soft_wrap=True)
        for item in items:
            print_row(console, item, pieces, show_ids=show_ids)
        result = inspector.scan(split, stderr) if scan else None
        if result is not None:
            print_summary(console, result, strict=strict)
        return result
    if fmt == "json":
        write_jsonl(out, items, pieces, split, renderer)
        out.flush()
        result = inspector.scan(split, stderr) if scan else None
        if result is not None:
            print_summary(stderr, result, strict=strict)
        return result
    result = inspector.scan(split, stderr) if scan else None
    title = f"vlmtrain inspect-mask · {split} split · family {family_label(renderer)}"
    out.write(render_html(items, pieces, result, title=title, show_ids=show_ids))
    return result


def run_inspect(cfg: Any, *, rows: str | None = DEFAULT_ROWS, split: str = "train", fmt: str = "terminal",
                output: str | None = None, show_ids: bool = False, summary: bool | None = None,
                strict: bool = False) -> int:
    """Show the selected rows in ``fmt`` and (by default, except for json) the split summary; returns the exit
    code: 1 when ``strict`` and the summary finds a problem, else 0.

    ``rows=None`` means the default rows, or none when ``summary`` is explicitly True (summary only).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    from vlmtrain.embedded import materialize
    from vlmtrain.mask.pipeline import make_renderer

    materialize(cfg)
    scan = strict or (summary if summary is not None else fmt != "json")
    if rows is None:
        rows = "" if summary else DEFAULT_ROWS
    stderr = Console(stderr=True, highlight=False)
    with _quiet_transformers():
        renderer = make_renderer(cfg)
        sources, source_rows = read_split(cfg, split)
        settings = BuildSettings.from_config(cfg.data, cfg.mask, sources)
        selected = parse_rows(rows, len(source_rows)) if rows else []
        inspector = Inspector(renderer, settings, source_rows, keep=frozenset(selected))
        items = [inspector.get(i) for i in selected]
        with _open_output(output) as out:
            result = _emit(fmt, out, inspector, items, split=split, scan=scan, strict=strict,
                           show_ids=show_ids, to_file=output is not None, stderr=stderr)
    if output is not None:
        what = f"{len(items)} row(s){' and the summary' if result else ''}"
        stderr.print(f"wrote {what} to {output}", markup=False)
    if strict and result is not None and result.problem_count:
        stderr.print(f"[bold red]--strict: {result.problem_count} problem(s) in the {split} split[/]")
        return 1
    return 0
