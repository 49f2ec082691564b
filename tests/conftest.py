"""Session-wide fixtures: tiny offline model builds, shared so each family is built once per run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep test caches (tiny builds, preprocessed datasets) out of the user's home folder.
os.environ["VLMTRAIN_HOME"] = tempfile.mkdtemp(prefix="vlmtrain-test-home-")

SHARED_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "templates"
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def in_ci() -> bool:
    """CI sets ``CI=true`` (``.ci/run``, GitHub Actions, GitLab); there nothing optional may skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_outside_ci(reason: str) -> None:
    """Skip for something a developer's clone may lack (../shared, an optional extra); in CI it is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The headless browser of the HTML test: required in CI, where ``make test`` installs it; skipped elsewhere.

    Outside CI ``make test`` installs nothing (no apt, no sudo on a laptop), so a missing browser is a skip
    that says how to get it; in CI it is a failure, never a skip.
    """
    found = next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
    if found:
        return Path(found)
    if in_ci():
        pytest.fail("chromium is not installed, and CI requires the browser test: `make test` runs "
                    "tests/setup_chromium.sh when CI is set; check that step's output")
    pytest.skip("chromium is not installed: run `bash tests/setup_chromium.sh` as root (it installs Debian's "
                "chromium), then rerun the tests")


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


def media_of(images: list | None) -> list:
    """In-memory images as the probed media items rendering takes (rendering needs only their sizes)."""
    from vlmtrain.media import MediaItem

    return [MediaItem("image", f"<in-memory {i}>", *image.size) for i, image in enumerate(images or [])]
