"""A synthetic coloured-shapes image+text dataset that a tiny model can overfit.

Answers are a deterministic function of the pictured shape and colour, so loss going to ~0 on it is
a meaningful end-to-end check of image placement, masking and labels.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .corpus import COLORS, SHAPES

_RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 20),
        "purple": (140, 50, 170), "orange": (245, 140, 20)}
_SIZES = ((32, 32), (40, 40), (48, 48), (48, 32), (32, 48))


def _draw(shape: str, color: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    side = rng.randint(int(min(w, h) * 0.55), int(min(w, h) * 0.8))
    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=_RGB[color])
    elif shape == "square":
        draw.rectangle(box, fill=_RGB[color])
    else:
        corners = [(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)]
        draw.polygon(corners, fill=_RGB[color])
    return img


def _name(color: str, shape: str) -> str:
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def _user(n_images: int, text: str) -> dict:
    return {"role": "user", "content": [*[{"type": "image"}] * n_images, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _messages(kind: int, objs: list[tuple[str, str]]) -> list[dict]:
    """Four row layouts: 1 or 2 turns, 1 or 2 images; each image part consumes the next `images` entry."""
    first = _name(*objs[0])
    if kind == 0:
        return [_user(1, "What shape is this?"), _assistant(f"{first.capitalize()}.")]
    if kind == 1:
        return [_user(1, "What shape is this?"), _assistant(f"{first.capitalize()}."),
                _user(0, "What color is it?"), _assistant(f"{objs[0][0].capitalize()}.")]
    second = _name(*objs[1])
    if kind == 2:
        return [_user(2, "What shapes are these?"), _assistant(f"{first.capitalize()} and {second}.")]
    return [_user(1, "What shape is this?"), _assistant(f"{first.capitalize()}."),
            _user(1, "And this one?"), _assistant(f"{second.capitalize()}.")]


MARKER = ".shapes_complete.json"
_VERSION = 1  # bump when the generator's output changes


def _complete(out_dir: Path, spec: dict) -> bool:
    try:
        return json.loads((out_dir / MARKER).read_text()) == spec and (out_dir / "train.jsonl").is_file()
    except (OSError, ValueError):
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_shapes_dataset(out_dir: str | Path, *, rows: int = 48, seed: int = 0) -> Path:
    """Write out_dir/train.jsonl and out_dir/images/NNNN.png; returns the jsonl path.

    Idempotent: a complete dataset with the same ``rows`` and ``seed`` is never rewritten, because the data
    cache key includes the file's mtime (every torchrun rank materialises the embedded default and must compute
    the same key). Files are written atomically and the completion marker last, so a build killed halfway is
    redone, never reused. Concurrent builders must hold a lock (``vlmtrain.embedded.materialize`` does).
    """
    out_dir = Path(out_dir)
    path = out_dir / "train.jsonl"
    spec = {"rows": rows, "seed": seed, "version": _VERSION}
    if _complete(out_dir, spec):
        return path
    (out_dir / MARKER).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_image = 0
    lines = []
    for row in range(rows):
        kind = row % 4
        objs = [(rng.choice(COLORS), rng.choice(SHAPES)) for _ in range(1 if kind < 2 else 2)]
        paths = []
        for color, shape in objs:
            rel = f"images/{n_image:04d}.png"
            image = _draw(shape, color, rng.choice(_SIZES), rng)
            tmp = out_dir / f"images/.{n_image:04d}.tmp-{os.getpid()}.png"
            image.save(tmp)
            os.replace(tmp, out_dir / rel)
            paths.append(rel)
            n_image += 1
        lines.append(json.dumps({"messages": _messages(kind, objs), "images": paths}))
    _write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    _write_atomic(out_dir / MARKER, json.dumps(spec).encode())
    return path
