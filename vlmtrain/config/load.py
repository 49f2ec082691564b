"""Load a run config: schema defaults <- YAML file <- dot-list overrides, resolved, normalised and checked.

Every problem becomes a one-line ``ConfigError`` that names where the value came from (file or override)
and the full key path. This module only orders the steps; each job has its module: ``read`` (text to data),
``check`` (schema checks), ``override`` (one ``key=value``), ``mask`` (axolotl knobs), ``training``
(trl.SFTConfig fields) and ``runtime`` (what ``fit`` needs from the machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtrain.config.boolwords import restore_bool_words
from vlmtrain.config.check import check_fields, check_mapping, check_target_modules, schema_nodes
from vlmtrain.config.errors import ConfigError, first_line, rewrite
from vlmtrain.config.mask import normalize_mask
from vlmtrain.config.origins import Origins
from vlmtrain.config.override import apply_override
from vlmtrain.config.read import read_yaml
from vlmtrain.config.runtime import check_adapter_runtime
from vlmtrain.config.schema import VlmConfig
from vlmtrain.config.training import check_training

__all__ = ["ConfigError", "load_config", "normalize_mask", "to_yaml", "validate_for_fit"]


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> VlmConfig:
    """Schema defaults <- YAML file <- ``key=value`` overrides, resolved, normalised and checked.

    Returns an OmegaConf ``DictConfig`` typed as ``VlmConfig`` (attribute access works as on the
    dataclass). ``path=None`` loads the defaults plus overrides. Raises ``ConfigError``.
    """
    origins = Origins(str(path) if path is not None else None)
    cfg = OmegaConf.structured(VlmConfig)
    # Blank the defaults that the axolotl knobs may replace, so normalize_mask can tell an
    # explicit `mode: sampled` (which conflicts with train_on_inputs) from the default.
    cfg.mask.mode = MISSING
    cfg.mask.roles = MISSING
    if path is not None:
        _merge_file(cfg, Path(path))
    for item in overrides:
        apply_override(cfg, item, origins)
    try:  # before resolving, so that `${mask.mode}` elsewhere sees the normalised mode
        normalize_mask(cfg)
    except ConfigError as e:
        raise ConfigError(f"{origins.of('mask')}: {e}") from None
    except OmegaConfBaseException as e:
        raise rewrite(e, origins.of("mask")) from None
    _resolve(cfg, origins)
    _validate(cfg, origins)
    return cast(VlmConfig, cfg)


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML, written next to checkpoints so a run can be reproduced."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def validate_for_fit(cfg: Any) -> None:
    """Checks that only training needs (a model, data, the machine an adapter needs), so ``load_config(None)``
    stays usable for ``inspect-mask`` and tests."""
    if OmegaConf.is_missing(cfg.model, "name_or_path") or not str(cfg.model.name_or_path).strip():
        raise ConfigError("model.name_or_path is required: a local model directory or a hub id")
    if len(cfg.data.train) == 0:
        raise ConfigError("data.train is empty: add at least one training source (data.train[0].path)")
    check_adapter_runtime(cfg.adapter)


def _merge_file(cfg: DictConfig, path: Path) -> None:
    raw = restore_bool_words(read_yaml(path), path)
    check_mapping(raw, VlmConfig, "", str(path))
    try:
        cfg.merge_with(raw)
    except OmegaConfBaseException as e:
        raise rewrite(e, str(path)) from None


def _resolve(cfg: DictConfig, origins: Origins) -> None:
    """Resolve interpolations in place, so validation and to_yaml see final values."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = str(e.full_key or "")
        raise ConfigError(f"{origins.of(key)}: {key}: cannot resolve interpolation: {first_line(e)}") from None


def _validate(cfg: DictConfig, origins: Origins) -> None:
    for node, cls, key_path in schema_nodes(cfg, VlmConfig):
        check_fields(node, cls, key_path, origins)
    check_target_modules(cfg.adapter.target_modules, origins)
    check_training(cfg, origins)
