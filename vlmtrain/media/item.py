"""One media item of a row: its modality, the local file it comes from, and what probing it found.

Items flow unchanged from examples to rendering, the cache, the collator and ``inspect-mask``; each reader
asks the item's modality (``vlmtrain.media.kinds``) how to probe, stand in for or load it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class MediaItem:
    """``modality`` names a registered kind (``image``, ``video``); ``path`` is an absolute local path.

    ``width``/``height`` (upright pixels) and ``frames`` are 0 until the item is probed; ``fps`` is the frame
    rate of a video given as a list of frame images (a file's rate comes from its container: 0 here).
    """

    modality: str
    path: str
    width: int = 0
    height: int = 0
    frames: int = 0
    fps: float = 0.0

    @property
    def probed(self) -> bool:
        return self.width > 0 and self.height > 0

    def with_probe(self, width: int, height: int, frames: int = 0, fps: float = 0.0) -> MediaItem:
        return replace(self, width=int(width), height=int(height), frames=int(frames), fps=float(fps))

    def to_record(self) -> dict[str, Any]:
        return {"modality": self.modality, "path": self.path, "width": self.width, "height": self.height,
                "frames": self.frames, "fps": self.fps}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MediaItem:
        return cls(modality=str(record["modality"]), path=str(record["path"]), width=int(record.get("width") or 0),
                   height=int(record.get("height") or 0), frames=int(record.get("frames") or 0),
                   fps=float(record.get("fps") or 0.0))


def arrow_feature() -> Any:
    """The ``datasets`` feature of a list of items (one column, whatever the modalities)."""
    import datasets

    return datasets.List({"modality": datasets.Value("string"), "path": datasets.Value("string"),
                          "width": datasets.Value("int32"), "height": datasets.Value("int32"),
                          "frames": datasets.Value("int32"), "fps": datasets.Value("float32")})
