"""Open images the way training needs them: RGB, decoded once, with errors naming the row."""

from __future__ import annotations

from PIL import Image, ImageOps


def open_image(path: str, where: str = "") -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = image.convert("RGBA").convert("RGB") if "A" in image.getbands() or image.mode == "P" \
                    else image.convert("RGB")
            return image
    except FileNotFoundError as err:
        raise ValueError(f"{where}: image file not found: {path}") from err
    except Exception as err:  # PIL raises many types for corrupt files
        raise ValueError(f"{where}: cannot read image {path}: {err}") from err
