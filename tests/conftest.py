"""Session-wide fixtures: tiny offline model builds, shared so each family is built once per run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep test caches (tiny builds, preprocessed datasets) out of the user's home folder.
os.environ["VLMTRAIN_HOME"] = tempfile.mkdtemp(prefix="vlmtrain-test-home-")

SHARED_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "templates"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory `tiny_dir(family, with_model=False) -> Path`; a build with weights serves both kinds of use."""
    from vlmtrain.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    built: dict[tuple[str, bool], Path] = {}

    def get(family: str, with_model: bool = False) -> Path:
        for key in ((family, True), (family, with_model)):
            if key in built:
                return built[key]
        out = root / (f"{family}-model" if with_model else family)
        path = build_tiny(family, out, with_model=with_model, templates_root=SHARED_TEMPLATES)
        built[(family, with_model)] = path
        return path

    return get
