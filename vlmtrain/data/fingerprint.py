"""The cache key: everything that can change a rendered, masked row, hashed; nothing else.

Components (each a JSON-able dict, so ``preprocess -v`` can show what changed):

- ``sources``: each source's config and the identity of its data (path + size + mtime of every file, or a
  sha256 of the content with ``data.hash_data_files``; a hub dataset's ``datasets`` fingerprint);
- ``tokenizer``: class, a hash of the full tokenizer definition (vocab, merges, added tokens, normaliser,
  post-processor) and its init settings;
- ``chat_template``: a hash of the processor's and tokenizer's templates;
- ``processor``: the processor and image-processor settings (min/max pixels, patch and merge size, ...);
- ``family``: the registry entry and the ids it resolved to;
- ``mask``: the whole ``mask`` section; ``data``: max_length, the row policies, the pixel cap, template_date,
  seed, ``data.video`` (frame sampling);
- ``versions``: vlmtrain's cache-format version, a hash of the code that renders and masks rows, and the
  transformers version (processors change between releases).

Not in the key: ``num_proc``, ``cache_dir``, ``training``, model weights. The same inputs always give the
same key (no memory addresses, no timestamps of the build, sorted keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from vlmtrain.data.sources import load_table, source_kind
from vlmtrain.mask.pipeline import MaskedRenderer

CACHE_FORMAT_VERSION = 1
KEY_LENGTH = 20
_CODE_PACKAGES = ("data", "render", "mask", "families", "media")
_TOKENIZER_SKIP = {"name_or_path", "vocab_file", "merges_file", "tokenizer_file", "is_local",
                   "local_files_only", "chat_template", "added_tokens_decoder", "processor_class",
                   "_commit_hash"}


def _plain(value: Any) -> Any:
    """JSON-able, deterministic form of config and processor values (objects become their class name)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(value), sort_keys=True).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: Path, hash_content: bool) -> dict[str, Any]:
    """path + size + mtime (cheap, catches every edit that touches the file), or a content hash."""
    stat = path.stat()
    if hash_content:
        return {"path": str(path.resolve()), "sha256": _sha256_file(path)}
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def source_identity(source: Any, hf_cache: str, hash_content: bool) -> dict[str, Any]:
    """The identity of one source's data (what makes yesterday's cache stale when the data changed)."""
    path = Path(str(source.path))
    kind = source_kind(str(source.path))
    if kind == "hub":
        table = load_table(str(source.path), source.name, source.split, hf_cache)
        return {"hub": str(source.path), "fingerprint": table._fingerprint}
    if kind in ("saved", "folder"):
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        listing = [{**file_identity(p, hash_content), "path": str(p.relative_to(path))} for p in files]
        return {"folder": str(path.resolve()), "files": listing}
    return file_identity(path, hash_content)


def tokenizer_identity(renderer: MaskedRenderer) -> dict[str, Any]:
    tokenizer = renderer.chat.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    slow = backend is None
    definition = json.dumps(tokenizer.get_vocab(), sort_keys=True) if slow else backend.to_str()
    settings = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items() if k not in _TOKENIZER_SKIP}
    return {"class": type(tokenizer).__name__,
            "definition_sha256": hashlib.sha256(definition.encode()).hexdigest(),
            "settings": _plain(settings), "special": _plain(tokenizer.all_special_tokens)}


def chat_template_identity(renderer: MaskedRenderer) -> dict[str, Any]:
    processing_class = renderer.chat.processing_class
    tokenizer = renderer.chat.tokenizer
    templates = {"processor": getattr(processing_class, "chat_template", None),
                 "tokenizer": getattr(tokenizer, "chat_template", None)}
    return {name: digest(t) if t is not None else None for name, t in templates.items()}


def processor_identity(renderer: MaskedRenderer) -> dict[str, Any]:
    processing_class = renderer.chat.processing_class
    settings = processing_class.to_dict() if renderer.chat.is_processor else {}
    settings = {k: v for k, v in settings.items() if k not in ("chat_template", "tokenizer")}
    return {"class": type(processing_class).__name__, "settings": _plain(settings)}


def family_identity(renderer: MaskedRenderer) -> dict[str, Any]:
    family = renderer.family
    if family is None:
        return {"family": None, "media_ids": _plain(renderer.media_ids)}
    return {"entry": _plain(family.family), "stop_ids": list(family.stop_ids),
            "media_ids": _plain(family.media_ids), "final_stop": family.final_stop}


@lru_cache(maxsize=1)
def code_identity() -> str:
    """A hash of the modules that render and mask rows: changed code never serves rows it would not build."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in _CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def data_settings(data_cfg: Any) -> dict[str, Any]:
    keys = ("max_length", "on_too_long", "on_bad_row", "allow_paths_outside_image_dir", "max_image_pixels",
            "template_date", "seed")
    settings = {k: _plain(data_cfg[k]) for k in keys}
    settings["video"] = _plain(data_cfg.get("video"))  # frame sampling changes every video row's tokens
    transform = data_cfg.get("image_transform")
    if transform is not None and transform.get("type", "none") != "none":  # rows hold its tiles and labels
        settings["image_transform"] = _plain(transform)
    return settings


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else _plain(node)


def key_components(cfg: Any, renderer: MaskedRenderer, sources: list[Any], hf_cache: str) -> dict[str, Any]:
    """Every input of the cached rows, as plain data."""
    import vlmtrain

    hash_content = bool(cfg.data.get("hash_data_files", False))
    return {
        "sources": [{"config": _container(s), "data": source_identity(s, hf_cache, hash_content)}
                    for s in sources],
        "tokenizer": tokenizer_identity(renderer),
        "chat_template": chat_template_identity(renderer),
        "processor": processor_identity(renderer),
        "family": family_identity(renderer),
        "mask": _container(cfg.mask),
        "data": data_settings(cfg.data),
        "versions": {"cache_format": CACHE_FORMAT_VERSION, "vlmtrain": vlmtrain.__version__,
                     "code": code_identity(), "transformers": importlib.metadata.version("transformers")},
    }


def cache_key(components: dict[str, Any]) -> str:
    """The folder name of a cache entry: a short hash of all components."""
    return digest(components)[:KEY_LENGTH]
