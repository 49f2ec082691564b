"""Videos given as lists of frame images (LLaMA-Factory's and LLaVA-Video's ``videos: [[f0.jpg, f1.jpg, ...]]``).

A row's frame list is written once to a content-addressed manifest (``<sha256>.frames.json`` under the media
folder), so a video item still refers to one local file and flows through the cache like any other; the video
kind reads the manifest. The frames are taken to be already sampled at ``data.video.fps`` (a frame list carries no
frame rate): all of them are used unless ``num_frames`` / ``max_frames`` ask for fewer, spread uniformly.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vlmtrain.errors import DataError, Reason
from vlmtrain.media import image

SUFFIX = ".frames.json"
DEFAULT_FPS = 2.0


def is_frame_list(path: str) -> bool:
    return path.endswith(SUFFIX)


def write_manifest(paths: list[str], media_dir: Path) -> str:
    """The manifest of ``paths`` (absolute, in order), written atomically once; its path."""
    text = json.dumps(paths, ensure_ascii=False)
    target = media_dir / "frames" / f"{hashlib.sha256(text.encode()).hexdigest()}{SUFFIX}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, target)
    return str(target)


def frame_paths(manifest: str, where: str) -> list[str]:
    try:
        paths = json.loads(Path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: frame list {manifest} cannot be read ({err}); rerun `vlmtrain preprocess`",
                        Reason.MISSING_VIDEO) from err
    return list(paths)


def clip_fps(sampling: Any) -> float:
    return float(sampling.fps) if sampling is not None and sampling.fps else DEFAULT_FPS


def probe_frames(manifest: str, where: str, sampling: Any, max_pixels: int | None) -> tuple[int, int, int]:
    """Decode every frame once (as images are probed); (width, height, sampled frame count)."""
    paths = frame_paths(manifest, where)
    if not paths:
        raise DataError(f"{where}: a video's frame list is empty; list its frame images or remove the row",
                        Reason.UNREADABLE_VIDEO)
    sizes = {image.probe_image(p, where, max_pixels) for p in paths}
    if len(sizes) > 1:
        raise DataError(f"{where}: a video's frames have {len(sizes)} different sizes ({sorted(sizes)[:3]} ...); "
                        "give frames of one size", Reason.UNREADABLE_VIDEO)
    seconds = len(paths) / clip_fps(sampling)
    if sampling.max_seconds is not None and seconds > sampling.max_seconds:
        raise DataError(f"{where}: a video of {len(paths)} frames at data.video.fps={clip_fps(sampling)} is "
                        f"{seconds:.1f} s long, over data.video.max_seconds={sampling.max_seconds}",
                        Reason.VIDEO_OVER_LIMIT)
    (width, height), = sizes
    out_w, out_h = sampling.frame_size(width, height)
    return out_w, out_h, sampling.count(len(paths), clip_fps(sampling))


def metadata(count: int, width: int, height: int, fps: float) -> dict[str, Any]:
    return {"total_num_frames": count, "fps": fps, "duration": count / fps, "frames_indices": list(range(count)),
            "width": width, "height": height, "video_backend": "frames"}


def load_frames(manifest: str, count: int, width: int, height: int, where: str) -> np.ndarray:
    """The sampled frames as (count, H, W, 3) uint8, resized to the probed size."""
    from vlmtrain.media.video import sample_indices

    paths = frame_paths(manifest, where)
    frames = []
    for index in sample_indices(len(paths), count):
        picture = image.open_image(paths[int(index)], where)
        if picture.size != (width, height):
            picture = picture.resize((width, height))
        frames.append(np.asarray(picture, dtype=np.uint8))
    return np.stack(frames)
