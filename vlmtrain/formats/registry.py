"""The formats in detection order, and the per-source choice: ``format: auto`` detects on the source's first
row (an explicit ``format:`` forces one), the choice is kept for the whole source and logged once."""

from __future__ import annotations

import logging
from typing import Any

from vlmtrain.errors import DataError, Reason
from vlmtrain.formats.base import CANONICAL, Format
from vlmtrain.formats.cauldron import CauldronFormat
from vlmtrain.formats.messages import MessagesFormat, PretrainFormat
from vlmtrain.formats.sharegpt import LlavaFormat, ShareGPTFormat

log = logging.getLogger("vlmtrain")

# Detection order: the most specific shapes first; ``messages`` takes any remaining list of messages.
FORMATS: tuple[Format, ...] = (CauldronFormat(), LlavaFormat(), ShareGPTFormat(), MessagesFormat(),
                               PretrainFormat())
ALIASES = {"conversations": "messages"}  # vlmtrain's name for the HF shape before formats were detected
BY_NAME: dict[str, Format] = {f.name: f for f in FORMATS}


def named(name: str) -> Format:
    return BY_NAME[ALIASES.get(name, name)]


def detect(row: dict[str, Any], source: Any, where: str) -> Format:
    """The first format whose shape ``row`` has; none is an error for the whole source."""
    for fmt in FORMATS:
        if fmt.detect(row, source):
            return fmt
    columns = ", ".join(sorted(row)) or "none"
    raise DataError(f"{where}: the first row of source {source.path!r} fits no known format (its columns: "
                    f"{columns}); set data.<split>[i].format to one of {', '.join(BY_NAME)} and its column keys "
                    "(messages_column, images_column, text_column)", Reason.CONFIG)


def format_for(source: Any, row: dict[str, Any], where: str, index: int, cache: dict[str, Any]) -> Format:
    """This source's format: chosen on its first row, then kept in ``cache`` (one per source and pass)."""
    if "format" not in cache:
        name = str(source.get("format") or "auto")
        fmt = detect(row, source, where) if name == "auto" else named(name)
        how = "detected" if name == "auto" else f"format: {name}"
        log.info("source %d (%s): format %s (%s), columns %s", index, source.path, fmt.name, how,
                 fmt.columns(source))
        cache["format"] = fmt
    return cache["format"]


def canonical_columns(fmt: Format, source: Any) -> Any:
    """The column names validation reads: the source's own for native formats, else the canonical row's."""
    if fmt.native:
        return source
    return CANONICAL
