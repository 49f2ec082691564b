"""Read one configured source into raw rows (``where`` + a dict), whatever its storage.

- JSON Lines (``.jsonl``/``.ndjson``): read line by line, so a malformed line is reported (or skipped) alone
  with its line number; ``where`` is ``file:LINE``.
- JSON (``.json``): an array of rows (a JSON Lines file named ``.json`` is accepted too).
- Parquet, a ``save_to_disk`` folder, a folder of data files, or a hub dataset already in the local hub cache:
  through ``datasets`` (memory-mapped, ``split``/``name`` honoured); ``where`` is ``path:row N`` (0-based,
  as in ``dataset[N]``). Image columns are read undecoded (path or bytes); Arrow's schema merging injects
  null keys into nested dicts, so they are dropped again here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from vlmtrain.errors import DataError
from vlmtrain.render.messages import drop_nulls

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SAVED_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class RawRow:
    """One input row before validation: ``row`` is None when the row could not even be parsed."""

    where: str
    row: dict[str, Any] | None
    error: DataError | None = None


def source_kind(path_text: str) -> str:
    """jsonl | json | parquet | saved (save_to_disk folder) | folder (data files) | hub."""
    path = Path(path_text)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if suffix in (".json", ".parquet"):
            return suffix[1:]
        raise DataError(f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json, .parquet or a "
                        "datasets folder", "config")
    if path.is_dir():
        return "saved" if any((path / m).exists() for m in SAVED_MARKERS) else "folder"
    return "hub"


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                message = f"{where}: malformed JSON ({err.msg} at column {err.colno}); fix or remove the line"
                yield RawRow(where, None, DataError(message, "malformed JSON"))
                continue
            if not isinstance(row, dict):
                message = (f"{where}: the line is a JSON {type(row).__name__}, not an object with a "
                           "messages/text field; fix the line")
                yield RawRow(where, None, DataError(message, "malformed JSON"))
                continue
            yield RawRow(where, row)


def _iter_json(path: Path) -> Iterator[RawRow]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines in a .json file
            yield from _iter_jsonl(path)
            return
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); fix the "
                        "file", "malformed JSON") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, found a JSON {type(data).__name__}",
                        "config")
    for i, row in enumerate(data):
        where = f"{path}:row {i}"
        if isinstance(row, dict):
            yield RawRow(where, row)
        else:
            message = f"{where}: the row is a JSON {type(row).__name__}, not an object; fix the row"
            yield RawRow(where, None, DataError(message, "malformed JSON"))


def _undecoded(feature: Any) -> Any:
    """Return ``feature`` with every ``Image`` left undecoded (path/bytes), so no pixels are read here."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List):
        return datasets.List(_undecoded(feature.feature), length=feature.length)
    if isinstance(feature, datasets.LargeList):
        return datasets.LargeList(_undecoded(feature.feature))
    if isinstance(feature, dict):
        return {k: _undecoded(v) for k, v in feature.items()}
    return feature


def _pick_split(loaded: Any, split: str, path: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r}; the dataset has {sorted(loaded)}: set "
                            "data.<split>[i].split", "config")
        return loaded[split]
    return loaded


def load_table(path: str, name: str | None, split: str, hf_cache: str) -> datasets.Dataset:
    """A parquet file, saved folder, data folder or hub dataset as a ``Dataset`` (images undecoded)."""
    kind = source_kind(path)
    try:
        if kind == "parquet":
            ds = datasets.load_dataset("parquet", data_files=[str(Path(path).resolve())], split="train",
                                       cache_dir=hf_cache)
        elif kind == "saved":
            ds = _pick_split(datasets.load_from_disk(path), split, path)
        else:
            ds = datasets.load_dataset(path, name=name, split=split,
                                       cache_dir=hf_cache if kind == "folder" else None)
    except DataError:
        raise
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
        hint = ("it is not a local file or folder, and not a dataset in the local hub cache (vlmtrain never "
                "downloads): check data.<split>[i].path") if kind == "hub" else "check its split/name"
        first = " ".join(str(err).split())[:200]
        raise DataError(f"data source {path!r} cannot be loaded ({first}); {hint}", "config") from err
    features = {k: _undecoded(v) for k, v in ds.features.items()}
    if features != dict(ds.features):
        ds = ds.cast(datasets.Features(features))
    return ds


def _iter_table(path: str, source: Any, hf_cache: str) -> Iterator[RawRow]:
    ds = load_table(path, source.name, source.split, hf_cache)
    for i, row in enumerate(ds):
        yield RawRow(f"{path}:row {i}", drop_nulls(row))


def iter_rows(source: Any, hf_cache: str) -> Iterator[RawRow]:
    """Every raw row of ``source`` in storage order (at most ``max_rows``); an empty source is an error."""
    path = str(source.path)
    kind = source_kind(path)
    if kind == "jsonl":
        rows = _iter_jsonl(Path(path))
    elif kind == "json":
        rows = _iter_json(Path(path))
    else:
        rows = _iter_table(path, source, hf_cache)
    count = 0
    for raw in rows:
        if source.max_rows is not None and count >= source.max_rows:
            return
        count += 1
        yield raw
    if count == 0:
        raise DataError(f"{path}: the source holds no rows; point data.<split>[i].path at a non-empty file",
                        "empty source")
