"""``mask`` normalisation: axolotl's ``train_on_inputs``/``roles_to_train`` folded into ``mode``/``roles``."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from vlmtrain.config.errors import ConfigError
from vlmtrain.config.schema import MaskConfig


def normalize_mask(cfg: Any) -> None:
    """Fold axolotl's ``train_on_inputs``/``roles_to_train`` into ``mask.mode``/``mask.roles``.

    The rest of vlmtrain then reads only ``mode`` and ``roles``. A ``mode``/``roles`` left MISSING
    counts as "not set by the user" (the loader blanks those defaults) and gets its default here;
    a set one that contradicts a knob is a ``ConfigError``.
    """
    mask = cfg.mask
    mode_set = not OmegaConf.is_missing(mask, "mode")
    roles_set = not OmegaConf.is_missing(mask, "roles")
    implied = _mode_implied_by_knobs(mask)
    if implied is not None:
        if mode_set and mask.mode != implied:
            knob = "train_on_inputs: true" if implied == "all" else "roles_to_train"
            raise ConfigError(
                f"mask.{knob} means mask.mode '{implied}', but mask.mode is '{mask.mode}'; "
                "set only one of them"
            )
        mask.mode = implied
    elif mask.train_on_inputs is False and mode_set and mask.mode == "all":
        raise ConfigError("mask.train_on_inputs: false contradicts mask.mode 'all'; set only one of them")
    if mask.roles_to_train is not None:
        wanted = list(mask.roles_to_train)
        if roles_set and list(mask.roles) != wanted:
            raise ConfigError(
                f"mask.roles_to_train {wanted} contradicts mask.roles {list(mask.roles)}; "
                "set only one of them"
            )
        mask.roles = wanted
    defaults = MaskConfig()
    if OmegaConf.is_missing(mask, "mode"):
        mask.mode = defaults.mode
    if OmegaConf.is_missing(mask, "roles"):
        mask.roles = defaults.roles


def _mode_implied_by_knobs(mask: Any) -> str | None:
    """The mask mode the axolotl knobs ask for, if any."""
    wants_all = mask.train_on_inputs is True
    wants_roles = mask.roles_to_train is not None
    if wants_all and wants_roles:
        raise ConfigError("mask.train_on_inputs: true and mask.roles_to_train contradict each other")
    if wants_roles and len(mask.roles_to_train) == 0:
        raise ConfigError("mask.roles_to_train is empty: no token would be trained")
    return "all" if wants_all else "roles" if wants_roles else None
