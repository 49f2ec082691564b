"""Videos as training needs them: probed once, sampled to a fixed frame count, decoded only where sampled.

Decoding is PyAV's (FFmpeg ships inside its wheel; transformers' ``load_video`` supports it as ``pyav``).
The probe decodes every frame once (a truncated file has a valid header and would otherwise fail
mid-training), checks the caps and records the *sampled* frame count and frame size in the item. Rendering
then stands in a blank clip of that many frames and that size (the processor's token count depends on those
alone), and the collator decodes the file once per use, converting only the sampled frames to RGB and
stopping after the last one. Which frames are sampled is a pure function of the file's frame count and the
sampled count (uniform over the clip), so probe, stand-in and load agree without storing the indices.

Every clip reaches the processor with its metadata (the sampled frame rate), so processors that compute
timestamps or temporal positions from it (Qwen2.5-VL's ``second_per_grid_ts``, Qwen3-VL) see the same values
at render time and at collate time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlmtrain.errors import DataError, Reason

BACKEND = "pyav"
FALLBACK: dict[str, Any] = {"fps": 2.0, "num_frames": None, "min_frames": 4, "max_frames": 768}  # Qwen's published


@dataclass(frozen=True)
class VideoSampling:
    """``data.video``: how many frames are sampled (transformers' names and rule), the size they are decoded at,
    and the length cap. ``num_frames`` wins over ``fps``; neither = every frame; the count is then clamped to
    ``[min_frames, max_frames]`` and to the frames the file has. A sampling field left None takes the video
    processor's own setting (``resolved``), else ``FALLBACK``."""

    fps: float | None = None
    num_frames: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    max_pixels: int | None = None  # frames above this many pixels are downscaled at decode (aspect kept)
    max_seconds: float | None = None  # a longer video is an error (or a counted skip)

    @classmethod
    def from_config(cls, video_cfg: Any) -> VideoSampling:
        if video_cfg is None:
            return cls()
        return cls(**{name: video_cfg.get(name, getattr(cls, name)) for name in cls.__dataclass_fields__})

    def resolved(self, video_processor: Any) -> VideoSampling:
        """Each sampling field the run left unset, from the model's video processor (Qwen3-VL's fps, GLM-4.1V's
        num_frames), else from ``FALLBACK``: the frames trained on are the ones the model's own pipeline takes."""
        values = {}
        for name, fallback in FALLBACK.items():
            mine, theirs = getattr(self, name), getattr(video_processor, name, None)
            values[name] = mine if mine is not None else theirs if theirs is not None else fallback
        return replace(self, **values)

    def count(self, total: int, source_fps: float) -> int:
        """Sampled frames for a file of ``total`` frames at ``source_fps`` (transformers' fps rule)."""
        if self.num_frames:
            n = int(self.num_frames)
        elif self.fps:
            n = max(1, int(total / source_fps * float(self.fps)))
        else:
            n = total
        n = max(n, int(self.min_frames or 1))
        if self.max_frames:
            n = min(n, int(self.max_frames))
        return max(1, min(n, total))

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """The decoded frame size: the file's, or downscaled to ``max_pixels`` (even sides, aspect kept)."""
        if not self.max_pixels or width * height <= self.max_pixels:
            return width, height
        scale = math.sqrt(self.max_pixels / (width * height))
        return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


@dataclass(frozen=True)
class VideoClip:
    """What the processor gets for one video: frames (n, H, W, 3) uint8 and the clip's metadata."""

    frames: np.ndarray
    metadata: dict[str, Any]


def sample_indices(total: int, count: int) -> np.ndarray:
    """``count`` frame indices spread uniformly over ``total`` frames, first and last included."""
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def _open(path: str, where: str) -> Any:
    import av

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{where}: video file not found: {path}; add the file or fix the path in the row",
                        Reason.MISSING_VIDEO)
    if file.stat().st_size == 0:
        raise DataError(f"{where}: video {path} is an empty (0-byte) file; replace it or remove the row",
                        Reason.UNREADABLE_VIDEO)
    try:
        container = av.open(path)
    except Exception as err:  # PyAV raises FFmpeg's many error types
        raise _unreadable(path, where, err) from err
    if not container.streams.video:
        container.close()
        raise DataError(f"{where}: {path} has no video stream; give a video file (mp4, webm, mkv, avi, ...) or "
                        "remove the row", Reason.UNREADABLE_VIDEO)
    return container


def _unreadable(path: str, where: str, err: Exception) -> DataError:
    message = " ".join(str(err).split()) or type(err).__name__
    return DataError(f"{where}: video {path} cannot be decoded ({message}); it is truncated or not a video: "
                     "re-encode it (e.g. to H.264 mp4) or remove the row", Reason.UNREADABLE_VIDEO)


def _source_fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _header_seconds(container: Any, stream: Any) -> float:
    """The duration the container declares (no decoding); 0 when it declares none."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else 0.0


def clip_metadata(path: str, count: int, width: int, height: int, where: str) -> dict[str, Any]:
    """The sampled clip's metadata, from the container header only (stand-in and load read the same values)."""
    with _open(path, where) as container:
        stream = container.streams.video[0]
        seconds, fps = _header_seconds(container, stream), _source_fps(stream)
    clip_fps = count / seconds if seconds > 0 else (fps or 1.0)
    return {"total_num_frames": count, "fps": clip_fps, "duration": count / clip_fps,
            "frames_indices": list(range(count)), "width": width, "height": height, "video_backend": BACKEND}


def _packet_count(container: Any, stream: Any) -> int:
    return sum(1 for packet in container.demux(stream) if packet.size)


def probe_video(path: str, where: str, sampling: VideoSampling, max_pixels: int | None) -> tuple[int, int, int]:
    """Decode every frame of ``path`` once; return (width, height, sampled frame count).

    One-line ``DataError`` for a missing, empty, unreadable, frameless, over-long or over-size video.
    """
    with _open(path, where) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise DataError(f"{where}: video {path} has {width}x{height} = {width * height} pixels per frame, over "
                            f"data.max_image_pixels={max_pixels}; downscale it, or raise data.max_image_pixels",
                            Reason.VIDEO_OVER_LIMIT)
        packets = decoded = 0
        sizes: set[tuple[int, int]] = set()
        try:
            for packet in container.demux(stream):
                packets += bool(packet.size)
                for frame in packet.decode():
                    decoded += 1
                    sizes.add((frame.width, frame.height))
        except Exception as err:
            raise _unreadable(path, where, err) from err
        fps = _source_fps(stream)
    if decoded == 0:
        raise DataError(f"{where}: video {path} has no frames that decode; re-encode it or remove the row",
                        Reason.UNREADABLE_VIDEO)
    if len(sizes) > 1:
        raise DataError(f"{where}: video {path} changes frame size mid-stream ({len(sizes)} sizes); re-encode it "
                        "to one size", Reason.UNREADABLE_VIDEO)
    if packets != decoded:
        raise DataError(f"{where}: video {path} has {packets} packets but {decoded} frames decode, so frames cannot "
                        "be sampled without decoding it whole; re-encode it (e.g. to H.264 mp4)",
                        Reason.UNREADABLE_VIDEO)
    if fps <= 0:
        raise DataError(f"{where}: video {path} declares no frame rate; re-encode it with one", Reason.UNREADABLE_VIDEO)
    seconds = decoded / fps
    if sampling.max_seconds is not None and seconds > sampling.max_seconds:
        raise DataError(f"{where}: video {path} is {seconds:.1f} s long, over data.video.max_seconds="
                        f"{sampling.max_seconds}; cut it, or raise data.video.max_seconds", Reason.VIDEO_OVER_LIMIT)
    (width, height), = sizes
    out_w, out_h = sampling.frame_size(width, height)
    return out_w, out_h, sampling.count(decoded, fps)


def blank_clip(path: str, count: int, width: int, height: int, where: str) -> VideoClip:
    """A black clip of the sampled length and size: the same tokens as the real one, no frame decoded."""
    return VideoClip(np.zeros((count, height, width, 3), dtype=np.uint8),
                     clip_metadata(path, count, width, height, where))


def load_clip(path: str, count: int, width: int, height: int, where: str) -> VideoClip:
    """Decode the sampled frames of ``path`` (collate time): one demux pass counts the frames, one decode pass
    converts only the sampled ones to RGB at the probed size and stops after the last."""
    with _open(path, where) as container:
        total = _packet_count(container, container.streams.video[0])
    if total == 0:
        raise DataError(f"{where}: video {path} has no frames now; it changed since it was probed: rerun "
                        "`vlmtrain preprocess`", Reason.UNREADABLE_VIDEO)
    wanted = sample_indices(total, count)
    frames: list[np.ndarray] = []
    with _open(path, where) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                hits = int(np.count_nonzero(wanted == index))
                if hits:
                    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                    frames.extend([rgb] * hits)
                if len(frames) == count:
                    break
        except Exception as err:
            raise _unreadable(path, where, err) from err
    if len(frames) != count:
        raise DataError(f"{where}: video {path} gave {len(frames)} of its {count} sampled frames; it changed since "
                        "it was probed: rerun `vlmtrain preprocess`", Reason.UNREADABLE_VIDEO)
    return VideoClip(np.stack(frames), clip_metadata(path, count, width, height, where))
