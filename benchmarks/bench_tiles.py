"""Benchmark — the OCR tile cache: tiling pages cold (empty cache: decode, cut, resize, write PNGs) vs warm (hit).

Pages are A4 at 150 dpi (1240x1754, portrait -> 2x3 grid + overview, 448 px tiles), drawn with text at run time.
Each repeat is a fresh ``TileCache`` (a new process's counters); cold repeats start from an empty folder, warm
ones reuse the folder the cold pass wrote. The warm path reads the manifest and checks each tile's size, and
never decodes the page. Target: warm <= 10% of cold per page.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import common
from common import Figure, Report, median


def pages(folder: Path, count: int) -> list[Path]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"page{i:03d}.png"
        if not path.exists():
            image = Image.new("RGB", (1240, 1754), "white")
            draw = ImageDraw.Draw(image)
            for y in range(40, 1700, 18):
                draw.text((60, y), f"page {i} line {y}: the quick brown fox jumps over the lazy dog " * 2,
                          fill="black")
            image.save(path)
        out.append(path)
    return out


def tile_all(paths: list[Path], cache_dir: Path) -> tuple[float, int, int]:
    from omegaconf import OmegaConf

    from vlmtrain.config.schema import ImageTransformConfig
    from vlmtrain.media import MediaItem
    from vlmtrain.media.tiling import TileCache, TilingPolicy, tile_image

    node = OmegaConf.structured(ImageTransformConfig(type="tiling", tile_size=448))
    policy = TilingPolicy.from_config(node, str(cache_dir))
    cache = TileCache(cache_dir)
    start = time.perf_counter()
    for path in paths:
        item = MediaItem("image", str(path), 1240, 1754)
        tiles = tile_image(policy, cache, item.path, path.name)
        assert len(tiles) == 7
    return time.perf_counter() - start, cache.hits, cache.misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common.quiet()
    report = Report("tiles", f"tile cache, {args.pages} A4 pages at 150 dpi (2x3 + overview, 448 px), cold vs warm")
    report.settings = {"pages": args.pages, "repeats": args.repeats}
    paths = pages(common.WORK / "tile-pages", args.pages)
    cache_dir = common.WORK / "tile-cache"
    cold, warm = [], []
    for _ in range(args.repeats):
        shutil.rmtree(cache_dir, ignore_errors=True)
        seconds, hits, misses = tile_all(paths, cache_dir)
        assert (hits, misses) == (0, args.pages)
        cold.append(seconds / args.pages)
        seconds, hits, misses = tile_all(paths, cache_dir)
        assert (hits, misses) == (args.pages, 0)
        warm.append(seconds / args.pages)
    c, w = median(cold), median(warm)
    ratio = w / c
    report.add(Figure("warm tiling per page", w * 1000, "ms", c * 1000, ratio, "<= 0.10x cold", ratio <= 0.10))
    size = sum(p.stat().st_size for p in cache_dir.rglob("*.png")) / args.pages / 1e6
    report.note(f"cold {c * 1000:.1f} ms/page, warm {w * 1000:.2f} ms/page; tile files {size:.2f} MB per page")
    report.finish(f"warm/cold {ratio:.3f} ({common.status(ratio <= 0.10)}, <=0.10): cold {c * 1000:.1f} ms/page, "
                  f"warm {w * 1000:.2f} ms/page")


if __name__ == "__main__":
    main()
