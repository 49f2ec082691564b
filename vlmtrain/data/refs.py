"""Media references in rows -> local file paths: relative to ``image_dir``, never fetched, never escaping.

Embedded bytes (``datasets`` ``Image`` columns, parquet exports) are written once to a content-addressed
media folder so that every cached row refers to its media by path, the way the collator opens it.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from vlmtrain.errors import DataError, Reason


def is_remote(raw: str) -> bool:
    """http(s)://, s3://, gs://, data: URIs ... anything that is not a local path."""
    return "://" in raw or raw.startswith("data:")


def resolve_media_path(raw: str, image_dir: Path | None, where: str, allow_outside: bool) -> str:
    """A row's image string -> an absolute local path, or a one-line DataError.

    Paths are relative to ``image_dir``; ``..`` or an absolute path that leaves it is refused unless
    ``data.allow_paths_outside_image_dir`` (a dataset should not read arbitrary files of the machine).
    """
    if is_remote(raw):
        raise DataError(f"{where}: image {raw!r} is a remote URL; vlmtrain never fetches images: download it "
                        "and refer to the local file", Reason.REMOTE_MEDIA)
    if not raw:
        raise DataError(f"{where}: an image path is empty; fix the row", Reason.MISSING_MEDIA)
    if image_dir is None and not Path(raw).is_absolute():
        raise DataError(f"{where}: image {raw!r} is a relative path but the source has no image_dir; set "
                        "data.<split>[i].image_dir to the folder the paths are relative to", Reason.MISSING_MEDIA)
    base = Path(os.path.abspath(image_dir)) if image_dir is not None else None
    path = Path(os.path.normpath(base / raw if base is not None else raw))
    if not allow_outside and base is not None and (Path(raw).is_absolute() or not path.is_relative_to(base)):
        raise DataError(f"{where}: image path {raw!r} escapes image_dir {str(base)!r}; move the file under "
                        "image_dir or set data.allow_paths_outside_image_dir: true",
                        Reason.MEDIA_OUTSIDE_DIR)
    return str(path)


def store_bytes(data: bytes, media_dir: Path, hint: str | None = None) -> str:
    """Write embedded image bytes to ``media_dir/<sha256>.<ext>`` once (atomically) and return the path."""
    digest = hashlib.sha256(data).hexdigest()
    ext = Path(hint).suffix.lower() if hint else ""
    if not ext:
        try:
            with Image.open(io.BytesIO(data)) as image:
                ext = "." + (image.format or "bin").lower()
        except Exception:  # unreadable bytes: kept as-is, and probe_image reports the row
            ext = ".bin"
    target = media_dir / digest[:2] / f"{digest}{ext}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        temp.write_bytes(data)
        os.replace(temp, target)
    return str(target)


def media_entries(value: Any) -> list[Any]:
    """An images cell as a list: None -> [], one image (path or ``{"bytes", "path"}``) -> [it]."""
    if value is None:
        return []
    if isinstance(value, (str, dict, bytes)):
        return [value]
    return list(value)
