"""The registered media modalities: how each is probed, stood in for at render time, and loaded at collate time.

Adding a modality (audio, ...) is one ``MediaKind`` entry in ``MODALITIES`` plus its test: examples, rendering,
the cache, the collator and ``inspect-mask`` only ever go through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from vlmtrain.errors import DataError, Reason
from vlmtrain.media import frames, image, video
from vlmtrain.media.item import MediaItem


@dataclass(frozen=True)
class MediaLimits:
    """Per-run caps every probe enforces (from the ``data`` config)."""

    max_image_pixels: int | None = 178956970
    video: video.VideoSampling = video.VideoSampling()  # data.video: frame sampling, decode size, length cap

    @classmethod
    def from_config(cls, data_cfg: Any) -> MediaLimits:
        return cls(max_image_pixels=data_cfg.max_image_pixels,
                   video=video.VideoSampling.from_config(data_cfg.get("video")))

    def resolved(self, processing_class: Any) -> MediaLimits:
        """The caps with the video sampling the run left unset taken from the model's video processor."""
        return replace(self, video=self.video.resolved(getattr(processing_class, "video_processor", None)))


class MediaKind(Protocol):
    """One modality. ``part_type`` is the content part chat templates read (``{"type": "image"}``);
    ``processor_arg`` the keyword the processor takes a batch of them under (``images=``)."""

    name: str
    part_type: str
    processor_arg: str

    def supported_by(self, processing_class: Any) -> bool: ...

    def probe(self, item: MediaItem, where: str, limits: MediaLimits) -> MediaItem: ...

    def stand_in(self, item: MediaItem) -> Any: ...

    def load(self, item: MediaItem, where: str) -> Any: ...


@dataclass(frozen=True)
class ImageKind:
    """Still images: decoded once to validate and size them; a blank image of that size expands to the same
    number of tokens, so rendering never decodes pixels again."""

    name: str = "image"
    part_type: str = "image"
    processor_arg: str = "images"

    def supported_by(self, processing_class: Any) -> bool:
        return getattr(processing_class, "image_processor", None) is not None

    def probe(self, item: MediaItem, where: str, limits: MediaLimits) -> MediaItem:
        width, height = image.probe_image(item.path, where, limits.max_image_pixels)
        return item.with_probe(width, height)

    def stand_in(self, item: MediaItem) -> Any:
        return image.blank_image((item.width, item.height))

    def load(self, item: MediaItem, where: str) -> Any:
        return image.open_image(item.path, where)


@dataclass(frozen=True)
class VideoKind:
    """Video files: probed once (every frame decoded, the sampled count and frame size recorded); a black clip
    of that length and size stands in at render time; the collator decodes only the sampled frames. Each clip
    goes to the processor with its metadata (``video_metadata=``), pre-sampled."""

    name: str = "video"
    part_type: str = "video"
    processor_arg: str = "videos"

    def supported_by(self, processing_class: Any) -> bool:
        return getattr(processing_class, "video_processor", None) is not None

    def probe(self, item: MediaItem, where: str, limits: MediaLimits) -> MediaItem:
        if frames.is_frame_list(item.path):
            width, height, count = frames.probe_frames(item.path, where, limits.video, limits.max_image_pixels)
            return item.with_probe(width, height, count, frames.clip_fps(limits.video))
        width, height, count = video.probe_video(item.path, where, limits.video, limits.max_image_pixels)
        return item.with_probe(width, height, count)

    def _frame_list_clip(self, item: MediaItem, pixels: np.ndarray) -> video.VideoClip:
        return video.VideoClip(pixels, frames.metadata(item.frames, item.width, item.height, item.fps))

    def stand_in(self, item: MediaItem) -> Any:
        if frames.is_frame_list(item.path):
            blank = np.zeros((item.frames, item.height, item.width, 3), dtype=np.uint8)
            return self._frame_list_clip(item, blank)
        return video.blank_clip(item.path, item.frames, item.width, item.height, item.path)

    def load(self, item: MediaItem, where: str) -> Any:
        if frames.is_frame_list(item.path):
            return self._frame_list_clip(item, frames.load_frames(item.path, item.frames, item.width, item.height,
                                                                  where))
        return video.load_clip(item.path, item.frames, item.width, item.height, where)

    def batch_inputs(self, clips: list[list[Any]]) -> dict[str, list[list[Any]]]:
        # vlmtrain sampled the frames (data.video) and the processor must not sample them again: Qwen3-VL's
        # and GLM-4.1V's video processors default to re-sampling, which would silently drop frames.
        return {self.processor_arg: [[c.frames for c in row] for row in clips],
                "video_metadata": [[c.metadata for c in row] for row in clips], "do_sample_frames": False}


MODALITIES: dict[str, MediaKind] = {kind.name: kind for kind in (ImageKind(), VideoKind())}
PART_TYPES: dict[str, str] = {kind.part_type: kind.name for kind in MODALITIES.values()}


def kind_of(modality: str) -> MediaKind:
    try:
        return MODALITIES[modality]
    except KeyError:
        raise DataError(f"unknown media modality {modality!r}; vlmtrain supports {', '.join(MODALITIES)}",
                        Reason.UNSUPPORTED_CONTENT) from None


def check_supported(items: Sequence[MediaItem], processing_class: Any, is_processor: bool, where: str) -> None:
    """A modality the model's processor cannot take is an error naming the row, never dropped."""
    for modality in dict.fromkeys(item.modality for item in items):
        kind = kind_of(modality)
        if not is_processor or not kind.supported_by(processing_class):
            what = "the model is text-only (no processor)" if not is_processor else \
                f"its processor ({type(processing_class).__name__}) takes no {modality}s"
            count = sum(item.modality == modality for item in items)
            raise DataError(f"{where}: the row has {count} {modality}(s) but {what}; remove them or use a model "
                            f"whose processor takes {modality}s", Reason.MEDIA_NOT_SUPPORTED)


def processor_inputs(rows: Sequence[Sequence[MediaItem]],
                     materialize: Callable[[MediaKind, MediaItem, int], Any]) -> dict[str, list[list[Any]]]:
    """Processor keywords for a batch: ``{"images": [[row 0's images], [row 1's], ...], "videos": ...}``,
    one entry per modality present in the batch, each item made by ``materialize(kind, item, row_index)``."""
    out: dict[str, list[list[Any]]] = {}
    present = dict.fromkeys(item.modality for row in rows for item in row)
    for modality in present:
        kind = kind_of(modality)
        values = [[materialize(kind, item, i) for item in row if item.modality == modality]
                  for i, row in enumerate(rows)]
        # A kind whose processor input needs more than one keyword (video: frames + metadata) splits its own.
        split = getattr(kind, "batch_inputs", None)
        out.update(split(values) if split is not None else {kind.processor_arg: values})
    return out


def stand_ins(rows: Sequence[Sequence[MediaItem]]) -> dict[str, list[list[Any]]]:
    """Inputs that expand to the same tokens as the real media, without decoding them (render time)."""
    return processor_inputs(rows, lambda kind, item, _: kind.stand_in(item))


def loaded(rows: Sequence[Sequence[MediaItem]], wheres: Sequence[str]) -> dict[str, list[list[Any]]]:
    """Decoded media for the processor (collate time); errors name the row."""
    return processor_inputs(rows, lambda kind, item, i: kind.load(item, wheres[i]))
