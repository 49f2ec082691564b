"""Text to plain data: the YAML file and ``key.path=value`` overrides, interpolations left unresolved."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtrain.config.errors import ConfigError, rewrite


def read_yaml(path: Path) -> dict[str, Any]:
    """The file as plain data, interpolations unresolved; YAML errors name ``file:line:column``."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start and start.line != mark.line:
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except OmegaConfBaseException as e:
        raise rewrite(e, str(path)) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, ...)")
    return cast(dict[str, Any], OmegaConf.to_container(loaded, resolve=False))


@dataclass(frozen=True)
class Override:
    """One ``a.b[0].c=value`` argument: its key parts, YAML-parsed value, and the value as typed."""

    item: str
    parts: list[str]
    value: Any
    text: str


def parse_override(item: str) -> Override:
    """``a.b[0].c=value`` -> parts ``["a", "b", "0", "c"]`` and the value parsed as YAML."""
    key, sep, text = item.partition("=")
    key = re.sub(r"\[(\d+)\]", r".\1", key.strip())
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{item}': expected key.path=value")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)
    except yaml.YAMLError:
        raise ConfigError(f"bad override '{item}': the value is not valid YAML") from None
    return Override(item, key.split("."), cast(dict[str, Any], parsed)["v"], text.strip())
