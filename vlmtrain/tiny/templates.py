"""Locate a family's real chat template and special-token list (never copied into this repo)."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from vlmtrain.families import FamilyError

from .schema import FamilySpec
from .specs import FAMILIES

TEMPLATES_ENV = "VLMTRAIN_TEMPLATES_ROOT"  # fallback for families whose template is not shipped by trl


def spec_for(family: str) -> FamilySpec:
    """The tiny spec of a registry family; a name without one is the user's error (``tiny:<family>``)."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise FamilyError(
            f"unknown tiny family {family!r} (as in model.name_or_path: tiny:{family}); "
            f"choose from {', '.join(FAMILIES)}"
        ) from None


def _shared_dir(family: str, folder: str, templates_root: str | Path | None) -> Path:
    root = templates_root or os.environ.get(TEMPLATES_ENV)
    if not root:
        raise ValueError(f"family {family!r} needs templates_root (or ${TEMPLATES_ENV}) holding {folder}/")
    path = Path(root) / folder
    if not (path / "chat_template.jinja").is_file():
        raise FileNotFoundError(f"no chat_template.jinja under {path}")
    return path


def _template_file(family: str, name: str, templates_root: str | Path | None) -> Path:
    """``<folder>`` holds ``chat_template.jinja``; ``<folder>/<file>.jinja`` names one file of a collection
    (``llama.cpp/``: vendors' templates as published, without special-token lists)."""
    if not name.endswith(".jinja"):
        return _shared_dir(family, name, templates_root) / "chat_template.jinja"
    root = templates_root or os.environ.get(TEMPLATES_ENV)
    if not root:
        raise ValueError(f"family {family!r} needs templates_root (or ${TEMPLATES_ENV}) holding {name}")
    path = Path(root) / name
    if not path.is_file():
        raise FileNotFoundError(f"no chat template at {path}")
    return path


def template_source(family: str, templates_root: str | Path | None = None) -> str:
    """The model's own published chat template text, read from installed trl or from templates_root."""
    where, name = spec_for(family).template
    if where == "trl":
        return resources.files("trl").joinpath("chat_templates", name).read_text(encoding="utf-8")
    return _template_file(family, name, templates_root).read_text(encoding="utf-8")


def shared_special_tokens(family: str, templates_root: str | Path | None) -> list[str]:
    """Token strings listed in the shared folder's special_tokens.json (empty for trl-template families)."""
    where, name = spec_for(family).template
    if where != "shared" or name.endswith(".jinja"):
        return []
    path = _shared_dir(family, name, templates_root) / "special_tokens.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    found = [data.get(k) for k in ("bos", "eos", "pad")] + data.get("additional", []) + data.get("stop", [])
    return [t for t in found if t]
