"""The image-transform seam: one image becomes N images (and text labels between them) before rendering.

``data.image_transform`` is validated at start-up (``transform_from_config``: an unknown or unavailable type is a
``ConfigError``; there is no second switch that could leave it off). Every row is rendered through
``vlmtrain.data.transformed`` — the cache, the packing plan, streaming and ``inspect-mask`` all go through
``render_example`` — and the row stores the *derived* items (cached tile files), so the collator loads exactly
the images whose token counts the cache holds. The transform's settings are part of the cache key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from vlmtrain.errors import ConfigError
from vlmtrain.media.item import MediaItem
from vlmtrain.media.tiling import KEY, TileCache, TilingPolicy, tile_image

Derived = tuple[str | None, MediaItem]  # (text label written before the item, or None; the item)


class ImageTransform(Protocol):
    """Maps one probed item to the probed items that replace it (``[(None, item)]``: unchanged)."""

    name: str

    def apply(self, item: MediaItem, where: str) -> list[Derived]: ...


@dataclass(frozen=True)
class TransformSpec:
    """What the build settings carry: the validated settings, bound to the processor in each process."""

    type: str
    policy: TilingPolicy


# type -> validator of its settings; ``none`` (no transform) is not an entry.
BUILDERS = {"tiling": TilingPolicy.from_config}


def tile_cache_dir(node: Any, data_cfg: Any) -> str:
    """``data.image_transform.cache_dir``, else ``<data.cache_dir>/tiles``, else ``$VLMTRAIN_HOME/tiles``."""
    if node.get("cache_dir"):
        return str(Path(str(node.cache_dir)).expanduser().resolve())
    if data_cfg.get("cache_dir"):
        return str((Path(str(data_cfg.cache_dir)).expanduser() / "tiles").resolve())
    from vlmtrain.paths import home

    return str((home() / "tiles").resolve())


def transform_from_config(data_cfg: Any) -> TransformSpec | None:
    """``data.image_transform`` -> a validated spec (None for ``type: none``); bad settings fail here."""
    node = data_cfg.get("image_transform")
    kind = "none" if node is None else str(node.get("type", "none"))
    if kind == "none":
        return None
    builder = BUILDERS.get(kind)
    if builder is None:
        raise ConfigError(f"{KEY}.type: {kind!r} is not an available image transform; use one of "
                          f"none, {', '.join(BUILDERS)}")
    return TransformSpec(kind, builder(node, tile_cache_dir(node, data_cfg)))


def processor_max_pixels(processing_class: Any) -> int | None:
    """The most pixels the processor keeps of one image, when it declares it (Qwen-VL's ``size.longest_edge`` is
    an area; a side cap bounds the area by its square)."""
    image_processor = getattr(processing_class, "image_processor", None)
    if image_processor is None:
        return None
    direct = getattr(image_processor, "max_pixels", None)
    if isinstance(direct, int) and direct > 0:
        return direct
    size = getattr(image_processor, "size", None) or {}
    get = size.get if hasattr(size, "get") else (lambda k, d=None: getattr(size, k, d))
    if isinstance(get("max_pixels"), int):
        return int(get("max_pixels"))
    longest = get("longest_edge")
    if isinstance(longest, int) and longest > 0:
        area_semantics = hasattr(image_processor, "temporal_patch_size") and hasattr(image_processor, "merge_size")
        return longest if area_semantics else longest * longest
    return None


@dataclass
class TilingTransform:
    """``type: tiling``: an image at least ``min_area`` large -> overview + grid tiles (``vlmtrain.media.tiling``)."""

    policy: TilingPolicy
    cache: TileCache
    name: str = "tiling"

    def apply(self, item: MediaItem, where: str) -> list[Derived]:
        if item.modality != "image" or not self.policy.tiles(item.width, item.height):
            return [(None, item)]
        tiles = tile_image(self.policy, self.cache, item.path, where)
        return [(t.label if self.policy.labels else None, MediaItem("image", t.path, t.width, t.height))
                for t in tiles]


@functools.lru_cache(maxsize=8)
def _bound(spec: TransformSpec, cap: int | None) -> TilingTransform:
    policy = replace(spec.policy, max_tile_pixels=cap)
    return TilingTransform(policy, TileCache(Path(policy.cache_dir)))


def bind(spec: TransformSpec, processing_class: Any) -> TilingTransform:
    """The transform for this processor (one per process and settings, so its cache counters accumulate)."""
    cap = spec.policy.max_tile_pixels
    if spec.policy.native_resolution and cap is None:
        cap = processor_max_pixels(processing_class)
        if cap is None:
            raise ConfigError(f"{KEY}.native_resolution: the processor ({type(processing_class).__name__}) declares "
                              f"no max pixels to cap native tiles at; set {KEY}.max_tile_pixels")
    return _bound(spec, cap if spec.policy.native_resolution else None)


def expand_parts(messages: Sequence[dict], derived: Sequence[list[Derived]], part_types: Sequence[str]
                 ) -> list[dict]:
    """Each media part becomes one part per derived item, its label (if any) a text part just before it."""
    out, k = [], 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts: list[dict] = []
        for part in content:
            if part.get("type") not in part_types:
                parts.append(part)
                continue
            for label, _ in derived[k]:
                if label:
                    parts.append({"type": "text", "text": label})
                parts.append(part)
            k += 1
        out.append({**message, "content": parts})
    return out


def expand_text(text: str, slots: Sequence[str | None], derived: Sequence[list[Derived]]) -> str | None:
    """Pretraining text: the k-th image slot (a template snippet, else the placeholder) is repeated once per
    derived item, each copy after its label. None when the slots do not match the images one to one (the
    attributor then reports the mismatch)."""
    names = [s for s in dict.fromkeys(slots) if s]
    if not names:
        return None
    matches = list(re.finditer("|".join(re.escape(s) for s in names), text))
    if len(matches) != len(derived):
        return None
    pieces, pos = [], 0
    for match, items in zip(matches, derived, strict=True):
        pieces.append(text[pos:match.start()])
        pieces.append("".join((label or "") + match.group(0) for label, _ in items))
        pos = match.end()
    pieces.append(text[pos:])
    return "".join(pieces)
