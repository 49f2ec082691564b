"""OCR tiling: a page becomes an overview plus a shape-bucketed grid of tiles, so small text stays legible.

The policy (``TilingPolicy``) is validated once from ``data.image_transform`` at start-up; the tiles of one
source image are cut once and kept in a persistent cache (``TileCache``) whose key is the source's identity
(path + size + mtime, or its sha256), the policy's pixel-relevant settings and the cache format. The derived
items point at the cached PNGs, so probing, stand-ins (render-time token counts) and collate-time loading treat a
tile like any other image file: the token counts of the cache and the pixels of the collator come from the same
files and cannot disagree.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PIL
from PIL import Image, ImageOps

from vlmtrain.errors import ConfigError, DataError, Reason
from vlmtrain.media.image import open_image

TILE_FORMAT = 1  # bump when the files a policy produces change for the same settings
MANIFEST = "tiles.json"  # written last: a folder without it is never used
WHITE = (255, 255, 255)
GLOBAL_LABEL = "<global_img>"
KEY = "data.image_transform"


def tile_label(row: int, col: int) -> str:
    """1-based; columns are numbered left to right whatever the script's reading direction."""
    return f"<row{row}_col{col}>"


@dataclass(frozen=True)
class Bucket:
    """Images with width/height >= ``min_aspect`` (and below the next bucket's) get ``cols`` x ``rows`` tiles."""

    min_aspect: float
    cols: int
    rows: int


PRESETS: dict[str, tuple[Bucket, ...]] = {
    # landscape 3x2, portrait 2x3, tall (narrower than 0.6: receipts, long scans) 2x4
    "ocr_pages": (Bucket(1.0, 3, 2), Bucket(0.6, 2, 3), Bucket(0.0, 2, 4)),
}


def _buckets(value: Any) -> tuple[Bucket, ...]:
    if isinstance(value, str):
        if value not in PRESETS:
            raise ConfigError(f"{KEY}.buckets: unknown preset {value!r}; use one of {', '.join(PRESETS)} or a "
                              "list of {min_aspect, cols, rows}")
        return PRESETS[value]
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{KEY}.buckets: expected a preset name or a non-empty list of {{min_aspect, cols, "
                          f"rows}}, got {value!r}")
    out = []
    for i, entry in enumerate(value):
        try:
            bucket = Bucket(float(entry["min_aspect"]), int(entry["cols"]), int(entry["rows"]))
            extra = set(entry) - {"min_aspect", "cols", "rows"}
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{KEY}.buckets[{i}]: expected {{min_aspect: float, cols: int, rows: int}}, got "
                              f"{entry!r}") from err
        if extra:
            raise ConfigError(f"{KEY}.buckets[{i}]: unknown key(s) {', '.join(sorted(map(str, extra)))}; a bucket "
                              "has min_aspect, cols, rows")
        if bucket.cols < 1 or bucket.rows < 1 or bucket.min_aspect < 0:
            raise ConfigError(f"{KEY}.buckets[{i}]: cols and rows must be >= 1 and min_aspect >= 0, got {entry!r}")
        out.append(bucket)
    ordered = tuple(sorted(out, key=lambda b: -b.min_aspect))
    if ordered[-1].min_aspect != 0:
        raise ConfigError(f"{KEY}.buckets: no bucket takes images with width/height below "
                          f"{ordered[-1].min_aspect}; give one bucket min_aspect: 0")
    if len({b.min_aspect for b in ordered}) != len(ordered):
        raise ConfigError(f"{KEY}.buckets: two buckets share a min_aspect; each aspect range needs one grid")
    return ordered


@dataclass(frozen=True)
class TilingPolicy:
    """Validated tiling settings; ``max_tile_pixels`` is resolved against the processor (``bind``)."""

    buckets: tuple[Bucket, ...]
    overlap: float = 0.0
    tile_size: int = 448
    native_resolution: bool = False
    max_tile_pixels: int | None = None
    overview: bool = True
    labels: bool = True
    min_area: int = 448 * 448
    hash_source: bool = False
    cache_dir: str = ""

    @classmethod
    def from_config(cls, node: Any, cache_dir: str) -> TilingPolicy:
        """``data.image_transform`` -> policy; every bad value is a start-up ConfigError naming its key."""
        overlap, tile_size = float(node.overlap), int(node.tile_size)
        if not 0.0 <= overlap < 0.5:
            raise ConfigError(f"{KEY}.overlap: {overlap} is outside [0, 0.5); it is the fraction of a tile its "
                              "neighbour shares")
        if tile_size < 1:
            raise ConfigError(f"{KEY}.tile_size: must be >= 1, got {tile_size}")
        cap = node.max_tile_pixels
        if cap is not None and int(cap) < 1:
            raise ConfigError(f"{KEY}.max_tile_pixels: must be >= 1 (or null = the processor's max pixels)")
        min_area = tile_size * tile_size if node.min_area is None else int(node.min_area)
        if min_area < 0:
            raise ConfigError(f"{KEY}.min_area: must be >= 0 (0 tiles every image), got {min_area}")
        return cls(buckets=_buckets(node.buckets), overlap=overlap, tile_size=tile_size,
                   native_resolution=bool(node.native_resolution), max_tile_pixels=None if cap is None else int(cap),
                   overview=bool(node.overview), labels=bool(node.labels), min_area=min_area,
                   hash_source=bool(node.hash_source), cache_dir=cache_dir)

    def payload(self) -> dict[str, Any]:
        """What decides the tiles' pixels and labels (the tile-cache key); not where the cache lives."""
        out = asdict(self)
        out.pop("cache_dir")
        out.pop("hash_source")
        if not self.native_resolution:
            out.pop("max_tile_pixels")
        return out

    def grid(self, width: int, height: int) -> tuple[int, int]:
        aspect = width / height
        bucket = next(b for b in self.buckets if aspect >= b.min_aspect)
        return bucket.cols, bucket.rows

    def tiles(self, width: int, height: int) -> bool:
        """Whether an image of this size is tiled (smaller ones, and ones narrower than their grid, stay whole)."""
        cols, rows = self.grid(width, height)
        return width * height >= self.min_area and width >= cols and height >= rows


def spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` intervals covering ``[0, length)``, neighbours sharing ``overlap`` of a tile."""
    size = length / (count - (count - 1) * overlap)
    step = size * (1 - overlap)
    out = []
    for i in range(count):
        start = round(i * step)
        end = length if i == count - 1 else min(length, round(i * step + size))
        out.append((start, max(end, start + 1)))
    return out


def boxes(policy: TilingPolicy, width: int, height: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, crop box) of every tile, row-major: row 1 left to right, then row 2, ..."""
    cols, rows = policy.grid(width, height)
    xs, ys = spans(width, cols, policy.overlap), spans(height, rows, policy.overlap)
    return [(tile_label(r + 1, c + 1), (x0, y0, x1, y1))
            for r, (y0, y1) in enumerate(ys) for c, (x0, x1) in enumerate(xs)]


def _capped(image: Image.Image, max_pixels: int) -> Image.Image:
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)


def cut(policy: TilingPolicy, page: Image.Image) -> list[tuple[str, Image.Image]]:
    """(label, image) of the overview (first, when on) and every tile of an upright RGB page."""
    crops = [(label, page.crop(box)) for label, box in boxes(policy, *page.size)]
    if policy.native_resolution:
        assert policy.max_tile_pixels is not None, "bind() resolves the cap before tiling"
        tiles = [(label, _capped(crop, policy.max_tile_pixels)) for label, crop in crops]
        overview = _capped(page, max(t.width * t.height for _, t in tiles))
    else:
        size = (policy.tile_size, policy.tile_size)
        tiles = [(label, ImageOps.pad(crop, size, color=WHITE)) for label, crop in crops]
        overview = ImageOps.pad(page, size, color=WHITE)
    return [(GLOBAL_LABEL, overview), *tiles] if policy.overview else tiles


def source_identity(path: str, hash_content: bool) -> dict[str, Any]:
    """path + size + mtime (catches every edit that touches the file), or the content's sha256."""
    p = Path(path)
    if hash_content:
        h = hashlib.sha256()
        with p.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        return {"path": str(p.resolve()), "sha256": h.hexdigest()}
    stat = p.stat()
    return {"path": str(p.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(frozen=True)
class Tile:
    label: str
    path: str
    width: int
    height: int


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class TileCache:
    """One folder per key under ``root``; built in a temporary folder and renamed into place when complete.

    ``hits`` / ``misses`` count this process's lookups (``benchmarks/bench_tiles.py``, the tests).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(identity: dict[str, Any], payload: dict[str, Any]) -> str:
        blob = {"source": identity, "policy": payload, "format": TILE_FORMAT, "pillow": PIL.__version__}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _read(self, key: str) -> list[Tile] | None:
        folder = self.folder(key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("key") != key or manifest.get("format") != TILE_FORMAT:
            return None
        tiles = []
        for entry in manifest.get("tiles", []):
            path = folder / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return None
            tiles.append(Tile(entry["label"], str(path), int(entry["width"]), int(entry["height"])))
        return tiles or None

    def get(self, key: str, make: Callable[[], list[tuple[str, Image.Image]]], meta: dict[str, Any]) -> list[Tile]:
        """The cached tiles of ``key``, or ``make()``'s, written atomically (a concurrent writer's win is kept)."""
        found = self._read(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        final = self.folder(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            entries = []
            for i, (label, image) in enumerate(make()):
                name = f"{i:03d}.png"
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", compress_level=1)
                _fsync_write(tmp / name, buffer.getvalue())
                entries.append({"label": label, "file": name, "width": image.width, "height": image.height,
                                "bytes": len(buffer.getvalue())})
            manifest = {"key": key, "format": TILE_FORMAT, **meta, "tiles": entries}
            _fsync_write(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            if final.exists():  # a broken folder (killed writer, edited files) or a concurrent writer's
                if self._read(key) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._read(key) or []
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if self._read(key) is not None:  # another process renamed its copy in first
                return self._read(key) or []
            raise DataError(f"{KEY}: cannot write the tile cache at {final} ({err}); check free space and "
                            f"permissions or set {KEY}.cache_dir", Reason.CACHE) from err
        tiles = self._read(key)
        assert tiles is not None
        return tiles


def tile_image(policy: TilingPolicy, cache: TileCache, path: str, where: str) -> list[Tile]:
    """The tiles of the image at ``path`` (upright: EXIF orientation applied), from the cache when present."""
    identity = source_identity(path, policy.hash_source)
    payload = policy.payload()
    return cache.get(TileCache.key(identity, payload), lambda: cut(policy, open_image(path, where)),
                     {"source": identity, "policy": payload})
