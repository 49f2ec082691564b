"""The embedded default: ``tiny:<family>`` models and the ``tiny:shapes`` dataset, built offline on first use.

This is what ``make quickstart`` trains: no download, a few seconds to build, cached under
``$VLMTRAIN_HOME`` (default ``~/.cache/vlmtrain``).
"""

from __future__ import annotations

from typing import Any

from filelock import FileLock

from vlmtrain.paths import home  # the one cache root; still importable as vlmtrain.embedded.home

PREFIX = "tiny:"


def materialize(cfg: Any) -> None:
    """Replace ``tiny:`` references in ``cfg`` with built local paths (in place; idempotent, process-safe)."""
    from vlmtrain.tiny import build_tiny, make_shapes_dataset

    root = home() / "tiny"
    root.mkdir(parents=True, exist_ok=True)
    name = str(cfg.model.name_or_path)
    if name.startswith(PREFIX):
        family = name[len(PREFIX):]
        target = root / f"{family}-model"
        build_tiny(family, target, with_model=True)  # locks and skips completed builds itself
        cfg.model.name_or_path = str(target)
    for split in ("train", "eval"):
        for source in cfg.data[split]:
            if str(source.path) == f"{PREFIX}shapes":
                target = root / "shapes"
                with FileLock(str(target) + ".lock"):
                    source.path = str(make_shapes_dataset(target))
                source.image_dir = str(target)
