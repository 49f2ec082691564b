"""Run configuration: the typed schema, its loader and one-line error messages."""

from vlmtrain.config.load import ConfigError, load_config, normalize_mask, to_yaml, validate_for_fit
from vlmtrain.config.schema import VlmConfig

__all__ = ["ConfigError", "VlmConfig", "load_config", "normalize_mask", "to_yaml", "validate_for_fit"]
