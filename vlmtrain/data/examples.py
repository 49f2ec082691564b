"""Read conversation rows from source files into ``Example``s, with errors that name file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input, with a one-line message naming the file and row."""


@dataclass
class Example:
    messages: list[dict]
    images: list[str] = field(default_factory=list)
    tools: list[dict] | None = None
    where: str = ""


def _image_parts(messages: list[dict]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image")
    return count


def resolve_image_path(raw: str, image_dir: Path, where: str, allow_outside: bool) -> str:
    """Image paths are relative to the source's image_dir and may not escape it unless allowed."""
    if "://" in raw:
        raise DataError(f"{where}: image {raw!r} is a URL; vlmtrain never fetches images, download it first")
    path = (image_dir / raw).resolve()
    if not allow_outside and (Path(raw).is_absolute() or not path.is_relative_to(image_dir.resolve())):
        raise DataError(f"{where}: image path {raw!r} escapes image_dir {str(image_dir)!r}; "
                        "set data.allow_paths_outside_image_dir: true to allow it")
    return str(path)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg}); fix or remove the line") from err
            yield line_no, row


def example_from_row(row: dict, where: str, source: Any, data_cfg: Any) -> Example:
    """Validate one conversations row and resolve its images."""
    messages = row.get(source.messages_column)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: no '{source.messages_column}' list in the row")
    image_dir = Path(source.image_dir) if source.image_dir else Path(source.path).parent
    raw_images = row.get(source.images_column) or []
    n_parts = _image_parts(messages)
    if n_parts != len(raw_images):
        raise DataError(f"{where}: {n_parts} image part(s) in messages but {len(raw_images)} file(s) in "
                        f"'{source.images_column}'; each {{\"type\": \"image\"}} part consumes the next image")
    images = [resolve_image_path(str(p), image_dir, where, bool(data_cfg.allow_paths_outside_image_dir))
              for p in raw_images]
    return Example(messages=messages, images=images, tools=row.get("tools"), where=where)


def load_examples(source: Any, data_cfg: Any) -> list[Example]:
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    examples = [example_from_row(row, f"{path}:{line_no}", source, data_cfg) for line_no, row in iter_jsonl(path)]
    if not examples:
        raise DataError(f"{path}: the file holds no rows")
    return examples[: source.max_rows] if source.max_rows else examples
