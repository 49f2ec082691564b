"""Images as training needs them: validated once, sized from the file, converted to RGB the right way.

Token expansion only needs each image's size, so rendering uses a blank image of that size (the processor's
token count depends on the size alone); pixels are decoded again at collate time. Every image is still fully
decoded once when its row is first rendered (and by ``preprocess --check``), because a truncated file has a
valid header and would otherwise only fail mid-training.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vlmtrain.errors import DataError, Reason

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_WHITE = (255, 255, 255)


@contextlib.contextmanager
def _pillow_guard_above(max_pixels: int | None) -> Iterator[None]:
    """Let Pillow's own decompression-bomb guard (a module global) pass what ``max_pixels`` allows, for one
    probe only; vlmtrain applies ``max_pixels`` itself and restores Pillow's setting afterwards."""
    original = Image.MAX_IMAGE_PIXELS
    if original is not None and (max_pixels is None or max_pixels > 2 * original):
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = original


def _source(ref: str | bytes) -> str | io.BytesIO:
    return io.BytesIO(ref) if isinstance(ref, bytes) else ref


def _label(ref: str | bytes) -> str:
    return "embedded image" if isinstance(ref, bytes) else f"image {ref}"


def probe_image(ref: str | bytes, where: str, max_pixels: int | None) -> tuple[int, int]:
    """Fully decode ``ref`` (a path or the file's bytes) once and return its upright (width, height).

    Raises a one-line ``DataError`` for a missing, empty, unreadable, truncated or over-limit image.
    """
    label = _label(ref)
    if isinstance(ref, str):
        path = Path(ref)
        if not path.is_file():
            raise DataError(f"{where}: image file not found: {ref}; add the file or fix the path in the row",
                            Reason.MISSING_MEDIA)
        if path.stat().st_size == 0:
            raise DataError(f"{where}: {label} is an empty (0-byte) file; replace it or remove the row",
                            Reason.UNREADABLE_MEDIA)
    try:
        with warnings.catch_warnings(), _pillow_guard_above(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below, as an error
            with Image.open(_source(ref)) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise DataError(
                        f"{where}: {label} has {width}x{height} = {width * height} pixels, over "
                        f"data.max_image_pixels={max_pixels} (Pillow's decompression-bomb guard); downscale "
                        "it, or raise data.max_image_pixels if you trust the file", Reason.MEDIA_OVER_LIMIT)
                image.load()
                orientation = image.getexif().get(0x0112)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{where}: {label} is over Pillow's decompression-bomb limit ({err}); downscale it, "
                        "or raise data.max_image_pixels if you trust the file", Reason.MEDIA_OVER_LIMIT
                        ) from err
    except Exception as err:  # Pillow raises many types for corrupt data
        message = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{where}: {label} cannot be decoded ({message}); it is truncated or not an image: "
                        "re-export it as PNG/JPEG or remove the row", Reason.UNREADABLE_MEDIA) from err
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def blank_image(size: tuple[int, int]) -> Image.Image:
    """An RGB image of ``size`` for media expansion: same token count as the real one, no pixel decoding."""
    return Image.new("RGB", size)


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit grayscale -> 8-bit, scaling the range (a plain convert clips everything above 255)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or values.max(initial=0) > 255:
        top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    else:
        top = 255.0
    scaled = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha over white, palettes expanded, CMYK and high bit depths mapped.

    Animated images keep their first frame (the one ``Image.open`` decodes).
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _scale_to_8bit(image)
    if image.mode in ("RGBa", "La"):
        image = image.convert("RGBA")
    if "A" in image.getbands():
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | bytes, where: str = "") -> Image.Image:
    """Decode an image for the processor (collate time); errors name the row."""
    try:  # the probe already held the file to data.max_image_pixels
        with _pillow_guard_above(None), Image.open(_source(path)) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as err:
        raise DataError(f"{where}: image file not found: {path}", Reason.MISSING_MEDIA) from err
    except Exception as err:  # Pillow raises many types for corrupt files
        raise DataError(f"{where}: cannot read {_label(path)}: {err}", Reason.UNREADABLE_MEDIA) from err
