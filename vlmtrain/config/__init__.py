"""Run configuration: the typed schema, its loader and one-line error messages."""

from vlmtrain.config.errors import ConfigError
from vlmtrain.config.load import load_config, normalize_mask, to_yaml, validate_for_fit
from vlmtrain.config.schema import MANAGED_TRAINING_KEYS, VlmConfig

__all__ = [
    "MANAGED_TRAINING_KEYS",
    "ConfigError",
    "VlmConfig",
    "load_config",
    "normalize_mask",
    "to_yaml",
    "validate_for_fit",
]
