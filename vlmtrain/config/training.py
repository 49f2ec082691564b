"""Checks of the ``training`` section, which is handed to ``trl.SFTConfig`` under TRL's own names.

Keys must be SFTConfig fields, values must not clearly mismatch their annotation, and keys vlmtrain manages
(``schema.MANAGED_TRAINING_KEYS``) are refused with the setting to use instead. SFTConfig's fields are read once
per (trl, transformers) version and cached under ``$VLMTRAIN_HOME``: importing trl costs seconds, JSON does not.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import json
import os
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, cast

from omegaconf import DictConfig, OmegaConf

from vlmtrain.config.errors import ConfigError, suggest, type_error
from vlmtrain.config.introspect import join
from vlmtrain.config.origins import Origins
from vlmtrain.config.schema import MANAGED_TRAINING_KEYS
from vlmtrain.paths import home

# Why a managed key is refused, and what to set instead.
MANAGED_FIXES = {
    "remove_unused_columns": "vlmtrain's collator needs every cached column; remove it from the config",
    "dataset_kwargs": "vlmtrain renders and masks rows itself, TRL must not re-prepare them; remove it from the config",
    "max_length": "rows are length-checked, never truncated; set data.max_length (and data.on_too_long) instead",
    "packing": "vlmtrain builds its own batches and TRL packing would break its masks; remove it from the config",
}

# Values HF users write that SFTConfig's annotation does not list, but the run accepts (see train/):
# resume_from_checkpoint: true/"last" = the newest checkpoint in output_dir, or a checkpoint path;
# fsdp: true = full_shard, or transformers' option string / list of options.
EXTRA_KINDS: dict[str, tuple[str, ...]] = {
    "resume_from_checkpoint": ("bool",),
    "fsdp": ("bool", "list"),
}

_KINDS = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    type(None): "null",
    list: "list",
    dict: "dict",
}
_MISMATCH = object()


# Keys vlmtrain reads under ``training`` that SFTConfig no longer has (popped before SFTConfig is built):
# overwrite_output_dir: start over in an output_dir that holds checkpoints (they are deleted).
VLMTRAIN_TRAINING_KEYS: dict[str, list[str]] = {"overwrite_output_dir": ["bool"]}


def check_training(cfg: DictConfig, origins: Origins) -> None:
    """Every ``training`` key is a known, unmanaged SFTConfig field with a value of a kind it takes."""
    fields = {**sft_field_kinds(), **VLMTRAIN_TRAINING_KEYS}
    plain = cast(dict[str, Any], OmegaConf.to_container(cfg.training, resolve=True))
    for key, value in plain.items():
        key_path = join("training", key)
        if key not in fields:
            raise ConfigError(
                f"{origins.of(key_path)}: unknown key '{key_path}' (not a trl.SFTConfig field); "
                + suggest(str(key), sorted(fields), fallback="see trl.SFTConfig for the valid keys")
            )
        if key in MANAGED_TRAINING_KEYS and value != MANAGED_TRAINING_KEYS[key]:
            raise ConfigError(
                f"{origins.of(key_path)}: {key_path} is managed by vlmtrain (it sets "
                f"{_yaml_value(MANAGED_TRAINING_KEYS[key])}): {MANAGED_FIXES[key]}"
            )
        kinds = field_kinds(key, fields)
        if kinds is None:
            continue
        fixed = _coerce(value, kinds)
        if fixed is _MISMATCH or (_kind(fixed) == "list" and key in EXTRA_KINDS and not _all_str(fixed)):
            raise type_error(origins.of(key_path), key_path, value, " or ".join(_shown(kinds, key)))
        if fixed is not value:
            cfg.training[key] = fixed


def field_kinds(key: str, fields: dict[str, list[str] | None] | None = None) -> list[str] | None:
    """Value kinds ``training.<key>`` accepts (None: unchecked or unknown), vlmtrain's extras included."""
    kinds = (sft_field_kinds() if fields is None else fields).get(key)
    if kinds is None:
        return None
    return list(dict.fromkeys([*kinds, *EXTRA_KINDS.get(key, ())]))


def _shown(kinds: Sequence[str], key: str) -> list[str]:
    return ["list of str" if k == "list" and key in EXTRA_KINDS else k for k in kinds]


def _all_str(value: Sequence[Any]) -> bool:
    return all(isinstance(v, str) for v in value)


def _yaml_value(value: Any) -> str:
    return "null" if value is None else json.dumps(value).replace('"', "")


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "list"
    return _KINDS.get(type(value), type(value).__name__)


def _coerce(value: Any, kinds: Sequence[str]) -> Any:
    """``value`` if it fits, a converted value for numeric strings (e.g. from ``${oc.env:LR}``)
    and integral floats for int fields (``save_steps: 1e3``), else ``_MISMATCH``."""
    kind = _kind(value)
    if kind in kinds or (kind == "int" and "float" in kinds):
        return value
    if kind == "float" and "int" in kinds and value.is_integer():
        return int(value)
    if kind == "str":
        for target, convert in (("int", int), ("float", float)):
            if target in kinds:
                try:
                    return convert(value)
                except ValueError:
                    pass
        if "bool" in kinds and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return _MISMATCH


def _annotation_kinds(tp: Any) -> list[str] | None:
    """Value kinds a field annotation accepts; None when it holds something we do not check."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    kinds: list[str] = []
    for member in members:
        origin = typing.get_origin(member) or member
        if origin is Literal:
            kinds += [_KINDS.get(type(v), "?") for v in typing.get_args(member)]
        elif isinstance(origin, type) and issubclass(origin, enum.Enum):
            kinds.append("str")  # TRL/transformers accept the enum's string values
        elif origin in _KINDS:
            kinds.append(_KINDS[origin])
        else:
            return None
    return None if "?" in kinds else list(dict.fromkeys(kinds))


def field_cache_file() -> Path:
    """Where SFTConfig's field kinds are cached: one file per (trl, transformers) version, under vlmtrain's home."""
    versions = "-".join(importlib.metadata.version(p) for p in ("trl", "transformers"))
    return home() / f"sftconfig-fields-{versions}.json"


@functools.cache
def sft_field_kinds() -> dict[str, list[str] | None]:
    """SFTConfig field name -> accepted value kinds (None: unchecked); trl imported at most once."""
    cache = field_cache_file()
    try:
        cached = json.loads(cache.read_text())
        if isinstance(cached, dict) and "learning_rate" in cached:
            return cached
    except (OSError, ValueError):
        pass
    from trl import SFTConfig  # slow: pulls in torch, transformers and peft

    hints = typing.get_type_hints(SFTConfig)
    kinds = {f.name: _annotation_kinds(hints[f.name]) for f in dataclasses.fields(SFTConfig) if f.init}
    _write_atomic(cache, json.dumps(kinds, indent=0, sort_keys=True))
    return kinds


def _write_atomic(path: Path, text: str) -> None:
    """Best effort: a read-only cache directory only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError:
        pass
